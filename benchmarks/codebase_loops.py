"""Reference outputs of the DDIM and PNDM codebases' own sampling loops on the exact Gaussian-mixture model.

    python benchmarks/codebase_loops.py DDIM_CHECKOUT PNDM_CHECKOUT [--out tests/data/codebase_loops.json]

DDIM_CHECKOUT is a checkout of github.com/ermongroup/ddim, PNDM_CHECKOUT one of github.com/luping-liu/PNDM;
their code is imported from there and run here, never copied into this repository. The model is
`GaussianMixture.default()` on DDPM's discrete linear schedule (β = linspace(1e-4, 0.02, 1000)); the network
input n of a codebase is handed to it as the continuous time t = (n + 1)/N, the map dpms uses.

What runs:
* DDIM: `functions.denoising.generalized_steps(x, seq, model, betas, eta=0)` with the index list that
  `runners/diffusion.py` `sample_image` builds for skip_type uniform / quad.
* PNDM: `runner.method.gen_order_1` / `gen_order_2` / `gen_order_4` / `gen_fon` (DDIM, S-PNDM, F-PNDM, FON)
  through `runner.schedule.Schedule.denoising`, driven by the loop of `runner/runner.py` `sample_image`
  (seq_next = [-1] + seq[:-1], visited in reverse, `first_step` on the first), restated here because
  runner.py imports the training stack; the list is range(0, N, N // steps) as its runner builds it, or DDIM's
  quadratic list.

Two adaptations, neither touching the algorithms: both codebases compute in float32 (PNDM casts its table,
DDIM's runner its betas); here the betas are float64 and PNDM's `alphas_cump` is rebuilt in float64 the
way it builds it (cumprod of 1 − β), so that the comparison is at float64 round-off. DDIM's loop moves
its state to 'cuda'; that move is redirected to the CPU while it runs. Samples are (B, D, 1, 1) images
for the codebases' `.view(-1, 1, 1, 1)` coefficients. Writes the outputs and the network-call counts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch

from dpms.models import GaussianMixture
from dpms.schedule import NoiseSchedule

N = 1000
STEPS = {"uniform": [8, 10, 20], "quad": [10, 20, 50]}  # uniform 8: stride 125, odd → half-integer midpoints
# PNDM only: all-warm-up runs, whose last Runge–Kutta step calls the network at input −1 and −½ (the midpoint
# of 0 → −1, which `transfer` truncates to 0); range(0, 1000, 333) has 4 entries, so 3 steps use the quadratic list
SHORT_STEPS = {"uniform": [2], "quad": [3]}
PNDM_METHODS = {"DDIM": "ddim", "S-PNDM": "spndm", "F-PNDM": "pndm", "FON": "fon"}
SKIP = {"uniform": "discrete_uniform", "quad": "discrete_quadratic"}


def index_list(kind: str, steps: int) -> list[int]:
    """The lists of ddim runners/diffusion.py and PNDM runner/runner.py (uniform) for `steps` steps."""
    if kind == "uniform":
        return list(range(0, N, N // steps))
    return [int(s) for s in list(np.linspace(0, np.sqrt(N * 0.8), steps) ** 2)]


class CountingModel:
    """The exact ε on (B, D, 1, 1) images, network input n → continuous time (n + 1)/N; counts its calls.

    Inputs below −½ are read at −½: the mixture's discrete schedule has no ᾱ at t = 0 (network input −1,
    which PNDM's loops pass on their last step when it is a warm-up step); tests/test_protocols.py gives
    dpms the same clamp."""

    def __init__(self, gmm: GaussianMixture):
        self.gmm, self.calls = gmm, 0

    def __call__(self, x, n):
        self.calls += 1
        t = (n.to(torch.float64).clamp(min=-0.5) + 1) / N
        return self.gmm(x.reshape(x.shape[0], -1), t).reshape(x.shape)


@contextlib.contextmanager
def cuda_on_cpu():
    """DDIM's generalized_steps calls `.to('cuda')`; send it to the CPU instead while it runs."""
    original = torch.Tensor.to

    def to(self, *args, **kwargs):
        args = tuple("cpu" if a == "cuda" else a for a in args)
        return original(self, *args, **kwargs)

    torch.Tensor.to = to
    try:
        yield
    finally:
        torch.Tensor.to = original


def run_ddim(checkout: Path, gmm, x_T, betas) -> list[dict]:
    sys.path.insert(0, str(checkout))
    from functions.denoising import generalized_steps

    cases = []
    for kind, counts in STEPS.items():
        for steps in counts:
            model = CountingModel(gmm)
            with cuda_on_cpu():
                xs, _ = generalized_steps(x_T[:, :, None, None], index_list(kind, steps), model, betas, eta=0.0)
            cases.append(dict(protocol="ddim-code", method="generalized_steps", solver="ddim", skip=SKIP[kind], steps=steps,
                              calls=model.calls, x=xs[-1].reshape(x_T.shape).tolist()))
    sys.path.remove(str(checkout))
    return cases


def run_pndm(checkout: Path, gmm, x_T, betas) -> list[dict]:
    sys.path.insert(0, str(checkout))
    from runner.schedule import Schedule

    config = {"type": "linear", "beta_start": 1e-4, "beta_end": 0.02, "diffusion_step": N}
    cases = []
    for method, solver in PNDM_METHODS.items():
        schedule = Schedule(types.SimpleNamespace(device="cpu", method=method), config)
        schedule.betas = betas
        schedule.alphas_cump = (1.0 - betas).cumprod(dim=0)
        for kind in STEPS:
            for steps in STEPS[kind] + (SHORT_STEPS[kind] if method in ("S-PNDM", "F-PNDM", "FON") else []):
                model = CountingModel(gmm)
                seq = index_list(kind, steps)
                seq_next = [-1] + seq[:-1]
                img = x_T[:, :, None, None]
                n = img.shape[0]
                with torch.no_grad():
                    for k, (i, j) in enumerate(zip(reversed(seq), reversed(seq_next))):
                        t, t_next = torch.ones(n) * i, torch.ones(n) * j
                        img = schedule.denoising(img, t_next, t, model, first_step=k == 0)
                cases.append(dict(protocol="pndm-code", method=method, solver=solver, skip=SKIP[kind], steps=steps,
                                  calls=model.calls, x=img.reshape(x_T.shape).tolist()))
    sys.path.remove(str(checkout))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ddim", type=Path, help="checkout of github.com/ermongroup/ddim")
    parser.add_argument("pndm", type=Path, help="checkout of github.com/luping-liu/PNDM")
    parser.add_argument("--num", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("tests/data/codebase_loops.json"))
    args = parser.parse_args()

    gmm = GaussianMixture.default(schedule=NoiseSchedule.discrete_linear(N))
    x_T = gmm.prior(args.num, torch.Generator().manual_seed(args.seed))
    betas = torch.linspace(1e-4, 0.02, N, dtype=torch.float64)
    cases = run_ddim(args.ddim, gmm, x_T, betas) + run_pndm(args.pndm, gmm, x_T, betas)
    result = {
        "model": f"GaussianMixture.default() on NoiseSchedule.discrete_linear({N}); network input n at t = (n + 1)/N",
        "command": f"python benchmarks/codebase_loops.py DDIM_CHECKOUT PNDM_CHECKOUT --num {args.num} --seed {args.seed} --out {args.out}",
        "x_T": x_T.tolist(),
        "cases": cases,
    }
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(args.out)
    print(f"{len(cases)} cases → {args.out}")


if __name__ == "__main__":
    main()
