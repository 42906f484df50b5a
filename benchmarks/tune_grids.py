"""Tuned against fixed time grids, per solver and NFE, measured on x_T the grids were not tuned on.

For each tuned solver (default: ddim, dpm2m, dpmpp2m, dpmpp3m, ipndm, unipc3 — the issue's "unipc": UniPC-3,
one network call per step — and deis3) and NFE, runs `dpms bench` cells on
  * the solver's default grid and the other fixed grids (logSNR, time_uniform, time_quadratic),
  * a GITS grid (`grid: {tune: gits}`: DP over the solver's one-step costs against a teacher, coeff 1.15),
  * a GITS grid refined on the full solver (`refine`: coordinate descent on its error to the teacher),
  * a DMN grid (`grid: {tune: dmn}`: the model-free λ objective),
and, for the goal's comparison, every other deterministic solver of the default bench grid on its own default
grid. Every grid is tuned on `--tune-num` x_T of seed + 1 and measured on `--num` x_T of seed (the bench's own
held-out rule). Metrics: the Fréchet distance (exact moments for gmm, digit-classifier features for digits)
and `ode_error`, the mean L2 error to the converged ODE solution from the same x_T: always on the exact
model; on a network once the bench measures it there (`measures_ode_error`, the one hook).

    python benchmarks/tune_grids.py --model gmm     # results/tune/gmm.md (+ .json; bench cells and grids in results/tune/gmm/)
    python benchmarks/tune_grids.py --model digits --nfe 5 --num 300 --tune-num 64 --candidates 40 --teacher-substeps 2

Finished cells and tuned grids are kept (OUT/<model>/cells, OUT/<model>/grids): a rerun resumes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
from rich.console import Console

import dpms
from dpms.atomic import atomic_write_text
from dpms.bench import parse_config, run_benchmark
from dpms.sampler import default_grid, get_solver
from dpms.sampler.tuning import tunable_solvers
from dpms.target import load_target

SOLVERS = ["ddim", "dpm2m", "dpmpp2m", "dpmpp3m", "ipndm", "unipc3", "deis3"]  # the six (unipc: UniPC-3) and DEIS-3
FIXED_SKIPS = ["logSNR", "time_uniform", "time_quadratic"]
METRIC = {"gmm": ("exact", None), "digits": ("digits", "checkpoints/digits/digits_stats.npz")}


def measures_ode_error(model: str) -> bool:
    """Whether the bench measures `ode_error` (mean L2 to the model's converged ODE solution) for `model`: the
    exact model always; a network once dpms.bench.ode_reference exists (being added beside this script)."""
    return model == "gmm" or importlib.util.find_spec("dpms.bench.ode_reference") is not None


def pick_solvers(requested: list[str] | None) -> list[str]:
    names = requested or SOLVERS
    untunable = [s for s in names if s not in tunable_solvers()]
    if untunable:
        raise SystemExit(f"cannot tune {', '.join(untunable)}; tunable: {', '.join(tunable_solvers())}")
    return names


def baseline_solvers(tuned: list[str]) -> list[str]:
    """The fixed-NFE ODE solvers of the default bench grid not tuned here: the goal compares against them too."""
    return [s for s in default_grid() if s not in tuned and not (get_solver(s).stochastic or get_solver(s).adaptive)]


def build_config(args, solvers: list[str]) -> dict:
    features, reference = METRIC[args.model]
    tune = {"num": args.tune_num, "candidates": args.candidates, "teacher_substeps": args.teacher_substeps, "coeff": args.coeff}
    entries = []
    schedule = load_target(args.model).schedule
    for name in solvers:
        default = get_solver(name).skip_for(schedule)
        entries.append({"name": name, "label": f"{name} default ({default})"})
        for skip in FIXED_SKIPS:
            if skip != default and not args.no_other_fixed:
                entries.append({"name": name, "label": f"{name} {skip}", "skip": skip})
        entries.append({"name": name, "label": f"{name} gits", "grid": {"tune": "gits", **tune}})
        if args.refine:
            entries.append({"name": name, "label": f"{name} gits+refine", "nfe": args.refine_nfe or args.nfe,
                            "grid": {"tune": "gits", **tune, "refine": args.refine}})
        entries.append({"name": name, "label": f"{name} dmn", "grid": {"tune": "dmn"}})
    for name in baseline_solvers(solvers) if not args.no_baseline else []:
        entries.append({"name": name, "label": f"{name} default ({get_solver(name).skip_for(schedule)})"})
    config = {"name": f"tune_{args.model}", "model": {"preset": args.model}, "features": features,
              "num": args.num, "batch": args.batch or args.num, "seed": args.seed, "nfe": args.nfe, "solvers": entries}
    if measures_ode_error(args.model):
        config["ode_error"] = {"num": args.ode_num} if args.ode_num and args.model != "gmm" else True
    if reference:
        config["reference_stats"] = reference
    return config


def kind_of(label: str) -> str:
    return label.split(" ", 1)[1].split(" (")[0]


FIXED_KINDS = ["default", *FIXED_SKIPS]
TUNED_KINDS = ["gits", "gits+refine", "dmn"]


def summarise(records: list[dict], solvers: list[str], baseline: list[str], nfes: list[int], metric_name: str) -> tuple[list[str], dict]:
    """Markdown tables (ode_error and FD per solver and NFE, tuned vs fixed) and the headline comparison."""
    cells = {(r["solver"], kind_of(r["label"]), r["nfe"]): r for r in records}
    lines, headline = [], {}
    for quantity, title in (("ode_error", "mean L2 error to the converged ODE solution (held-out x_T)"), ("fid", metric_name)):
        def value(solver, kind, n):
            return cells.get((solver, kind, n), {}).get(quantity)

        if not any(r.get(quantity) is not None for r in records):
            lines += [f"### {title}", "", "not measured in this run (the bench measures no ode_error for this model)", ""]
            continue
        lines += [f"### {title}", "", "| solver | grid | " + " | ".join(f"NFE {n}" for n in nfes) + " |", "|---|---|" + "---|" * len(nfes)]
        rows = [(s, k) for s in solvers for k in [*FIXED_KINDS, *TUNED_KINDS]] + [(s, "default") for s in baseline]
        for solver, kind in rows:
            row = [value(solver, kind, n) for n in nfes]
            if any((solver, kind, n) in cells for n in nfes):
                shown = ["diverged" if cells.get((solver, kind, n), {}).get("diverged") else "–" if v is None else f"{v:.3g}"
                         for n, v in zip(nfes, row)]
                lines.append(f"| {solver} | {kind} | " + " | ".join(shown) + " |")
        lines.append("")
        # per NFE: the best tuned cell (any solver) against the best default-grid cell (every solver) and any fixed grid
        lines += [f"Best tuned grid vs best fixed grid ({quantity}): every solver on its default grid, and any fixed grid", "",
                  "| NFE | best default grid (solver) | best fixed grid (solver, grid) | best tuned (solver, grid) | tuned / default | tuned / fixed |",
                  "|---|---|---|---|---|---|"]
        for n in nfes:
            def best(kinds):
                found = [(r[quantity], s, k) for (s, k, m), r in cells.items() if m == n and k in kinds and r.get(quantity) is not None]
                return min(found) if found else None

            d, f, t = best(["default"]), best(FIXED_KINDS), best(TUNED_KINDS)
            if not (d and f and t):
                continue
            headline.setdefault(quantity, {})[n] = {"best_default": d, "best_fixed": f, "best_tuned": t,
                                                    "ratio_default": t[0] / d[0], "ratio": t[0] / f[0]}
            lines.append(f"| {n} | {d[0]:.3g} ({d[1]}) | {f[0]:.3g} ({f[1]}, {f[2]}) | {t[0]:.3g} ({t[1]}, {t[2]}) | "
                         f"{t[0] / d[0]:.2f} | {t[0] / f[0]:.2f} |")
        lines.append("")
        # per solver and tuning method: does it beat that solver's default grid, and its best fixed grid?
        lines += [f"Tuned / the same solver's default grid ({quantity}; < 1: tuning helps)", "",
                  "| solver | grid | " + " | ".join(f"NFE {n}" for n in nfes) + " |", "|---|---|" + "---|" * len(nfes)]
        for solver in solvers:
            for kind in TUNED_KINDS:
                ratios = [(value(solver, kind, n), value(solver, "default", n)) for n in nfes]
                if all(a is None or b is None for a, b in ratios):
                    continue
                lines.append(f"| {solver} | {kind} | " + " | ".join("–" if a is None or b is None else f"{a / b:.2f}" for a, b in ratios) + " |")
        lines.append("")
        helped, hurt = [], []
        for solver in solvers:
            for n in nfes:
                fixed = [v for k in FIXED_KINDS if (v := value(solver, k, n)) is not None]
                tuned = [v for k in TUNED_KINDS if (v := value(solver, k, n)) is not None]
                if fixed and tuned:
                    (helped if min(tuned) < min(fixed) else hurt).append(f"{solver}@{n} ({min(tuned) / min(fixed):.2f})")
        lines += [f"Best tuned / best fixed grid of the same solver ({quantity}): lower in {len(helped)} of {len(helped) + len(hurt)}: "
                  + (", ".join(helped) or "none"), "", "Not lower: " + (", ".join(hurt) or "none"), ""]
    return lines, headline


def verdict_lines(headline: dict) -> list[str]:
    out = []
    for quantity, per_nfe in headline.items():
        if 5 not in per_nfe:
            continue
        h = per_nfe[5]
        ok = lambda r: "met" if r <= 0.5 else "NOT met"  # noqa: E731
        out.append(f"- NFE 5, {quantity}: best tuned {h['best_tuned'][0]:.3g} ({h['best_tuned'][1]}, {h['best_tuned'][2]}); "
                   f"best solver on its default grid {h['best_default'][0]:.3g} ({h['best_default'][1]}): ratio "
                   f"{h['ratio_default']:.2f}, goal (≤ 0.5) {ok(h['ratio_default'])}; best of every fixed grid "
                   f"{h['best_fixed'][0]:.3g} ({h['best_fixed'][1]}, {h['best_fixed'][2]}): ratio {h['ratio']:.2f}, {ok(h['ratio'])}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gmm", choices=sorted(METRIC))
    parser.add_argument("--solvers", default=None, help=f"comma-separated tuned solvers (default: {','.join(SOLVERS)})")
    parser.add_argument("--nfe", default="4,5,6,8,10")
    parser.add_argument("--num", type=int, default=1000, help="measured samples per cell (seed --seed)")
    parser.add_argument("--batch", type=int, default=None, help="samples per batch (default: --num)")
    parser.add_argument("--tune-num", type=int, default=256, help="tuning samples (seed --seed + 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--candidates", type=int, default=60)
    parser.add_argument("--teacher-substeps", type=int, default=4)
    parser.add_argument("--coeff", type=float, default=1.15)
    parser.add_argument("--refine", type=int, default=2, help="sweeps of the gits+refine rows (0: no such rows)")
    parser.add_argument("--refine-nfe", default=None, help="NFE of the gits+refine rows (default: all)")
    parser.add_argument("--no-other-fixed", action="store_true", help="only each solver's default fixed grid")
    parser.add_argument("--no-baseline", action="store_true", help="no rows of the other default-grid solvers")
    parser.add_argument("--ode-num", type=int, default=None, help="networks: samples per cell whose ode_error is measured (default: all)")
    parser.add_argument("--out", type=Path, default=Path("results/tune"))
    args = parser.parse_args()
    command = "python benchmarks/tune_grids.py " + shlex.join(sys.argv[1:])
    args.nfe = [int(v) for v in args.nfe.split(",")]
    args.refine_nfe = [int(v) for v in args.refine_nfe.split(",")] if args.refine_nfe else None
    solvers = pick_solvers(args.solvers.split(",") if args.solvers else None)
    baseline = [] if args.no_baseline else baseline_solvers(solvers)
    config = build_config(args, solvers)
    console = Console(stderr=True)
    if "ode_error" not in config:
        console.print(f"note: the bench measures no ode_error for {args.model} yet: FD only")
    result = run_benchmark(parse_config(config, where=f"tune_grids {args.model}"), args.out / args.model, console=console)
    lines, headline = summarise(result.records, solvers, baseline, args.nfe, str(result.metric))
    refine = f"gits+refine: then {args.refine} sweep(s) of coordinate descent on the full solver's error to the teacher. " if args.refine else ""
    header = [
        f"# Tuned vs fixed time grids — {args.model}",
        "",
        f"Command: `{command}` (written by it; do not edit)",
        "",
        f"Tuned solvers: {', '.join(solvers)}. Grids tuned on {args.tune_num} x_T of seed {args.seed + 1}, measured on {args.num} "
        f"x_T of seed {args.seed}. GITS: {args.candidates} candidate steps on the solver's default grid, teacher dpm3 with "
        f"{args.teacher_substeps} sub-steps per interval, coeff {args.coeff}; each edge costed by the solver's own first "
        f"(history-free) step from the teacher's state, which is DDIM's for every tunable solver. {refine}"
        "DMN: scxue/DM-NonUniform's objective (data-prediction multistep bound), no network call. "
        + (f"Baseline (default grids only): {', '.join(baseline)}." if baseline else ""),
        "",
        "## Headline (goal: best tuned at NFE 5 ≤ half the best fixed-grid error at NFE 5)",
        "",
        *(verdict_lines(headline) or ["- not measured"]),
        "",
    ]
    text = "\n".join(header + lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / f"{args.model}.md", text)
    document = {"command": command, "model": args.model, "solvers": solvers, "baseline": baseline, "nfe": args.nfe, "headline": headline,
                "dpms": dpms.__version__, "torch": torch.__version__, "python": platform.python_version(),
                "created": time.strftime("%Y-%m-%d"), "cells": result.records}
    atomic_write_text(args.out / f"{args.model}.json", json.dumps(document, indent=1, default=str) + "\n")
    print(text)


if __name__ == "__main__":
    main()
