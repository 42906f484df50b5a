"""Reference outputs of the upstream samplers on the exact model, for tests/test_ipndm_heun.py.

Runs the OFFICIAL sampler functions — zju-pi diff-sampler (`diff-solvers-main/solvers.py`: ipndm,
ipndm_v, heun, euler, dpm_pp), DEIS (`th_deis.sampler.get_sampler_ipndm`, needs jax) and EDM
(`generate.py: edm_sampler`) — on dpms's exact Gaussian-mixture model through explicit grids, and
writes their outputs as small data. The upstream code is imported from checkouts given on the
command line; nothing of it is copied here or committed.

    python benchmarks/upstream_reference_ipndm_heun.py --diff-sampler PATH --deis PATH --edm PATH \
        [--out tests/data/upstream_reference.json] [--force]

How the upstream interfaces see the model. They work in EDM's variables: x̃ = x/α and σ̃ = σ/α =
e^{−λ}, with a denoiser D(x̃, σ̃) = x̃ − σ̃ ε. The wrapper maps σ̃ back to time (exactly, through the
grid it was given, else t = t_λ(−log σ̃)), evaluates the exact ε*(α x̃, t) of
`dpms.models.GaussianMixture` and returns D. An upstream run ends at σ̃ of t_end, so its output is
multiplied by α(t_end) to compare with dpms's x at t_end — except with denoise_to_zero (and EDM's
sampler, which ends with it), whose output is the data prediction in both. DEIS's torch/jax sampler
works in VP variables already (ε model, x at t_end); its time-uniform grid is replaced by the
explicit one (`get_rev_ts`), and jax runs in float64.

Upstream facts recorded while writing this (see the `note` of the cases):
* diff-sampler's `ipndm_sampler` and `ipndm_v_sampler` raise IndexError for max_order = 1 (the
  history update assigns to an empty list); their order-1 path is `euler_sampler`, used instead.
* `dpm_pp_sampler` with predict_x0 = True always applies dynamic thresholding, so only its noise
  prediction (dpm2m/dpm3m) is compared; its lower_order_final is dpms's "always".
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from dpms.models import GaussianMixture
from dpms.sampler import make_grid

OUT = Path("tests/data/upstream_reference.json")
SAMPLES, SEED = 4, 0
# explicit grids: (name, skip, steps); each case runs on every grid
GRIDS = [("karras6", "karras", 6), ("logSNR10", "logSNR", 10), ("uniform7", "time_uniform", 7)]


def problem():
    """The model, x_T and grids every reference case uses (the tests rebuild them the same way)."""
    gmm = GaussianMixture.default()
    x_T = gmm.prior(SAMPLES, torch.Generator().manual_seed(SEED))
    sch = gmm.schedule
    grids = {name: make_grid(sch, skip, steps, sch.T, sch.t_end, torch.float64) for name, skip, steps in GRIDS}
    return gmm, x_T, grids


class EDMDenoiser(torch.nn.Module):
    """The exact model behind EDM's and diff-sampler's net interface: D(x̃, σ̃) = x̃ − σ̃ ε*(α x̃, t(σ̃))."""

    def __init__(self, gmm: GaussianMixture, timesteps: torch.Tensor | None = None):
        super().__init__()
        self.gmm, self.sch = gmm, gmm.schedule
        self.exact = {}
        if timesteps is not None:  # σ̃ of a given grid map back to its times exactly
            self.exact = {float(s): float(t) for s, t in zip(self.sigmas(timesteps), timesteps)}
        self.sigma_min, self.sigma_max = 0.0, float("inf")  # EDM's edm_sampler clamps its σ range to these

    def sigmas(self, timesteps: torch.Tensor) -> torch.Tensor:
        return torch.exp(-self.sch.lambda_(timesteps))

    def time(self, sigma: float) -> torch.Tensor:
        t = self.exact.get(sigma)
        if t is None:
            t = float(self.sch.inverse_lambda(torch.tensor(-math.log(sigma), dtype=torch.float64)))
        return torch.tensor(t, dtype=torch.float64)

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def forward(self, x, sigma, class_labels=None, **_):
        sigma = float(torch.as_tensor(sigma).reshape(-1)[0])
        t = self.time(sigma)
        shape = x.shape
        x_vp = x.reshape(shape[0], -1).to(torch.float64) * self.sch.alpha(t)
        eps = self.gmm(x_vp, t.expand(shape[0]))
        return (x.reshape(shape[0], -1) - sigma * eps).reshape(shape)


def run_diff_sampler(path: Path, gmm, x_T, grids) -> list[dict]:
    sys.path.insert(0, str(path / "diff-solvers-main"))
    import solvers as ds  # noqa: PLC0415  (the upstream module, from the checkout)

    cases = []
    for grid_name, ts in grids.items():
        net = EDMDenoiser(gmm, ts)
        t_steps = net.sigmas(ts)
        # their x̃_T = latents · σ̃_max must be x_T/α_T, so latents = x_T/(α_T σ̃_max) = x_T/σ_T; 4-D as their updates reshape to
        latents = (x_T / gmm.schedule.sigma(ts[0]))[:, :, None, None]
        alpha_end = float(gmm.schedule.alpha(ts[-1]))

        def run(fn, denoise_to_zero=False, **kw):
            x = fn(net, latents, t_steps=t_steps, num_steps=len(t_steps), denoise_to_zero=denoise_to_zero, **kw)[:, :, 0, 0]
            return x if denoise_to_zero else alpha_end * x

        for solver, fn in (("ipndm", ds.ipndm_sampler), ("ipndm-v", ds.ipndm_v_sampler)):
            flag_sets = [dict(max_order=k) for k in (1, 2, 3, 4)]
            flag_sets += [dict(max_order=4, afs=True), dict(max_order=4, denoise_to_zero=True), dict(max_order=4, afs=True, denoise_to_zero=True),
                          dict(max_order=3, afs=True, denoise_to_zero=True)]
            for flags in flag_sets:
                kw = dict(flags)
                note = None
                try:
                    x = run(fn, **kw)
                except IndexError:
                    order_one = {k: v for k, v in kw.items() if k != "max_order"}
                    x = run(ds.euler_sampler, **order_one)
                    note = f"diff-sampler {fn.__name__}(max_order=1) raises IndexError; its order-1 path euler_sampler is the reference"
                cases.append(_case(solver, flags, grid_name, ts, x, f"diff-sampler {fn.__name__}", note))
        for flags in ({}, dict(afs=True), dict(denoise_to_zero=True), dict(afs=True, denoise_to_zero=True)):
            cases.append(_case("heun", flags, grid_name, ts, run(ds.heun_sampler, **flags), "diff-sampler heun_sampler"))
        for solver, order in (("dpm2m", 2), ("dpm3m", 3)):
            for flags in ({}, dict(afs=True)):
                x = run(ds.dpm_pp_sampler, max_order=order, predict_x0=False, lower_order_final=True, **flags)
                cases.append(_case(solver, {**flags, "lower_order_final": "always"}, grid_name, ts, x, "diff-sampler dpm_pp_sampler(predict_x0=False)"))
    sys.path.remove(str(path / "diff-solvers-main"))
    return cases


def run_deis(path: Path, gmm, x_T, grids) -> list[dict]:
    import jax  # noqa: PLC0415

    jax.config.update("jax_enable_x64", True)  # jax computes in float32 unless told
    import jax.numpy as jnp  # noqa: PLC0415

    from jax._src.numpy import lax_numpy, util  # noqa: PLC0415

    if not hasattr(lax_numpy, "_promote_dtypes_inexact"):  # DEIS imports this private name, gone from newer jax (unused on this path)
        lax_numpy._promote_dtypes_inexact = util.promote_dtypes_inexact
    sys.path.insert(0, str(path))
    import th_deis  # noqa: PLC0415
    import th_deis.sampler as deis_sampler  # noqa: PLC0415

    sch = gmm.schedule
    t2alpha, alpha2t = th_deis.get_linear_alpha_fns(beta_0=sch.beta_0, beta_1=sch.beta_1)  # DEIS's α is ᾱ = α²
    cases = []
    for grid_name, ts in grids.items():
        sde = th_deis.VPSDE(t2alpha, alpha2t, sch.t_end, sch.T)
        deis_sampler.get_rev_ts = lambda *_, ts=ts, **__: jnp.asarray(ts.numpy())  # the explicit grid instead of DEIS's
        sampler = deis_sampler.get_sampler(sde, lambda x, t: gmm(x, t.reshape(-1).expand(x.shape[0]).to(torch.float64)), None, None, len(ts) - 1, method="ipndm")
        cases.append(_case("ipndm", {"max_order": 4}, grid_name, ts, sampler(x_T.clone()), "DEIS th_deis get_sampler_ipndm"))
    return cases


def run_edm(path: Path, gmm) -> list[dict]:
    sys.path.insert(0, str(path))
    import generate  # noqa: PLC0415  (EDM's generate.py, for edm_sampler)

    sch = gmm.schedule
    x_T = gmm.prior(SAMPLES, torch.Generator().manual_seed(SEED))
    net = EDMDenoiser(gmm)
    sigma_max, sigma_min = (math.exp(-float(sch.lambda_(torch.tensor(t, dtype=torch.float64)))) for t in (sch.T, sch.t_end))
    cases = []
    for num_steps in (18, 6, 11):
        # x̃_T = latents · σ̃_max = x_T/α_T: latents = x_T/σ_T
        x = generate.edm_sampler(net, x_T / sch.sigma(torch.tensor(sch.T, dtype=torch.float64)), num_steps=num_steps, sigma_min=sigma_min, sigma_max=sigma_max, rho=7)
        ts = make_grid(sch, "karras", num_steps - 1, sch.T, sch.t_end, torch.float64)
        note = f"edm_sampler(num_steps={num_steps}, rho=7, S_churn=0): {num_steps - 1} Heun steps, the last one Euler to sigma=0"
        cases.append(_case("heun", {"denoise_to_zero": True, "skip": "karras", "nfe": 2 * num_steps - 1}, f"karras{num_steps - 1}", ts, x, "EDM edm_sampler", note))
    return cases


def _case(solver, options, grid, ts, x, upstream, note=None) -> dict:
    case = {"solver": solver, "options": options, "grid": grid, "timesteps": ts.tolist(), "upstream": upstream, "x": x.to(torch.float64).tolist()}
    if note:
        case["note"] = note
    return case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--diff-sampler", type=Path, required=True, help="checkout of github.com/zju-pi/diff-sampler")
    parser.add_argument("--deis", type=Path, required=True, help="checkout of github.com/qsh-zh/deis (needs jax)")
    parser.add_argument("--edm", type=Path, required=True, help="checkout of github.com/NVlabs/edm")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out")
    args = parser.parse_args()
    if args.out.exists() and not args.force:
        sys.exit(f"error: {args.out} exists; pass --force to overwrite it")
    torch.set_default_dtype(torch.float64)
    gmm, x_T, grids = problem()
    with torch.no_grad():
        cases = run_diff_sampler(args.diff_sampler, gmm, x_T, grids) + run_deis(args.deis, gmm, x_T, grids) + run_edm(args.edm, gmm)
    data = {
        "model": "dpms.models.GaussianMixture.default() (linear VP), x_T = gmm.prior(4, seed 0), float64",
        "command": "python benchmarks/upstream_reference_ipndm_heun.py --diff-sampler PATH --deis PATH --edm PATH",
        "x_T": x_T.tolist(),
        "cases": cases,
    }
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(args.out)
    print(f"wrote {len(cases)} cases to {args.out}")


if __name__ == "__main__":
    main()
