"""iPNDM, iPNDM-v, EDM's Heun, the karras grid, afs and denoise_to_zero: against the upstream code's
outputs on the exact model, measured convergence orders, NFE counts and errors."""

import json
import math
from pathlib import Path

import pytest
import torch

import dpms
from dpms import DpmsError
from dpms.sampler import make_grid
from dpms.sampler.grids import karras_sigmas
from dpms.sampler.ipndm import AB_WEIGHTS, _variable_weights
from dpms.sampler.steps import to_data
from conftest import mean_error

REFERENCE = json.loads((Path(__file__).parent / "data" / "upstream_reference.json").read_text())


def _counting(gmm):
    calls = []

    def noise_fn(x, t):
        calls.append((x.clone(), t.clone()))
        return gmm(x, t)

    return noise_fn, calls


# --------------------------------------------------------------------------- the upstream code's outputs
def _case_id(case):
    opts = ",".join(f"{k}={v}" for k, v in case["options"].items())
    return f"{case['solver']}-{case['grid']}-{case['upstream'].split()[0]}-{opts}"


@pytest.mark.parametrize("case", REFERENCE["cases"], ids=[_case_id(c) for c in REFERENCE["cases"]])
def test_equals_the_upstream_sampler_on_its_grid(gmm, case):
    """diff-sampler (ipndm_sampler, ipndm_v_sampler, heun_sampler, dpm_pp_sampler), DEIS
    (get_sampler_ipndm) and EDM (edm_sampler) run on the exact model through explicit grids by
    benchmarks/upstream_reference_ipndm_heun.py: dpms agrees to round-off (the largest deviation is 7e-14)."""
    x_T = torch.tensor(REFERENCE["x_T"], dtype=torch.float64)
    options = {k: v for k, v in case["options"].items() if k not in ("nfe", "skip")}
    ts = torch.tensor(case["timesteps"], dtype=torch.float64)
    ours = dpms.sample(gmm, gmm.schedule, x_T, solver=case["solver"], timesteps=ts, **options)
    ref = torch.tensor(case["x"], dtype=torch.float64)
    assert float((ours - ref).abs().max()) < 1e-12


@pytest.mark.parametrize("case", [c for c in REFERENCE["cases"] if c["upstream"] == "EDM edm_sampler"], ids=lambda c: c["grid"])
def test_heun_on_the_karras_grid_with_denoise_to_zero_is_edms_sampler(gmm, case):
    """EDM's edm_sampler(num_steps=N): N − 1 Heun steps down the ρ = 7 grid, the last step Euler to
    σ = 0. In dpms: heun, skip="karras", denoise_to_zero=True, NFE = 2(N − 1) + 1 (35 for N = 18)."""
    x_T = torch.tensor(REFERENCE["x_T"], dtype=torch.float64)
    noise_fn, calls = _counting(gmm)
    nfe = case["options"]["nfe"]
    ours, info = dpms.sample(noise_fn, gmm.schedule, x_T, solver="heun", nfe=nfe, skip="karras", denoise_to_zero=True, return_info=True)
    assert len(calls) == info.nfe == nfe
    assert torch.equal(info.timesteps, torch.tensor(case["timesteps"], dtype=torch.float64))
    assert float((ours - torch.tensor(case["x"], dtype=torch.float64)).abs().max()) < 1e-12


def test_the_reference_file_covers_every_solver_and_option():
    seen = {(c["solver"], c["upstream"].split()[0]) for c in REFERENCE["cases"]}
    assert {("ipndm", "diff-sampler"), ("ipndm", "DEIS"), ("ipndm-v", "diff-sampler"), ("heun", "diff-sampler"), ("heun", "EDM"),
            ("dpm2m", "diff-sampler"), ("dpm3m", "diff-sampler")} <= seen
    for solver in ("ipndm", "ipndm-v", "heun", "dpm3m"):
        flags = {(c["options"].get("afs", False), c["options"].get("denoise_to_zero", False)) for c in REFERENCE["cases"] if c["solver"] == solver}
        assert (True, False) in flags and (solver == "dpm3m" or (True, True) in flags), solver
    assert {c["options"].get("max_order") for c in REFERENCE["cases"] if c["solver"] == "ipndm"} == {1, 2, 3, 4}


