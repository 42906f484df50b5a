"""Solvers on the exact model: convergence order, NFE counts, exact outputs, dtypes and batching."""

import math

import pytest
import torch

import dpms
from dpms import DpmsError, NoiseSchedule
from dpms.models import GaussianMixture
from dpms.sampler import make_grid, ode_reference
from dpms.sampler.singlestep import fast_orders

DETERMINISTIC = [n for n, s in dpms.solvers().items() if not s.stochastic]
STOCHASTIC = [n for n, s in dpms.solvers().items() if s.stochastic]


from conftest import mean_error  # the gmm and problem fixtures are conftest's too


# --------------------------------------------------------------------------- exact solution
def test_reference_solver_matches_the_analytic_flow_of_a_gaussian():
    """For Gaussian data N(μ, C) the probability-flow ODE is linear and solvable in closed form:
    in C's eigenbasis, x_t − α_t μ = sqrt((α_t² d + σ_t²)/(α_T² d + σ_T²)) (x_T − α_T μ)."""
    g = torch.Generator().manual_seed(1)
    mu = torch.randn(1, 4, generator=g, dtype=torch.float64)
    a = torch.randn(4, 4, generator=g, dtype=torch.float64)
    cov = (0.1 * a @ a.T + 0.05 * torch.eye(4, dtype=torch.float64))[None]
    model = GaussianMixture(mu, cov)
    sch = model.schedule
    x_T = torch.randn(8, 4, generator=g, dtype=torch.float64)
    d, u = model.eigvals[0], model.eigvecs[0]
    T, t0 = torch.tensor(sch.T, dtype=torch.float64), torch.tensor(sch.t_end, dtype=torch.float64)
    gain = torch.sqrt((sch.alpha(t0) ** 2 * d + sch.sigma(t0) ** 2) / (sch.alpha(T) ** 2 * d + sch.sigma(T) ** 2))
    exact = sch.alpha(t0) * mu + ((x_T - sch.alpha(T) * mu) @ u * gain) @ u.T
    assert torch.allclose(ode_reference(model, sch, x_T), exact, atol=1e-8)
    # and the solvers converge to it
    errors = [mean_error(dpms.sample(model, sch, x_T, solver="dpm3", nfe=n, order_plan="fixed"), exact) for n in (60, 120)]
    assert errors[0] < 1e-3 and errors[1] < errors[0] / 6


# --------------------------------------------------------------------------- convergence orders
# Every solver's declared order (SolverSpec.order) is measured in tests/test_solver_contract.py. There, 3M
# multistep measures 2: its 1st-order warm-up step has local error O(h²); F-PNDM measures 2: it feeds an AB4
# combination of ε through the 1st-order DDIM transfer (ε weighted uniformly in t, not by e^{-λ}dλ).


def test_higher_order_is_more_accurate_at_equal_nfe(gmm, problem):
    x_T, ref = problem
    err = {s: mean_error(dpms.sample(gmm, gmm.schedule, x_T, solver=s, nfe=48, skip="logSNR"), ref) for s in ("dpm1", "dpm2m", "dpm3m")}
    assert err["dpm3m"] < err["dpm2m"] < err["dpm1"]


def test_dpm_solver_3_beats_rk3_in_lambda_at_small_nfe(gmm, problem):
    """The paper's Table 1 pattern for third order: at 12 NFE DPM-Solver-3 is far ahead of RK3 in λ.
    (On this mixture DPM-Solver-2 does NOT beat RK2 in λ at 12 NFE; results/gmm shows it.)"""
    x_T, ref = problem
    e_dpm = mean_error(dpms.sample(gmm, gmm.schedule, x_T, solver="dpm3", nfe=12), ref)
    e_rk = mean_error(dpms.sample(gmm, gmm.schedule, x_T, solver="rk3", nfe=12, skip="logSNR"), ref)
    assert e_dpm < 0.5 * e_rk, (e_dpm, e_rk)


