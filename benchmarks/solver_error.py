"""Error vs NFE of every solver on the exact model (Gaussian mixture, continuous linear VP).

The error of a solver is the mean L2 distance, over samples, between its x_0 and the
high-accuracy DOP853 solution of the same probability-flow ODE from the same x_T
(dpms.sampler.ode_reference). Stochastic solvers are shown against the same reference, where
their error is dominated by the noise they inject (they do not solve the ODE).

    python benchmarks/solver_error.py [--num 256] [--out results/gmm_error]

Writes OUT/error_vs_nfe.json and OUT/error_vs_nfe.md and prints the table.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import dpms
from dpms.models import GaussianMixture
from dpms.sampler import ode_reference

NFES = [5, 6, 8, 10, 12, 15, 20, 30, 50, 100]
# rows beyond each solver on its default grid: (row, solver, options) — the analytical first step, and
# the few-step comparison of iPNDM with the multistep DPM-Solvers on each other's grids
EXTRA_ROWS = [
    ("ipndm afs", "ipndm", {"afs": True}),
    ("ipndm-v afs", "ipndm-v", {"afs": True}),
    ("ipndm logSNR", "ipndm", {"skip": "logSNR"}),
    ("dpm3m karras", "dpm3m", {"skip": "karras"}),
    ("dpmpp3m karras", "dpmpp3m", {"skip": "karras"}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results/gmm_error"))
    args = parser.parse_args()

    gmm = GaussianMixture.default()
    x_T = gmm.prior(args.num, torch.Generator().manual_seed(args.seed))
    ref = ode_reference(gmm, gmm.schedule, x_T)
    rows = {}
    for row, name, options in [(name, name, {}) for name in dpms.solvers()] + EXTRA_ROWS:
        spec = dpms.solvers()[name]
        cells = {}
        for nfe in ([None] if spec.adaptive else NFES):
            try:
                x, info = dpms.sample(gmm, gmm.schedule, x_T, solver=name, nfe=nfe, return_info=True, seed=args.seed, **options)
            except dpms.DpmsError:
                continue  # an NFE this solver cannot do
            err = (x - ref).pow(2).sum(1).sqrt().mean().item()
            cells[str(info.nfe if spec.adaptive else nfe)] = err
        rows[row] = {"solver": name, "options": options, "adaptive": spec.adaptive, "stochastic": spec.stochastic, "errors": cells}

    result = {
        "model": "gmm (GaussianMixture.default(), 8-D, 4 components, linear VP, t_end=1e-3)",
        "metric": "mean L2 error to the DOP853 solution (rtol=atol=1e-10) from the same x_T",
        "num": args.num,
        "seed": args.seed,
        "default_grids": "each solver's default time grid (dpms solvers); rows named 'solver option' use those options",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": f"python benchmarks/solver_error.py --num {args.num} --seed {args.seed} --out {args.out}",
        "created": time.strftime("%Y-%m-%d"),
        "solvers": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "error_vs_nfe.json").write_text(json.dumps(result, indent=1))
    header = "| solver | " + " | ".join(str(n) for n in NFES) + " | adaptive (NFE: error) |"
    lines = [
        f"Mean L2 error to the exact ODE solution, {args.num} samples, exact Gaussian-mixture model. Command: `{result['command']}`",
        "",
        header,
        "|" + "---|" * (len(NFES) + 2),
    ]
    for name, row in rows.items():
        e = row["errors"]
        if row["adaptive"]:
            (nfe, err), = e.items()
            lines.append(f"| {name} | " + " | ".join("" for _ in NFES) + f" | {nfe}: {err:.2e} |")
        else:
            lines.append(f"| {name} | " + " | ".join(f"{e[str(n)]:.2e}" if str(n) in e else "–" for n in NFES) + " | |")
    (args.out / "error_vs_nfe.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