# --------------------------------------------------------------------------- convergence orders
# Measured against the DOP853 reference on the λ-uniform grid, doubling the steps (16 samples);
# asserted at what they measure (order − 0.25 … order + 0.5), with the errors they measure.
ORDER_CASES = [
    ("heun", "logSNR", (96, 192), 2.0, {}),  # 2.04
    ("heun", "karras", (96, 192), 2.0, {}),  # 2.04
    ("ipndm", "logSNR", (48, 96), 1.0, {"max_order": 1}),  # 0.99: DDIM
    ("ipndm", "logSNR", (192, 384), 2.0, {"max_order": 2}),  # 1.92
    # Fixed equal-step weights on steps that are not equal in σ (no grid here is uniform in σ):
    # each weight is off by O(h), so AB3 and AB4 fall to order 2 (measured 1.97 and 2.00).
    ("ipndm", "logSNR", (192, 384), 2.0, {"max_order": 3}),
    ("ipndm", "logSNR", (192, 384), 2.0, {}),
    ("ipndm", "karras", (192, 384), 2.0, {}),  # 2.00
    ("ipndm-v", "logSNR", (192, 384), 2.0, {"max_order": 2}),  # 1.92
    ("ipndm-v", "logSNR", (96, 192), 3.0, {"max_order": 3}),  # 2.92
    # diff-sampler's 4th-order weights are AB4 + Δ³/12 on steps of constant ratio (the logSNR grid is
    # geometric in σ), so order 3 (2.87 at 384 → 768); on the karras grid their weights do not sum to 1
    # and the order falls towards 2 (1.81 at 384 → 768, after 1.00 and 1.60 at fewer steps).
    ("ipndm-v", "logSNR", (384, 768), 3.0, {}),
    ("ipndm-v", "karras", (384, 768), 2.0, {}),
]


@pytest.mark.parametrize("solver,skip,nfes,order,options", ORDER_CASES, ids=[f"{c[0]}-{c[1]}-{c[4]}" for c in ORDER_CASES])
def test_convergence_order(gmm, problem, solver, skip, nfes, order, options):
    x_T, ref = problem
    errors = [mean_error(dpms.sample(gmm, gmm.schedule, x_T, solver=solver, nfe=n, skip=skip, **options), ref) for n in nfes]
    measured = math.log(errors[0] / errors[1]) / math.log(2.0)
    assert order - 0.25 <= measured <= order + 0.5, f"{solver}: measured order {measured:.2f}, errors {errors}"


def test_ipndm_weights():
    """AB weights sum to 1; diff-sampler's variable weights are AB2 and AB3 on equal steps but
    (57, −65, 43, −11)/24 = AB4 + (1, −3, 3, −1)/12 at fourth order, and do not sum to 1 on unequal steps."""
    for order, w in AB_WEIGHTS.items():
        assert sum(w) == pytest.approx(1.0, abs=1e-15)
        if order < 4:
            assert _variable_weights([-0.1] * order) == pytest.approx(w, abs=1e-14)
    assert [24 * w for w in _variable_weights([-0.1] * 4)] == pytest.approx([57, -65, 43, -11], abs=1e-12)
    assert sum(_variable_weights([-1.0, -1.1, -1.2, -1.3])) == pytest.approx(1.0018884536245645, abs=1e-14)
    assert sum(_variable_weights([-1.0, -2.0, -4.0])) == pytest.approx(1.0, abs=1e-14)  # order 3 stays consistent


def test_ipndm_of_order_one_is_ddim_and_one_heun_step_is_spndms_first(gmm):
    x_T = gmm.prior(4, torch.Generator().manual_seed(2))
    ts = make_grid(gmm.schedule, "karras", 7, 1.0, 1e-3, torch.float64)
    for solver in ("ipndm", "ipndm-v"):
        a = dpms.sample(gmm, gmm.schedule, x_T, solver=solver, timesteps=ts, max_order=1)
        assert torch.allclose(a, dpms.sample(gmm, gmm.schedule, x_T, solver="ddim", timesteps=ts), atol=1e-13, rtol=0)
    one = ts[:2]
    assert torch.equal(dpms.sample(gmm, gmm.schedule, x_T, solver="heun", timesteps=one), dpms.sample(gmm, gmm.schedule, x_T, solver="spndm", timesteps=one))


# --------------------------------------------------------------------------- NFE, afs, denoise_to_zero
@pytest.mark.parametrize("solver,per_step", [("ipndm", 1), ("ipndm-v", 1), ("heun", 2), ("dpm3m", 1), ("dpmpp2m", 1), ("dpm3", None)])
@pytest.mark.parametrize("afs,denoise_to_zero", [(False, False), (True, False), (False, True), (True, True)])
def test_nfe_counts_every_call_with_afs_and_denoise_to_zero(gmm, solver, per_step, afs, denoise_to_zero):
    x_T = gmm.prior(3, torch.Generator().manual_seed(0))
    odd = per_step == 2 and afs != denoise_to_zero  # heun: 2·steps ± 1
    for nfe in (7, 11) if odd else (6, 10):
        noise_fn, calls = _counting(gmm)
        x, info = dpms.sample(noise_fn, gmm.schedule, x_T, solver=solver, nfe=nfe, afs=afs, denoise_to_zero=denoise_to_zero, return_info=True)
        assert len(calls) == info.nfe == nfe
        steps = len(info.timesteps) - 1
        if per_step:
            assert nfe == per_step * steps - afs + denoise_to_zero
        first_t = float(calls[0][1][0])
        if afs:  # the call at (x_T, t_start) is never made
            assert first_t < float(info.timesteps[0]) and not any(torch.equal(c[0], x_T) for c in calls)
        else:
            assert first_t == float(info.timesteps[0]) and torch.equal(calls[0][0], x_T)
        if denoise_to_zero:  # the last call is at t_end, and x̂₀ of it is returned
            x_end, t_end = calls[-1]
            assert float(t_end[0]) == float(info.timesteps[-1])
            assert torch.allclose(x, to_data(x_end, gmm(x_end, t_end), gmm.schedule, t_end[0]), atol=1e-13, rtol=0)