# --------------------------------------------------------------------------- equalities
def test_ddim_equals_dpm1(gmm):
    x_T = gmm.prior(8, torch.Generator().manual_seed(3))
    for skip in ("logSNR", "time_uniform", "time_quadratic"):
        a = dpms.sample(gmm, gmm.schedule, x_T, solver="ddim", nfe=7, skip=skip)
        b = dpms.sample(gmm, gmm.schedule, x_T, solver="dpm1", nfe=7, skip=skip)
        assert torch.allclose(a, b, atol=1e-12, rtol=0), skip


def test_dpm2_fast_even_nfe_equals_fixed(gmm):
    x_T = gmm.prior(4, torch.Generator().manual_seed(4))
    a = dpms.sample(gmm, gmm.schedule, x_T, solver="dpm2", nfe=10)
    b = dpms.sample(gmm, gmm.schedule, x_T, solver="dpm2", nfe=10, order_plan="fixed")
    assert torch.equal(a, b)


def test_fast_order_plans_match_the_paper():
    assert fast_orders(10, 3) == [3, 3, 3, 1]
    assert fast_orders(12, 3) == [3, 3, 3, 2, 1]
    assert fast_orders(15, 3) == [3, 3, 3, 3, 2, 1]
    assert fast_orders(20, 3) == [3, 3, 3, 3, 3, 3, 2]
    assert fast_orders(11, 2) == [2, 2, 2, 2, 2, 1]
    for m in range(1, 60):
        orders = fast_orders(m, 3)
        assert sum(orders) == m and len(orders) == m // 3 + 1 and orders == sorted(orders, reverse=True), m
        assert sum(fast_orders(m, 2)) == m and len(fast_orders(m, 2)) == (m + 1) // 2, m


def test_dpm3_fast_uses_lambda_uniform_outer_steps_and_inner_points(gmm):
    """NFE 10 → K = 4 λ-uniform steps of orders 3,3,3,1; order-3 steps evaluate at λ_s, λ_s + h/3, λ_s + 2h/3."""
    calls = []

    def recording(x, t):
        calls.append(float(t[0]))
        return gmm(x, t)

    x_T = gmm.prior(2, torch.Generator().manual_seed(0))
    _, info = dpms.sample(recording, gmm.schedule, x_T, solver="dpm3", nfe=10, return_info=True)
    sch = gmm.schedule
    lam_outer = sch.lambda_(info.timesteps.double())
    assert len(info.timesteps) == 5
    steps = lam_outer[1:] - lam_outer[:-1]
    assert torch.allclose(steps, steps[0].expand(4), rtol=1e-6)
    lam_calls = sch.lambda_(torch.tensor(calls, dtype=torch.float64))
    h = steps[0].item()
    expected = []
    for k, order in enumerate([3, 3, 3, 1]):
        lam_s = lam_outer[k].item()
        expected += [lam_s + r * h for r in ((0, 1 / 3, 2 / 3) if order == 3 else (0,))]
    assert torch.allclose(lam_calls, torch.tensor(expected, dtype=torch.float64), atol=1e-4)


