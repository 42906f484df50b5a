"""How stable is the digits table? The same grid with other seeds, and the spread of each cell.

`dpms bench` (configs/digits.yaml) measures each cell on the samples of seed 0 its `num` sets. This reruns the
columns given by --nfe with other seeds (new x_T, new solver noise), each into OUT/seed<S>/ (resumable
like any bench run), and summarises, per solver and NFE, each metric over all seeds (seed 0 read from
results/digits/results.json): the FD (digits features) and, where the cells measured it, the ode_error
(mean L2 distance to the model's own converged ODE solution from the same x_T): mean, min, max; and, per
NFE, how often each pair of solvers keeps the order it has at seed 0 (pairs whose means differ by less
than the seeds' spread are the ones a single-seed table cannot rank).

    python benchmarks/digits_seeds.py [--seeds 1,2] [--nfe 10,20] [--out results/digits_seeds]

Writes OUT/summary.json and OUT/summary.md and prints the table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path

from dpms.atomic import atomic_write_text as write_text
from dpms.cli import main as dpms_main

REPO = Path(__file__).resolve().parents[1]


METRICS = {"fid": "FD (digits features)", "ode_error": "ode_error (mean L2 to the model's converged ODE solution)"}


def cells_by_label(results: Path, columns: set[str], key: str = "fid") -> dict[tuple[str, str], float]:
    """{(row label, column): value of `key`} of the finished, non-adaptive cells of a bench results.json that
    measured it."""
    cells = json.loads(results.read_text())["cells"]
    return {(c["label"], str(c["column"])): c[key] for c in cells
            if not c["adaptive"] and str(c["column"]) in columns and c.get(key) is not None}


def summarise(runs: dict[int, dict[tuple[str, str], float]], columns: list[str]) -> dict:
    seed0 = min(runs)
    labels = list(dict.fromkeys(label for label, _ in runs[seed0]))
    rows = {}
    for label, column in itertools.product(labels, columns):
        values = [run[(label, column)] for run in runs.values() if (label, column) in run]
        if len(values) == len(runs):
            rows[f"{label}@{column}"] = {"label": label, "column": column, "values": values, "mean": statistics.fmean(values),
                                         "min": min(values), "max": max(values)}
    agreement = {}
    for column in columns:
        present = [lb for lb in labels if f"{lb}@{column}" in rows]
        pairs = list(itertools.combinations(present, 2))
        kept = 0
        for a, b in pairs:
            order0 = runs[seed0][(a, column)] < runs[seed0][(b, column)]
            kept += all((run[(a, column)] < run[(b, column)]) == order0 for run in runs.values())
        agreement[column] = {"pairs": len(pairs), "same_order_every_seed": kept}
    return {"seeds": sorted(runs), "rows": rows, "pair_order": agreement}


def markdown(summary: dict, columns: list[str], what: str = METRICS["fid"], heading: str = "#") -> str:
    seeds = ", ".join(map(str, summary["seeds"]))
    lines = [f"{heading} Digits: {what} over seeds {seeds}", "",
             "Each cell: mean [min – max] over the seeds. Made by `python benchmarks/digits_seeds.py`.", "",
             "| solver | " + " | ".join(f"NFE {c}" for c in columns) + " |", "|---|" + "---|" * len(columns)]
    labels = list(dict.fromkeys(r["label"] for r in summary["rows"].values()))
    for label in labels:
        cells = []
        for c in columns:
            r = summary["rows"].get(f"{label}@{c}")
            cells.append(f"{r['mean']:.3g} [{r['min']:.3g} – {r['max']:.3g}]" if r else "n/a")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Pairs of solvers that keep seed 0's order at every seed:", ""]
    for c, a in summary["pair_order"].items():
        lines.append(f"- NFE {c}: {a['same_order_every_seed']} of {a['pairs']}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2", help="seeds besides 0 (the committed table)")
    parser.add_argument("--nfe", default="10,20", help="columns of the digits table to rerun")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "digits_seeds")
    args = parser.parse_args()
    columns = [c.strip() for c in args.nfe.split(",")]
    results = {0: REPO / "results" / "digits" / "results.json"}
    for seed in (int(s) for s in args.seeds.split(",")):
        out = args.out / f"seed{seed}"
        code = dpms_main(["bench", "--seed", str(seed), "--nfe", args.nfe, "--out", str(out)])
        if code:
            raise SystemExit(code)
        results[seed] = out / "results.json"
    summary, parts = {}, []
    for key, what in METRICS.items():
        runs = {seed: cells_by_label(path, set(columns), key) for seed, path in results.items()}
        if not all(runs.values()):
            continue  # a run that did not measure this metric (ode_error off)
        summary[key] = summarise(runs, columns)
        parts.append(markdown(summary[key], columns, what, "##"))
    write_text(args.out / "summary.json", json.dumps(summary, indent=1) + "\n")
    seed0 = json.loads(results[0].read_text())
    ode_error = seed0.get("config", {}).get("ode_error")
    sizes = f"{max(c['num'] for c in seed0['cells'])} samples per cell and seed"
    if isinstance(ode_error, dict):
        sizes += f"; ode_error over each cell's first {ode_error['num']}"
    text = f"# Digits over seeds ({sizes})\n\n" + "\n".join(parts)
    write_text(args.out / "summary.md", text)
    print(text)


if __name__ == "__main__":
    main()
