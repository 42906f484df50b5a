"""`dpms bench --check BASELINE.json --tol T`: has any cell moved since a recorded run?

Cells are matched by row label and column (`cell_id`: "dpm3@10", "dpm23@adaptive"). A cell moved when
|ours − baseline| > max(tol, rel_tol·|baseline|) for its metric value ("fid") — or for its error against
the exact ODE solution ("ode_error") when the baseline measured it — or when the two measure different
metrics, or were run with a different number of samples. A NaN or infinite value matches only the same
non-finite value, and a quantity the baseline has but this run lacks has moved. A baseline cell absent
from this run also fails the check (the guard must not pass by running less) — unless `subset=True`
(`--check-subset`): then only the cells this run has are compared, which is how CI checks a reduced grid
against a full committed table.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DpmsError, MissingFileError
from .report import cell_id


COMPARED = ("fid", "ode_error")


@dataclass
class Moved:
    cell: str
    quantity: str  # "fid" (the metric value) or "ode_error"
    ours: float | None  # None: the run lacks the quantity
    baseline: float
    note: str = ""

    @property
    def delta(self) -> float | None:
        return None if self.ours is None else self.ours - self.baseline


@dataclass
class CheckResult:
    compared: int = 0
    moved: list[Moved] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the baseline, not in this run
    extra: list[str] = field(default_factory=list)  # in this run, not in the baseline (not a failure)

    @property
    def ok(self) -> bool:
        return not self.moved and not self.missing


def load_baseline(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"baseline {path} not found; pass the results.json of an earlier `dpms bench` run")
    try:
        cells = json.loads(path.read_text())["cells"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        raise DpmsError(f"baseline {path} is not a dpms bench results.json (no 'cells' list)") from None
    # every field `compare` reads, checked now: a bad baseline must fail before the bench runs, not after
    if not isinstance(cells, list):
        raise DpmsError(f"baseline {path} is not a dpms bench results.json ('cells' is not a list)")
    for n, cell in enumerate(cells):
        problem = _baseline_cell_problem(cell)
        if problem:
            raise DpmsError(f"baseline {path}: cell {n + 1} {problem}; pass the results.json of an earlier `dpms bench` run")
    return cells


def _baseline_cell_problem(cell) -> str | None:
    if not isinstance(cell, dict):
        return "is not an object"
    missing = [k for k in ("label", "column", "metric", "fid") if k not in cell]
    if missing:
        return f"has no {missing[0]!r}"
    for quantity in COMPARED:
        value = cell.get(quantity)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return f"has a {quantity} that is not a number ({value!r})"
    if cell.get("num") is not None and not isinstance(cell["num"], int):
        return f"has a num that is not an integer ({cell['num']!r})"
    return None


def compare(records: list[dict], baseline: list[dict], tol: float, rel_tol: float = 0.0, subset: bool = False) -> CheckResult:
    if tol < 0 or rel_tol < 0:
        raise DpmsError(f"--tol and --rel-tol must be ≥ 0, got {tol} and {rel_tol}")
    ours = {cell_id(r): r for r in records}
    if subset:
        baseline = [b for b in baseline if cell_id(b) in ours]
        if not baseline:
            raise DpmsError("--check-subset: no cell of this run is in the baseline; run some of the baseline's solvers and NFEs")
    result = CheckResult()
    for base in baseline:
        name = cell_id(base)
        if name not in ours:
            result.missing.append(name)
            continue
        mine = ours[name]
        result.compared += 1
        if mine["metric"] != base["metric"]:
            result.moved.append(Moved(name, "fid", mine["fid"], base["fid"], f"metric {mine['metric']} vs {base['metric']}"))
            continue
        if mine.get("num") is not None and base.get("num") is not None and mine["num"] != base["num"]:
            result.moved.append(Moved(name, "fid", mine["fid"], base["fid"], f"{mine['num']} samples vs {base['num']}: rerun with --num {base['num']}"))
            continue
        if mine.get("diverged") and not base.get("diverged"):
            result.moved.append(Moved(name, "fid", None, base["fid"], "diverged (NaN/inf samples)"))
            continue
        for quantity in COMPARED:
            if base.get(quantity) is None:
                continue  # the baseline did not measure it: nothing to guard
            note = _moved_note(mine.get(quantity), base[quantity], tol, rel_tol)
            if note is not None:
                result.moved.append(Moved(name, quantity, mine.get(quantity), base[quantity], note))
    known = {cell_id(b) for b in baseline}
    result.extra = [name for name in ours if name not in known]
    return result


def _moved_note(ours: float | None, baseline: float, tol: float, rel_tol: float) -> str | None:
    """Why `ours` moved from `baseline` ("" for a plain move beyond tolerance), or None if it did not.

    A NaN or infinity matches only the same non-finite value: NaN compares false with everything, so a
    plain |Δ| > tol test would let a NaN cell pass. A value the run lacks has moved as well."""
    if ours is None:
        return "missing from this run"
    if not (math.isfinite(ours) and math.isfinite(baseline)):
        same = (math.isnan(ours) and math.isnan(baseline)) or ours == baseline
        return None if same else "non-finite value"
    return "" if abs(ours - baseline) > max(tol, rel_tol * abs(baseline)) else None


def _number(value: float | None) -> str:
    return "none" if value is None else f"{value:.6g}"


def print_check(result: CheckResult, baseline: Path, tol: float, rel_tol: float, console) -> None:
    allowed = f"tol {tol:g}" + (f", rel-tol {rel_tol:g}" if rel_tol else "")
    for m in result.moved:
        what = "" if m.quantity == "fid" else f" {m.quantity}"
        change = f" (Δ {m.delta:+.3g})" if m.delta is not None and math.isfinite(m.delta) else ""
        console.print(f"[red]moved[/] {m.cell}{what}: {_number(m.ours)} vs baseline {_number(m.baseline)}{change} {m.note}".rstrip(), highlight=False)
    for name in result.missing:
        console.print(f"[red]missing[/] {name}: in the baseline, not in this run", highlight=False)
    verdict = "[green]check passed[/]" if result.ok else "[red]check failed[/]"
    console.print(f"{verdict}: {result.compared} cells compared with {baseline} ({allowed}); "
                  f"{len(result.moved)} moved, {len(result.missing)} missing, {len(result.extra)} not in the baseline", highlight=False)
