"""Reference outputs of the official UniPC and DEIS code on the exact model, for tests/test_upstream_reference.py.

    python benchmarks/upstream_reference.py --unipc PATH/TO/wl-zhao/UniPC --deis PATH/TO/qsh-zh/deis \\
        [--out tests/data/upstream_unipc_deis.json]

PATH/TO/wl-zhao/UniPC is a checkout holding `uni_pc.py`; PATH/TO/qsh-zh/deis one holding `th_deis/` (which
needs jax: `pip install --target DIR "jax[cpu]"` and PYTHONPATH=DIR). Nothing of either is copied here: this
script imports them from those paths, runs their samplers on dpms's exact model (GaussianMixture.default(),
continuous linear VP with β₀ = 0.1, β₁ = 20, the same as their 'linear' schedules) over explicit time grids,
in float64 (torch's default dtype and jax_enable_x64, so that the comparison is of algorithms, not of float32
round-off), and writes the outputs with the grids and x_T they came from.

How each official sampler is driven through an explicit grid:
* UniPC: `UniPC(model_fn, NoiseScheduleVP('linear'), algorithm_type, variant=...).sample(x, steps, order,
  method='multistep', lower_order_final=...)` with the instance's `get_time_steps` returning the grid (as a
  (steps+1, 1) tensor: the official update concatenates per-step 1-element tensors, which the 'discrete'
  schedule returns and the 'linear' one would return as 0-d). UniP alone (corrector=False) calls the official
  `multistep_uni_pc_update` with use_corrector=False, as its loop does on the last step. Samples are passed
  as (B, D, 1, 1): the official einsum expects image batches.
* DEIS: `th_deis.sampler.get_sampler_t_ab` / `get_sampler_rho_ab` with `th_deis.sampler.get_rev_ts` returning
  the grid. "output": their coefficients, the official 10,000-point left Riemann sums (whose error reaches 1e-3
  near t_end, where the t-integrand grows like 1/σ); "output_accurate_quadrature": the same official sampler with
  each of its coefficient integrals (its own integrand and Lagrange basis) done by scipy's adaptive quadrature.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import torch

from dpms.models import GaussianMixture
from dpms.sampler import make_grid

GRIDS = {"logSNR-6": ("logSNR", 6), "time_uniform-9": ("time_uniform", 9), "time_quadratic-12": ("time_quadratic", 12)}
NUM = 4


def _commit(path: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def unipc_cases(path: Path, gmm, x_T, grids):
    sys.path.insert(0, str(path))
    import uni_pc

    ns = uni_pc.NoiseScheduleVP("linear", continuous_beta_0=0.1, continuous_beta_1=20.0)
    shape = x_T.shape

    def model_fn(x, t):
        return gmm(x.reshape(shape), t).reshape(x.shape)

    cases = []
    for grid_name, ts in grids.items():
        for order in (1, 2, 3):
            for variant in ("bh1", "bh2"):
                for prediction in ("data", "noise"):
                    for corrector in (True, False):
                        for lower_order_final in (True, False):
                            if grid_name != "logSNR-6" and not (corrector and lower_order_final):
                                continue  # every option on one grid, the defaults on all
                            solver = uni_pc.UniPC(model_fn, ns, algorithm_type=f"{prediction}_prediction", variant=variant)
                            solver.get_time_steps = lambda **_: ts.reshape(-1, 1)
                            if not corrector:
                                update = solver.multistep_uni_pc_update
                                solver.multistep_uni_pc_update = lambda *a, use_corrector=True, **k: update(*a, use_corrector=False, **k)
                            with contextlib.redirect_stdout(io.StringIO()):  # the official update prints every step
                                out = solver.sample(x_T.reshape(*shape, 1, 1).clone(), steps=len(ts) - 1, order=order, method="multistep",
                                                    lower_order_final=lower_order_final)
                            options = {"variant": variant, "prediction": prediction, "corrector": corrector,
                                       "lower_order_final": "always" if lower_order_final else "never"}
                            cases.append({"solver": f"unipc{order}", "options": options, "grid": grid_name, "output": out.reshape(shape).tolist()})
    return cases


def deis_cases(path: Path, gmm, x_T, grids):
    sys.path.insert(0, str(path))
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from jax._src.numpy import lax_numpy

    if not hasattr(lax_numpy, "_promote_dtypes_inexact"):  # a private name th_deis.vpsde imports (for its discrete SDE only)
        from jax._src.numpy.util import promote_dtypes_inexact

        lax_numpy._promote_dtypes_inexact = promote_dtypes_inexact
    from th_deis import multistep, vpsde
    from th_deis import sampler as deis_sampler

    official_coefficients = deis_sampler.get_ab_eps_coef

    t2alpha, alpha2t = vpsde.get_linear_alpha_fns(0.1, 20.0)
    cases = []
    for grid_name, ts in grids.items():
        sde = vpsde.VPSDE(t2alpha, alpha2t, float(ts[-1]), float(ts[0]))
        deis_sampler.get_rev_ts = lambda *a, ts=ts, **k: jnp.asarray(ts.numpy())

        def eps_fn(x, t):
            return gmm(x, torch.as_tensor(t, dtype=torch.float64).reshape(-1).expand(x.shape[0]))

        for order in (1, 2, 3):
            for variant, make in (("tab", deis_sampler.get_sampler_t_ab), ("rhoab", deis_sampler.get_sampler_rho_ab)):
                deis_sampler.get_ab_eps_coef = official_coefficients
                out = make(sde, eps_fn, "t", 1, len(ts) - 1, order)(x_T.clone())
                deis_sampler.get_ab_eps_coef = partial(accurate_coefficients, multistep)
                accurate = make(sde, eps_fn, "t", 1, len(ts) - 1, order)(x_T.clone())
                cases.append({"solver": f"deis{order}", "options": {"variant": variant}, "grid": grid_name, "output": out.tolist(),
                              "output_accurate_quadrature": accurate.tolist()})
    return cases


def accurate_coefficients(multistep, sde, highest_order, timesteps, order):
    """The official `get_ab_eps_coef` (same integrand: sde.psi(τ, t_{i+1})·sde.eps_integrand(τ) times the official
    Lagrange basis `single_poly_coef`, same warm-up degrees, same column order) with scipy's adaptive quadrature
    in place of the 10,000-point left Riemann sum: what the official sampler computes when its integrals are exact."""
    import jax.numpy as jnp
    import numpy as np
    from scipy.integrate import quad

    ts = np.asarray(timesteps, dtype=np.float64)
    rows = []
    for i in range(len(ts) - 1):
        degree = min(i, order)
        poly = jnp.asarray(ts[i - degree : i + 2][: degree + 1])  # t_{i−degree}, …, t_i (the official ts_poly)
        row = np.zeros(highest_order + 1)
        for j in range(degree + 1):
            coef_idx = degree - j  # the official flip: column 0 is the newest point t_i

            def integrand(tau, coef_idx=coef_idx, poly=poly, end=ts[i + 1]):
                v = jnp.asarray([tau])
                weight = sde.psi(v, end) * sde.eps_integrand(v)
                return float(weight[0] * multistep.single_poly_coef(tau, poly, coef_idx))

            row[j] = quad(integrand, ts[i], ts[i + 1], epsabs=1e-14, epsrel=1e-13, limit=500)[0]
        rows.append(row)
    return jnp.asarray(np.stack(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unipc", type=Path, required=True, help="checkout of github.com/wl-zhao/UniPC (holds uni_pc.py)")
    parser.add_argument("--deis", type=Path, required=True, help="checkout of github.com/qsh-zh/deis (holds th_deis/)")
    parser.add_argument("--out", type=Path, default=Path("tests/data/upstream_unipc_deis.json"))
    parser.add_argument("--unipc-commit", help="the UniPC commit, where --unipc is not a git checkout (an exported tree)")
    parser.add_argument("--deis-commit", help="the DEIS commit, where --deis is not a git checkout")
    args = parser.parse_args()

    torch.set_default_dtype(torch.float64)
    gmm = GaussianMixture.default()
    sch = gmm.schedule
    x_T = gmm.prior(NUM, torch.Generator().manual_seed(0))
    grids = {name: make_grid(sch, skip, steps, sch.T, sch.t_end, torch.float64) for name, (skip, steps) in GRIDS.items()}
    document = {
        "command": "python benchmarks/upstream_reference.py --unipc UNIPC --deis DEIS",
        "upstream": {"wl-zhao/UniPC": args.unipc_commit or _commit(args.unipc), "qsh-zh/deis": args.deis_commit or _commit(args.deis)},
        "model": "GaussianMixture.default() (8-d, continuous linear VP)",
        "x_T": x_T.tolist(),
        "grids": {name: ts.tolist() for name, ts in grids.items()},
        "cases": unipc_cases(args.unipc, gmm, x_T, grids) + deis_cases(args.deis, gmm, x_T, grids),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(document, indent=None) + "\n")
    tmp.replace(args.out)
    print(f"wrote {len(document['cases'])} cases to {args.out}")


if __name__ == "__main__":
    main()