def _official_singlestep(model, x, nfe, order, skip, fixed, data_prediction):
    """An independent transcription of the official `DPM_Solver.sample(method="singlestep"|"singlestep_fixed")`:
    outer grid, then for each step of order k the skip type's own k-step inner grid from s to t, whose
    λ-fractions are r₁ (and r₂); updates written out from Algorithms 1-2 and DPM-Solver++ Algorithm 1."""
    sch = model.schedule
    a, sg, lam = sch.alpha, sch.sigma, sch.lambda_
    grid = lambda k, t0, t1: make_grid(sch, skip, k, t0, t1, torch.float64)  # noqa: E731
    orders = [order] * (nfe // order) if fixed else fast_orders(nfe, order)
    if skip == "logSNR" or fixed:
        outer = grid(len(orders), sch.T, sch.t_end)
    else:
        outer = grid(nfe, sch.T, sch.t_end)[torch.cumsum(torch.tensor([0] + orders), 0)]
    for i, k in enumerate(orders):
        s, t = outer[i], outer[i + 1]
        li = lam(grid(k, float(s), float(t)))
        h = li[-1] - li[0]
        eps = lambda y, u: model(y, u.expand(y.shape[0]))  # noqa: E731
        e_s = eps(x, s)
        if data_prediction:
            x0 = (x - sg(s) * e_s) / a(s)
            x_new = sg(t) / sg(s) * x - a(t) * torch.expm1(-h) * x0
            if k == 2:
                r1 = (li[1] - li[0]) / h
                s1 = sch.inverse_lambda(li[0] + r1 * h)
                u = sg(s1) / sg(s) * x - a(s1) * torch.expm1(-r1 * h) * x0
                x_new = x_new - 0.5 / r1 * a(t) * torch.expm1(-h) * ((u - sg(s1) * eps(u, s1)) / a(s1) - x0)
            x = x_new
            continue
        x_lin = a(t) / a(s) * x - sg(t) * torch.expm1(h) * e_s
        if k == 1:
            x = x_lin
        elif k == 2:
            r1 = (li[1] - li[0]) / h
            s1 = sch.inverse_lambda(li[0] + r1 * h)
            u = a(s1) / a(s) * x - sg(s1) * torch.expm1(r1 * h) * e_s
            x = x_lin - 0.5 / r1 * sg(t) * torch.expm1(h) * (eps(u, s1) - e_s)
        else:
            r1, r2 = (li[1] - li[0]) / h, (li[2] - li[0]) / h
            s1, s2 = sch.inverse_lambda(li[0] + r1 * h), sch.inverse_lambda(li[0] + r2 * h)
            u1 = a(s1) / a(s) * x - sg(s1) * torch.expm1(r1 * h) * e_s
            d1 = eps(u1, s1) - e_s
            u2 = a(s2) / a(s) * x - sg(s2) * torch.expm1(r2 * h) * e_s - sg(s2) * r2 / r1 * (torch.expm1(r2 * h) / (r2 * h) - 1) * d1
            x = x_lin - sg(t) / r2 * (torch.expm1(h) / h - 1) * (eps(u2, s2) - e_s)
    return x


@pytest.mark.parametrize("solver,order,data_prediction", [("dpm2", 2, False), ("dpm3", 3, False), ("dpmpp2s", 2, True)])
@pytest.mark.parametrize("skip", ["logSNR", "time_uniform", "time_quadratic"])
def test_singlestep_solvers_equal_the_official_algorithm_at_every_nfe(gmm, solver, order, data_prediction, skip):
    """Every NFE's order plan, including the 2nd-order steps of dpm3's fast plan (r₁ = ½ there, not ⅓)
    and the per-step r₁, r₂ of non-logSNR grids, against an independent transcription."""
    x_T = gmm.prior(8, torch.Generator().manual_seed(5))
    for nfe in (2, 5, 6, 7, 10, 11, 12, 15, 20):
        for fixed in (False, True):
            if fixed and nfe % order:
                continue
            ours = dpms.sample(gmm, gmm.schedule, x_T, solver=solver, nfe=nfe, skip=skip, order_plan="fixed" if fixed else "fast")
            ref = _official_singlestep(gmm, x_T, nfe, order, skip, fixed, data_prediction)
            assert torch.allclose(ours, ref, atol=1e-9, rtol=0), (nfe, fixed, float((ours - ref).abs().max()))


# --------------------------------------------------------------------------- NFE accounting
# (every solver's exact NFE count: tests/test_solver_contract.py)
@pytest.mark.parametrize("solver,nfe,near", [("rk3", 10, "9 or 12"), ("rk2", 5, "4 or 6"), ("fon", 10, "8 or 12"), ("pndm", 10, "8 or 12"), ("spndm", 1, "2"),
                          ("rk3", 2, "3$"), ("rk2", 1, "2$"), ("fon", 3, "4$")])
def test_impossible_nfe_names_the_nearest_valid(gmm, solver, nfe, near):
    x_T = gmm.prior(2)
    with pytest.raises(DpmsError, match=f"nearest valid: {near}") as e:
        dpms.sample(gmm, gmm.schedule, x_T, solver=solver, nfe=nfe)
    assert "\n" not in str(e.value)


def test_fixed_order_plan_needs_divisible_nfe(gmm):
    with pytest.raises(DpmsError, match="nearest valid: 9 or 12"):
        dpms.sample(gmm, gmm.schedule, gmm.prior(2), solver="dpm3", nfe=10, order_plan="fixed")


@pytest.mark.parametrize("solver,per_try", [("dpm12", 2), ("dpm23", 3)])
def test_adaptive_solvers_report_nfe_and_meet_tolerance(gmm, problem, solver, per_try):
    x_T, ref = problem
    x, info = dpms.sample(gmm, gmm.schedule, x_T, solver=solver, return_info=True)
    assert info.nfe % per_try == 0 and info.nfe > 0
    assert mean_error(x, ref) < 0.02
    x2, info2 = dpms.sample(gmm, gmm.schedule, x_T, solver=solver, return_info=True, rtol=0.005, atol=0.0005)
    assert info2.nfe > info.nfe and mean_error(x2, ref) < mean_error(x, ref)


def test_rk45_reports_nfe_and_is_accurate(gmm, problem):
    x_T, ref = problem
    x, info = dpms.sample(gmm, gmm.schedule, x_T, solver="rk45", return_info=True)
    assert info.nfe > 20 and mean_error(x, ref) < 1e-3


# --------------------------------------------------------------------------- dtypes, batching, seeds
@pytest.mark.parametrize("solver", ["dpm3", "dpmpp3m", "pndm", "rk3", "dpm23"])
def test_float32_and_float64(gmm, solver):
    x64 = gmm.prior(6, torch.Generator().manual_seed(5))
    nfe = 12
    a, info = dpms.sample(gmm, gmm.schedule, x64, solver=solver, nfe=nfe, return_info=True)
    b = dpms.sample(gmm, gmm.schedule, x64.float(), solver=solver, nfe=nfe)
    assert a.dtype == torch.float64 and info.timesteps.dtype == torch.float64 and b.dtype == torch.float32
    # adaptive solvers may accept different steps in float32, so their paths differ more
    assert torch.allclose(a.float(), b, atol=2e-2 if dpms.solvers()[solver].adaptive else 2e-3)


@pytest.mark.parametrize("solver", [s for s in DETERMINISTIC if s != "rk45"] + STOCHASTIC)
def test_batch_size_does_not_change_a_sample(gmm, solver):
    x_T = gmm.prior(8, torch.Generator().manual_seed(6))
    nfe = {"rk3": 12, "rk3-t": 12, "rk4-t": 12, "fon": 13, "pndm": 13}.get(solver, 10)
    whole = dpms.sample(gmm, gmm.schedule, x_T, solver=solver, nfe=nfe, seed=11)
    if dpms.solvers()[solver].adaptive:  # one step size for the whole batch, as the official code
        pytest.skip("adaptive DPM-Solver shares its step size across the batch (official behaviour)")
    halves = torch.cat(
        [
            dpms.sample(gmm, gmm.schedule, x_T[:3], solver=solver, nfe=nfe, seeds=[11, 12, 13]),
            dpms.sample(gmm, gmm.schedule, x_T[3:], solver=solver, nfe=nfe, seeds=[14, 15, 16, 17, 18]),
        ]
    )
    assert torch.allclose(whole, halves, atol=1e-10, rtol=0)


@pytest.mark.parametrize("solver", STOCHASTIC)
def test_stochastic_solvers_are_seeded_and_sample_the_data(gmm, solver):
    x_T = gmm.prior(2000, torch.Generator().manual_seed(7))
    a = dpms.sample(gmm, gmm.schedule, x_T, solver=solver, nfe=100, seed=0)
    b = dpms.sample(gmm, gmm.schedule, x_T[:5], solver=solver, nfe=100, seed=0)
    c = dpms.sample(gmm, gmm.schedule, x_T[:5], solver=solver, nfe=100, seed=1)
    assert torch.allclose(a[:5], b, atol=1e-10, rtol=0) and not torch.allclose(b, c)
    # distributional check against the exact data moments (2000 samples: std error of a mean ≈ 0.015)
    assert (a.mean(0) - gmm.mean).abs().max() < 0.08
    assert (torch.cov(a.T) - gmm.cov).abs().max() < 0.08


# --------------------------------------------------------------------------- grids and errors
def test_grids():
    sch = NoiseSchedule.discrete_linear(1000)
    for skip in ("logSNR", "time_uniform", "time_quadratic", "discrete_uniform", "discrete_quadratic"):
        ts = make_grid(sch, skip, 10, 1.0, 1e-3, torch.float64)
        assert len(ts) == 11 and ts[0] == 1.0 and ts[-1] == pytest.approx(1e-3) and bool((ts[1:] < ts[:-1]).all()), skip
    ts = make_grid(sch, "discrete_uniform", 10, 1.0, 1e-3, torch.float64)
    # DDIM's range(0, 1000, 100) → indices 900, …, 100 inside, t = (n + 1)/N
    assert torch.allclose(ts[1:-1] * 1000 - 1, torch.arange(900, 0, -100, dtype=torch.float64))
    ts = make_grid(NoiseSchedule.linear(), "time_quadratic", 4, 1.0, 1e-3, torch.float64)
    assert torch.allclose(ts.sqrt(), torch.linspace(1.0, 1e-3**0.5, 5, dtype=torch.float64))
    with pytest.raises(DpmsError, match="needs a discrete schedule"):
        make_grid(NoiseSchedule.linear(), "discrete_uniform", 10, 1.0, 1e-3)


def test_explicit_timesteps(gmm):
    x_T = gmm.prior(3, torch.Generator().manual_seed(8))
    ts = make_grid(gmm.schedule, "logSNR", 6, 1.0, 1e-3, torch.float64)
    a = dpms.sample(gmm, gmm.schedule, x_T, solver="dpm2m", timesteps=ts)
    b = dpms.sample(gmm, gmm.schedule, x_T, solver="dpm2m", nfe=6, skip="logSNR")
    assert torch.equal(a, b)
    with pytest.raises(DpmsError, match="strictly decreasing"):
        dpms.sample(gmm, gmm.schedule, x_T, solver="ddim", timesteps=[0.1, 0.5])


def test_bad_input_errors(gmm):
    x_T = gmm.prior(2)
    with pytest.raises(DpmsError, match="unknown solver 'dpm4'; valid solvers: .*dpm3"):
        dpms.sample(gmm, gmm.schedule, x_T, solver="dpm4")
    with pytest.raises(DpmsError, match="unknown skip type 'log'"):
        dpms.sample(gmm, gmm.schedule, x_T, skip="log")
    with pytest.raises(DpmsError, match="has no option 'rtol'"):
        dpms.sample(gmm, gmm.schedule, x_T, solver="dpm3", rtol=0.1)
    with pytest.raises(DpmsError, match="t_end < t_start"):
        dpms.sample(gmm, gmm.schedule, x_T, t_start=0.5, t_end=0.6)
    with pytest.raises(DpmsError, match="NaN"):
        dpms.sample(lambda x, t: x * float("nan"), gmm.schedule, x_T, solver="dpm2m")


@pytest.mark.parametrize("solver", ["ddim", "dpm3", "dpmpp3m", "pndm", "dpm23", "rk45"])
def test_nan_from_the_network_is_one_line_naming_the_first_bad_call(gmm, solver):
    """Fixed-step solvers check finiteness after the loop (no per-call host sync); adaptive ones at once."""
    calls = []

    def broken(x, t):
        calls.append(1)
        eps = gmm(x, t)
        return eps * float("nan") if len(calls) == 3 else eps

    nfe = 15 if solver == "pndm" else 10
    with pytest.raises(DpmsError, match=r"NaN/inf at call 3 of \d+ \(t=") as error:
        dpms.sample(broken, gmm.schedule, gmm.prior(4), solver=solver, nfe=nfe)
    assert "\n" not in str(error.value)


def test_r1_r2_options_move_the_intermediate_points_of_the_top_order_steps_only(gmm):
    """dpm3 at NFE 8 (orders 3, 3, 2): r1=¼, r2=½ place the 3rd-order steps' calls at λ_s + (0, ¼, ½)h;
    the 2nd-order step keeps its grid's ½."""
    calls = []

    def recording(x, t):
        calls.append(float(t[0]))
        return gmm(x, t)

    x_T = gmm.prior(2, torch.Generator().manual_seed(0))
    _, info = dpms.sample(recording, gmm.schedule, x_T, solver="dpm3", nfe=8, r1=0.25, r2=0.5, return_info=True)
    lam_outer = gmm.schedule.lambda_(info.timesteps.double())
    expected = []
    for k, fractions in enumerate([(0, 0.25, 0.5), (0, 0.25, 0.5), (0, 0.5)]):
        h = (lam_outer[k + 1] - lam_outer[k]).item()
        expected += [lam_outer[k].item() + r * h for r in fractions]
    lam_calls = gmm.schedule.lambda_(torch.tensor(calls, dtype=torch.float64))
    assert torch.allclose(lam_calls, torch.tensor(expected, dtype=torch.float64), atol=1e-4)


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_one_non_finite_entry_is_caught(gmm, bad):
    def broken(x, t):
        eps = gmm(x, t).clone()
        if float(t[0]) < 0.5:
            eps[1, 2] = bad
        return eps

    with pytest.raises(DpmsError, match=r"NaN/inf at call \d+ of 10 \(t=0\.[0-4]"):
        dpms.sample(broken, gmm.schedule, gmm.prior(4), solver="ddim", nfe=10, skip="time_uniform")


@pytest.mark.parametrize("mode,steps,lowered", [("official", 9, True), ("official", 10, False), (True, 9, True), (False, 5, False),
                                                ("diffusers", 14, True), ("diffusers", 15, False), ("always", 50, True), ("never", 3, False)])
def test_lower_order_final_modes_decide_the_last_steps_order(gmm, mode, steps, lowered):
    """Each mode either lowers the final orders of a run of `steps` steps (= the "always" run) or not (= "never")."""
    x_T = gmm.prior(4, torch.Generator().manual_seed(6))
    ts = make_grid(gmm.schedule, "logSNR", steps, gmm.schedule.T, gmm.schedule.t_end, torch.float64)
    got = dpms.sample(gmm, gmm.schedule, x_T, solver="dpmpp3m", timesteps=ts, lower_order_final=mode)
    full = dpms.sample(gmm, gmm.schedule, x_T, solver="dpmpp3m", timesteps=ts, lower_order_final="never")
    low = dpms.sample(gmm, gmm.schedule, x_T, solver="dpmpp3m", timesteps=ts, lower_order_final="always")
    assert torch.equal(got, low if lowered else full)
    assert not torch.equal(low, full)


def test_unknown_lower_order_final_is_one_line(gmm):
    with pytest.raises(DpmsError, match="unknown lower_order_final 'sometimes'; use one of official, diffusers, always, never"):
        dpms.sample(gmm, gmm.schedule, gmm.prior(2), solver="dpm2m", nfe=5, lower_order_final="sometimes")
