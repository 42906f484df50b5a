"""Benchmark outputs: per-cell JSON files (the resumable state) and the tables and figure built from them.

    DIR/cells/<key>.json     one finished cell, written atomically (temp file + os.replace)
    DIR/results.json         {"cells": [...], "skipped": [...], "config": {...}, "metric": ...}
    DIR/results.csv          one row per finished cell
    DIR/results.md           rows solvers, columns NFE (or steps); each cell "ours (paper, Δ)"
    DIR/fid_vs_nfe.png       the metric against the NFE actually used, one line per solver, log axes
    DIR/ode_error_vs_nfe.png the error against the model's converged ODE solution, the same way (ode_error)

The metric is named as measured — "FID (Inception)", "FD (digits features)", "FD (exact features)" — and
only Inception numbers are ever called FID.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

from ..atomic import atomic_path, atomic_write_text
from ..plot import Series, line_plot


CSV_FIELDS = ("label", "solver", "column", "nfe", "nfe_used", "metric", "fid", "paper", "delta", "confidence",
              "num", "seconds", "images_per_s", "ode_error", "ode_error_std", "t_end", "skip", "key")
ODE_ERROR_TITLE = "ode_error: mean L2 distance to the model's converged ODE solution from the same x_T"


def cell_path(out_dir: Path, key: str) -> Path:
    return Path(out_dir) / "cells" / f"{key}.json"


def checksum(record: dict) -> str:
    """sha256 of a cell record's JSON (without its own checksum): a cell file edited by hand, or damaged,
    no longer matches and is recomputed instead of trusted."""
    body = {k: v for k, v in json.loads(json.dumps(record, default=str)).items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write_cell(out_dir: Path, record: dict) -> None:
    record = {k: v for k, v in record.items() if k != "checksum"}
    atomic_write_text(cell_path(out_dir, record["key"]), json.dumps({**record, "checksum": checksum(record)}, indent=2) + "\n")


def read_finished(out_dir: Path, cells, warn=None) -> dict[str, dict]:
    """The records of `cells` already finished in out_dir (same key, same settings, intact checksum).

    A cell file that cannot be read, is not a cell record, or does not match its own checksum (damaged or
    edited) is recomputed; `warn(line)` is told so, once per file."""
    done = {}
    for cell in cells:
        path = cell_path(out_dir, cell.key)
        if not path.is_file():
            continue
        try:
            record = json.loads(path.read_text())
            problem = _record_problem(record)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            problem = f"unreadable ({type(e).__name__})"
        if problem is not None:
            if warn is not None:
                warn(f"cell file {path} is {problem}: recomputing that cell")
            continue
        if record.get("key") == cell.key and record.get("settings") == json.loads(json.dumps(cell.settings, default=str)):
            done[cell.key] = record
    return done


def _record_problem(record) -> str | None:
    """What is wrong with a loaded cell record, or None."""
    if not isinstance(record, dict):
        return "not a cell record"
    if "checksum" not in record:
        return "without a checksum (written by an older dpms, or edited)"
    missing = [k for k in ("key", "label", "fid", "settings") if k not in record]
    if missing:
        return f"not a cell record (no {missing[0]!r})"
    if record["checksum"] != checksum(record):
        return "edited or damaged (its content does not match its checksum)"
    return None


def _what(settings: dict) -> str:
    """A cell's settings less the code version: a rerun after a code change recomputes the same grid."""
    what = {k: v for k, v in settings.items() if k not in ("dpms", "numerics")}
    if isinstance(what.get("metric"), dict):  # cells written before ode_error left the key carried it there
        what["metric"] = {k: v for k, v in what["metric"].items() if k != "ode_error"}
    return json.dumps(what, sort_keys=True, default=str)


def replaced_report(out_dir: Path, cells) -> str | None:
    """Why this run's report would silently replace the report in out_dir, or None if it would not: a cell of
    the existing results.json whose settings (all but the code version) no cell of this run has would drop
    out of the tables. A run of the same grid (resumed, extended, relabelled, or after a code change) is fine."""
    path = Path(out_dir) / "results.json"
    if not path.is_file():
        return None
    try:
        old = json.loads(path.read_text()).get("cells") or []
        old_what = [(cell_id(r), _what(r["settings"])) for r in old if isinstance(r, dict) and isinstance(r.get("settings"), dict)]
    except (OSError, json.JSONDecodeError, AttributeError, KeyError):
        return None  # not a dpms report: nothing of ours to keep
    new_what = {_what(json.loads(json.dumps(c.settings, default=str))) for c in cells}
    dropped = [name for name, what in old_what if what not in new_what]
    if not dropped:
        return None
    return (f"{path} holds a report of another grid or settings ({len(dropped)} of its {len(old_what)} cells, e.g. {dropped[0]}, "
            f"are not in this run); pass --out DIR to write this run elsewhere, or --force to replace that report")


