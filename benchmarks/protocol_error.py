"""Error vs steps on the exact model with a discrete schedule: dpms's own grid against the codebases' loops.

The model is GaussianMixture.default() on DDPM's discrete linear schedule (N = 1000). Each of DDIM, S-PNDM,
F-PNDM and FON runs on dpms's discrete_uniform grid (t = 1 → index 0, ᾱ and network time of the same index)
and with protocol="pndm-code" (PNDM's loop: ᾱ read one table index after the network's time); DDIM also
with protocol="ddim-code" on DDIM's uniform and quadratic lists. The error of a run is the L2 distance,
per sample, to the exact ODE solution from the same x_T at t = 1 to the state where the run ends: t = 1/N
(ᾱ_0) for dpms's grid and PNDM's loop; for DDIM's loop, which ends with the x₀ prediction at ᾱ = 1, that
same x₀ prediction made from the exact state at t = 1/N (so its last, fixed one-index step is not counted
as error). The exact solution is DOP853 (rtol = atol = 1e-10) from t = 1; the codebases' loops start
their x_T lower, at their top index (PNDM's at index top + 1), which is part of their error.

    python benchmarks/protocol_error.py [--num 256] [--out results/protocol_error]

Writes OUT/error_vs_steps.json and OUT/error_vs_steps.md (mean and largest per-sample error) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

import torch

import dpms
from dpms import NoiseSchedule
from dpms.atomic import atomic_write_text
from dpms.models import GaussianMixture
from dpms.sampler import ode_reference
from dpms.sampler.protocols import RepeatedIndexWarning
from dpms.sampler.steps import to_data

STEPS = [10, 20, 50, 100, 250, 500]
EXTRA_CALLS = {"ddim": 0, "spndm": 1, "pndm": 9, "fon": 9}  # NFE = steps + this
ROWS = [(solver, protocol, "discrete_uniform") for solver in EXTRA_CALLS for protocol in (None, "pndm-code")]
ROWS += [("ddim", "ddim-code", "discrete_uniform"), ("ddim", "ddim-code", "discrete_quadratic")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results/protocol_error"))
    args = parser.parse_args()

    gmm = GaussianMixture.default(schedule=NoiseSchedule.discrete_linear(1000))
    schedule = gmm.schedule
    x_T = gmm.prior(args.num, torch.Generator().manual_seed(args.seed))
    exact = ode_reference(gmm, schedule, x_T)  # t = 1 → 1/N
    t_end = torch.tensor(schedule.t_end, dtype=torch.float64)
    exact_x0 = to_data(exact, gmm(exact, t_end.expand(args.num)), schedule, t_end)  # DDIM's last step, from the exact state
    rows = []
    for solver, protocol, skip in ROWS:
        cells = {}
        for steps in STEPS:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", RepeatedIndexWarning)
                try:
                    x, info = dpms.sample(gmm, schedule, x_T, solver=solver, nfe=steps + EXTRA_CALLS[solver], skip=skip, protocol=protocol, return_info=True)
                except dpms.DpmsError as e:  # a list the codebase cannot run
                    cells[str(steps)] = {"error": str(e)}
                    continue
            ref = exact_x0 if protocol == "ddim-code" else exact
            per_sample = (x - ref).pow(2).sum(1).sqrt()
            cells[str(steps)] = {"nfe": info.nfe, "mean": per_sample.mean().item(), "max": per_sample.max().item(),
                                 "start_t": float(info.timesteps[0]), "note": "; ".join(str(w.message) for w in caught)}
        rows.append({"solver": solver, "loop": protocol or "dpms grid", "skip": skip, "cells": cells})

    result = {
        "model": "gmm (GaussianMixture.default(), 8-D, 4 components) on NoiseSchedule.discrete_linear(1000)",
        "metric": "L2 error per sample (mean and max over samples) to the DOP853 solution (rtol=atol=1e-10) from the same x_T at t = 1 "
                  "to t = 1/N; for ddim-code to the x0 prediction of that exact state (DDIM's loop ends at alpha-bar = 1)",
        "num": args.num,
        "seed": args.seed,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": f"python benchmarks/protocol_error.py --num {args.num} --seed {args.seed} --out {args.out}",
        "created": time.strftime("%Y-%m-%d"),
        "rows": rows,
    }
    lines = [
        f"Error per sample to the exact ODE solution (mean / largest of {args.num} samples), exact Gaussian mixture on DDPM's "
        f"discrete linear schedule, by steps (NFE: DDIM steps, S-PNDM steps + 1, F-PNDM and FON steps + 9). "
        f"Command: `{result['command']}`",
        "",
        "| solver | loop | skip | " + " | ".join(str(n) for n in STEPS) + " |",
        "|" + "---|" * (len(STEPS) + 3),
    ]
    for row in rows:
        cells = [f"{c['mean']:.2e} / {c['max']:.2e}" if "mean" in c else "–" for c in (row["cells"][str(n)] for n in STEPS)]
        lines.append(f"| {row['solver']} | {row['loop']} | {row['skip']} | " + " | ".join(cells) + " |")
    notes = sorted({c["note"] for row in rows for c in row["cells"].values() if c.get("note")})
    lines += [""] + [f"Note: {n}" for n in notes]
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "error_vs_steps.json", json.dumps(result, indent=1) + "\n")
    atomic_write_text(args.out / "error_vs_steps.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