def test_afs_uses_x_T_as_the_first_noise_prediction(gmm):
    """afs equals running with a network whose first answer is ε = x_T."""
    x_T = gmm.prior(4, torch.Generator().manual_seed(1))
    first = []

    def x_first(x, t):
        if not first:
            first.append(1)
            return x.clone()
        return gmm(x, t)

    for solver, nfe in (("ipndm", 10), ("dpmpp3m", 10), ("heun", 9)):
        first.clear()
        a = dpms.sample(gmm, gmm.schedule, x_T, solver=solver, nfe=nfe, afs=True)
        b = dpms.sample(x_first, gmm.schedule, x_T, solver=solver, nfe=nfe + 1)
        assert torch.equal(a, b), solver


@pytest.mark.parametrize("kwargs,match", [
    (dict(solver="heun", nfe=10, afs=True), r"NFE 10 is impossible \(NFE = 2·steps, one call fewer with afs\); nearest valid: 9 or 11"),
    (dict(solver="heun", nfe=10, denoise_to_zero=True), r"NFE 10 is impossible \(NFE = 2·steps, one call more with denoise_to_zero\); nearest valid: 9 or 11"),
    (dict(solver="heun", nfe=1, denoise_to_zero=True), r"NFE 1 is impossible .*; nearest valid: 3$"),
    (dict(solver="ipndm", nfe=8, max_order=5), r"max_order must be 1, 2, 3 or 4, got 5"),
    (dict(solver="ipndm", nfe=8, afs="yes"), r"afs must be true or false, got 'yes'"),
    (dict(solver="ipndm", nfe=8, denoise_to_zero=1), r"denoise_to_zero must be true or false, got 1"),
    (dict(solver="ipndm", nfe=8, rho=0), r"rho must be a positive number"),
    (dict(solver="heun", nfe=8, max_order=2), r"solver 'heun' has no option 'max_order'"),
])
def test_bad_options_are_one_line(gmm, kwargs, match):
    with pytest.raises(DpmsError, match=match) as e:
        dpms.sample(gmm, gmm.schedule, gmm.prior(2), **kwargs)
    assert "\n" not in str(e.value)
    if "max_order" not in kwargs:  # validate() raises the same before sampling
        with pytest.raises(DpmsError, match=match):
            dpms.sampler.validate(kwargs.pop("solver"), gmm.schedule, **kwargs)


# --------------------------------------------------------------------------- the karras grid
def test_karras_grid_is_edms_in_sigma(gmm):
    sch = gmm.schedule
    for rho in (7, 3.0, 1):
        ts = make_grid(sch, "karras", 12, 1.0, 1e-3, torch.float64, rho=rho)
        assert ts[0] == 1.0 and ts[-1] == 1e-3 and bool((ts[1:] < ts[:-1]).all())
        sigma = torch.exp(-sch.lambda_(ts))
        s_max, s_min = float(sigma[0]), float(sigma[-1])
        i = torch.arange(13, dtype=torch.float64)
        edm = (s_max ** (1 / rho) + i / 12 * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho  # Karras et al. Eq. 5
        assert torch.allclose(sigma, edm, rtol=1e-12, atol=0)
        assert torch.allclose(karras_sigmas(s_max, s_min, 12, rho), edm, rtol=1e-15, atol=0)
    assert not torch.equal(make_grid(sch, "karras", 12, 1.0, 1e-3, torch.float64), make_grid(sch, "karras", 12, 1.0, 1e-3, torch.float64, rho=3))


@pytest.mark.parametrize("solver", [n for n, s in dpms.solvers().items() if not s.adaptive and not s.stochastic])
def test_every_fixed_step_solver_runs_on_the_karras_grid(gmm, problem, solver):
    """karras with rho is a grid like any other: every deterministic fixed-step solver takes it and its
    error shrinks with the NFE (rho=7 and rho=5 give different grids, so different samples)."""
    x_T, ref = problem
    nfes = {"heun": (12, 48), "rk2": (12, 48), "rk2-t": (12, 48), "rk3": (12, 48), "rk3-t": (12, 48), "fon": (12, 48), "pndm": (12, 48)}.get(solver, (12, 48))
    errors = [mean_error(dpms.sample(gmm, gmm.schedule, x_T, solver=solver, nfe=n, skip="karras"), ref) for n in nfes]
    assert errors[1] < errors[0], errors
    assert not torch.equal(dpms.sample(gmm, gmm.schedule, x_T, solver=solver, nfe=12, skip="karras", rho=5),
                           dpms.sample(gmm, gmm.schedule, x_T, solver=solver, nfe=12, skip="karras"))