def presentation(cell, config, value: float) -> dict:
    """The fields of a cell's record that say how the config presents it (row label, column, published
    number and its confidence) rather than what was computed; the cell key leaves them out."""
    return {
        "label": cell.label,
        "column": cell.column,
        "axis": config.axis,
        "paper": cell.paper,
        "paper_nfe": cell.paper_column if cell.adaptive else None,
        "delta": None if cell.paper is None or value is None else value - cell.paper,
        "confidence": cell.entry.confidence or config.confidence,
    }


def refresh(record: dict, cell, config) -> dict:
    """A loaded record with the current config's presentation: a rerun after a config changed a label or
    a published number shows the new ones without recomputing the cell."""
    return {**record, **presentation(cell, config, record["fid"])}


def cell_id(record: dict) -> str:
    """How a cell is named across runs and baselines: its row label and its column (or 'adaptive')."""
    return f"{record['label']}@{'adaptive' if record.get('adaptive') else record['column']}"


def fmt(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" if abs(value) >= 0.1 else f"{value:.2e}"


def cell_text(record: dict) -> str:
    """'ours (paper, Δ)', or 'ours' without a published number; adaptive cells and columns of step
    counts also give the NFE used ('3.95 @59'); a cell whose samples went NaN/inf reads "diverged"."""
    if record.get("diverged"):
        return "diverged" + (f" ({fmt(record['paper'])})" if record.get("paper") is not None else "")
    ours = fmt(record["fid"])
    if record.get("adaptive") or record.get("axis") == "steps":
        ours += f" @{record['nfe_used']:g}"
    if record.get("paper") is None:
        return ours
    paper = fmt(record["paper"]) + (f" @{record['paper_nfe']}" if record.get("adaptive") and record.get("paper_nfe") else "")
    return f"{ours} ({paper}, {record['delta']:+.2f})"


def table_rows(config, cells, records: dict[str, dict], skipped, text=cell_text) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a table: a row per solver entry (config order), a column per NFE or step
    count, and an 'adaptive' column when an adaptive solver ran. `text(record)` fills a finished cell;
    impossible cells read 'n/a', unfinished ones '…'."""
    columns = config.columns
    labels = [s.label for s in config.solvers]
    has_adaptive = any(c.adaptive for c in cells)
    header = [str(c) for c in columns] + (["adaptive"] if has_adaptive else [])
    rows = []
    for label in labels:
        row = []
        for column in columns:
            cell = next((c for c in cells if c.label == label and c.column == column), None)
            if cell is None:
                row.append("n/a" if any(s.label == label and s.column == column for s in skipped) else "")
            else:
                row.append(text(records[cell.key]) if cell.key in records else "…")
        if has_adaptive:
            cell = next((c for c in cells if c.label == label and c.adaptive), None)
            row.append("" if cell is None else text(records[cell.key]) if cell.key in records else "…")
        rows.append([label, *row])
    return header, rows


def _markdown_table(first: str, header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join([first, *header]) + " |", "|" + "---|" * (len(header) + 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(config, metric: str, cells, records: dict[str, dict], skipped, world_size: int) -> str:
    axis = "NFE" if config.axis == "nfe" else "steps"
    header, rows = table_rows(config, cells, records, skipped)
    done = [records[c.key] for c in cells if c.key in records]
    model = config.model.preset + (f" ({config.model.checkpoint})" if config.model.checkpoint else "")
    if config.model.guidance_scale:
        model += f", classifier guidance scale {config.model.guidance_scale:g}"
    parts = [
        f"# {config.name}: {metric} vs {axis}",
        "",
        *([config.description, ""] if config.description else []),
        f"- model: {model}",
        f"- metric: {metric}" + (f" against {config.reference_stats}" if config.reference_stats else "")
        + f"; {config.num} samples per cell, seed {config.seed}",
        f"- published numbers: {config.source or 'none'} (confidence: {config.confidence})",
        f"- cells: {len(done)} of {len(cells)} finished, {len(skipped)} impossible (n/a)",
        "",
        "Each cell: ours (paper, Δ = ours − paper); 'value @N': N = NFE used (adaptive solvers"
        + (", and every cell of a table by steps" if config.axis == "steps" else "") + f"). Rows: solvers; columns: {axis}.",
        "",
        _markdown_table(f"solver \\ {axis}", header, rows),
    ]
    measured = [r for r in done if r.get("ode_error") is not None]
    if measured:
        _, err_rows = table_rows(config, cells, records, skipped, text=lambda r: fmt(r.get("ode_error")))
        parts += ["", f"## {ODE_ERROR_TITLE}", "", *ode_reference_lines(measured), "",
                  _markdown_table(f"solver \\ {axis}", header, err_rows)]
    if skipped:
        parts += ["", "## Impossible cells (n/a)", ""]
        parts += [f"- {s.label} at {axis} {s.column}: {s.reason}" for s in skipped]
    if done:
        total = sum(r["seconds"] for r in done)
        parts += ["", f"Sampling + features: {total:.1f} s over {len(done)} cells "
                      f"({world_size} process{'es' if world_size > 1 else ''} in the last run)."]
    notes = [f"- {s.label}: {s.note}" for s in config.solvers if s.note]
    if config.notes or notes:
        parts += ["", "## Notes", "", *([config.notes] if config.notes else []), *notes]
    return "\n".join(parts) + "\n"


def ode_reference_lines(records: list[dict]) -> list[str]:
    """How the ODE references of these records were computed and checked, one line per t_end."""
    lines = {}
    for r in records:
        ref = r.get("ode_reference")
        if ref is None:  # a record from before references were described
            continue
        lines.setdefault(r["t_end"], (
            f"- t_end {r['t_end']:g}: first {ref['num']} samples of each cell; reference {ref['method']}, which agrees "
            f"with {ref['check']} to mean L2 {fmt(ref['agreement'])} on {ref['check_num']} samples (tol {fmt(ref['tol'])}); "
            "errors near that agreement are not resolved"))
    return [lines[t] for t in sorted(lines)]


def csv_text(cells, records: dict[str, dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for cell in cells:
        if cell.key in records:
            writer.writerow({k: ("" if v is None else v) for k, v in records[cell.key].items()})
    return buffer.getvalue()


def plot(path: Path, config, metric: str, cells, records: dict[str, dict], field: str = "fid") -> None:
    """`field` (the metric value, or ode_error) against the NFE used, one line per solver entry."""
    series = []
    for label in dict.fromkeys(c.label for c in cells):
        done = [records[c.key] for c in cells if c.label == label and c.key in records and records[c.key].get(field) is not None]
        if done:
            adaptive = any(r.get("adaptive") for r in done)
            name = f"{label} (adaptive)" if adaptive else label
            series.append(Series(name, [r["nfe_used"] for r in done], [r[field] for r in done], lines=not adaptive))
    ticks = sorted({c.nfe for c in cells if c.nfe is not None})
    with atomic_path(path) as tmp:
        line_plot(series, tmp, title=f"{config.name}: {metric} vs NFE", x_label="NFE (network evaluations per sample)",
                  y_label=metric, log_x=True, log_y=True, x_ticks=ticks)


def write_reports(out_dir: Path, config, metric: str, cells, records: dict[str, dict], skipped, world_size: int = 1) -> dict:
    """Regenerate results.json/csv/md and the figure from the finished records; returns the JSON document."""
    out_dir = Path(out_dir)
    done = [records[c.key] for c in cells if c.key in records]
    document = {
        "metric": metric,
        "cells": done,
        "pending": [c.key for c in cells if c.key not in records],
        "skipped": [s.to_dict() for s in skipped],
        "config": config.to_dict(),
    }
    atomic_write_text(out_dir / "results.json", json.dumps(document, indent=2) + "\n")
    atomic_write_text(out_dir / "results.csv", csv_text(cells, records))
    atomic_write_text(out_dir / "results.md", markdown(config, metric, cells, records, skipped, world_size))
    if done:
        plot(out_dir / "fid_vs_nfe.png", config, metric, cells, records)
    if any(r.get("ode_error") is not None for r in done):
        plot(out_dir / "ode_error_vs_nfe.png", config, "ode_error (mean L2 to the converged ODE solution)", cells, records,
             field="ode_error")
    return document


def rich_table(config, metric: str, cells, records: dict[str, dict], skipped, quantity: str = "fid"):
    """The table of `quantity`: the metric ("ours (paper, Δ)"), or "ode_error" (the mean L2 distance to the
    model's converged ODE solution). Solver names never wrap (at 80 columns 'dpmpp2m' would read 'dpmp…'); cells fold."""
    from rich.table import Table

    axis = "NFE" if config.axis == "nfe" else "steps"
    if quantity == "fid":
        header, rows = table_rows(config, cells, records, skipped)
        title = f"{config.name}: {metric} — ours (paper, Δ)"
    else:
        header, rows = table_rows(config, cells, records, skipped, text=lambda r: fmt(r.get(quantity)))
        title = f"{config.name}: {ODE_ERROR_TITLE}"
    table = Table(title=title, title_justify="left")
    table.add_column(f"solver \\ {axis}", style="bold", no_wrap=True, min_width=max([len(r[0]) for r in rows] + [4]))
    for h in header:
        table.add_column(h, justify="right", overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table
