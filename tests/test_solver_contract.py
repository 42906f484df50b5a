"""The contract every registered solver meets, checked for each solver by being registered (as diffusers'
shared scheduler tests): exact NFE accounting, explicit `timesteps=` grids, the declared convergence order
measured on the exact model against the DOP853 reference, deterministic output, and schedule coefficients
computed per grid. A new solver is one new file in dpms/sampler/ and gets all of these."""

import math
import textwrap

import pytest
import torch

import dpms
import dpms.sampler
from dpms import NoiseSchedule
from dpms.models import GaussianMixture
from dpms.sampler import make_grid
from dpms.sampler.registry import _REGISTRY

SOLVERS = dpms.solvers()
FIXED_STEP = [name for name, spec in SOLVERS.items() if not spec.adaptive]
DETERMINISTIC_FIXED = [name for name in FIXED_STEP if not SOLVERS[name].stochastic]
WITH_ORDER = [name for name, spec in SOLVERS.items() if spec.order is not None]


from conftest import mean_error  # the gmm and problem fixtures are conftest's too


def logsnr_grid(schedule, steps):
    return make_grid(schedule, "logSNR", steps, schedule.T, schedule.t_end, torch.float64)


def test_every_solver_declares_a_numeric_order_or_says_why_not():
    for name, spec in SOLVERS.items():
        assert spec.order is not None or spec.adaptive or spec.stochastic, name
        assert spec.order is not None or spec.order_note, name


@pytest.mark.parametrize("solver", WITH_ORDER)
def test_measured_convergence_order_is_the_declared_order(gmm, problem, solver):
    """log₂ of the error ratio between explicit λ-uniform grids of the spec's order_steps (48 and 96 steps unless
    it says otherwise), against DOP853."""
    x_T, ref = problem
    steps = SOLVERS[solver].order_steps
    errors = [mean_error(dpms.sample(gmm, gmm.schedule, x_T, solver=solver, timesteps=logsnr_grid(gmm.schedule, n)), ref) for n in steps]
    measured = math.log(errors[0] / errors[1]) / math.log(2.0)
    order = SOLVERS[solver].order
    assert order - 0.25 <= measured <= order + 0.5, f"{solver}: measured order {measured:.2f}, declared {order}, errors {errors}"


@pytest.mark.parametrize("solver", FIXED_STEP)
def test_nfe_is_counted_exactly(gmm, solver):
    """Requested NFE (at the smallest valid budgets ≥ 1, 5, 10) and explicit grids: the calls made are the plan's."""
    spec = SOLVERS[solver]
    x_T = gmm.prior(3, torch.Generator().manual_seed(0))
    calls = []

    def counting(x, t):
        calls.append(1)
        return gmm(x, t)

    for nfe in sorted({spec.first_valid_nfe(k) for k in (1, 5, 10)}):
        calls.clear()
        x, info = dpms.sample(counting, gmm.schedule, x_T, solver=solver, nfe=nfe, return_info=True)
        assert len(calls) == nfe == info.nfe and torch.isfinite(x).all(), nfe
    for steps in (1, 4, 7):
        calls.clear()
        ts = logsnr_grid(gmm.schedule, steps)
        _, info = dpms.sample(counting, gmm.schedule, x_T, solver=solver, timesteps=ts, return_info=True)
        assert len(calls) == info.nfe == spec.plan.nfe(ts, spec.plan.explicit(ts, dict(spec.plan.options))), steps


@pytest.mark.parametrize("solver", FIXED_STEP)
def test_explicit_timesteps_are_the_grid_stepped_over(gmm, problem, solver):
    """An explicit grid is used as given; where the plan adds nothing to the grid (no per-step plan) the
    run equals the NFE-requested run on the same grid, bit for bit; and a fine explicit grid is accurate."""
    spec = SOLVERS[solver]
    x_T, ref = problem
    nfe = spec.first_valid_nfe(10)
    a, info = dpms.sample(gmm, gmm.schedule, x_T, solver=solver, nfe=nfe, skip="logSNR", seed=3, return_info=True)
    b, info_b = dpms.sample(gmm, gmm.schedule, x_T, solver=solver, timesteps=info.timesteps, seed=3, return_info=True)
    assert torch.equal(info_b.timesteps, info.timesteps) and info_b.skip == "explicit"
    if not spec.plan.makes_steps:
        assert torch.equal(a, b)
    if not spec.stochastic:
        fine = dpms.sample(gmm, gmm.schedule, x_T, solver=solver, timesteps=logsnr_grid(gmm.schedule, 48))
        assert mean_error(fine, ref) < 0.05


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_output_is_deterministic(gmm, solver):
    x_T = gmm.prior(4, torch.Generator().manual_seed(9))
    nfe = None if SOLVERS[solver].adaptive else SOLVERS[solver].first_valid_nfe(8)
    a = dpms.sample(gmm, gmm.schedule, x_T, solver=solver, nfe=nfe, seed=5)
    b = dpms.sample(gmm, gmm.schedule, x_T.clone(), solver=solver, nfe=nfe, seed=5)
    assert torch.equal(a, b)


@pytest.mark.parametrize("schedule", [NoiseSchedule.discrete_linear(), NoiseSchedule.linear()], ids=["discrete", "continuous"])
@pytest.mark.parametrize("solver", FIXED_STEP)
def test_schedule_coefficients_are_computed_per_grid_not_per_step(monkeypatch, schedule, solver):
    """The contract of `NoiseSchedule.on_grid`: every time a loop evaluates α, σ, λ or d log α/dt at — grid
    points, a singlestep solver's s₁, s₂, PNDM's midpoints, Runge–Kutta stages — is served from the
    precomputed grid tables: the number of uncached evaluations and of table interpolations does not grow
    with the number of steps."""
    import dpms.schedule as schedule_module

    counts = {"miss": 0, "interpolate": 0}
    cached, interpolate = NoiseSchedule._cached, schedule_module.interpolate

    def counting_cached(self, quantity, t):
        out = cached(self, quantity, t)
        counts["miss"] += out is None and isinstance(t, torch.Tensor) and t.dim() == 0
        return out

    def counting_interpolate(*args):
        counts["interpolate"] += 1
        return interpolate(*args)

    monkeypatch.setattr(NoiseSchedule, "_cached", counting_cached)
    monkeypatch.setattr(schedule_module, "interpolate", counting_interpolate)
    spec = SOLVERS[solver]

    def run(at_least):
        counts.update(miss=0, interpolate=0)
        dpms.sample(lambda x, t: 0.1 * x, schedule, torch.randn(4, 2, dtype=torch.float64), solver=solver, nfe=spec.first_valid_nfe(at_least))
        return dict(counts)

    few, many = run(12), run(24)
    assert few == many, (few, many)
    assert few["miss"] <= 4  # the grid's own construction (λ of t_start, t_end)


def test_on_grid_serves_views_of_the_registered_grid_and_computes_anything_else():
    """The cache recognises a 0-d view of a registered grid (by storage and offset) and nothing else: a copy
    of a grid point, or a tensor in another dtype, is computed from the schedule."""
    schedule = NoiseSchedule.discrete_linear()
    ts = torch.linspace(1.0, 1e-3, 7, dtype=torch.float64)
    on = schedule.on_grid(ts)
    for i in range(7):
        assert on._cached("lambda", ts[i]) is not None
        assert torch.allclose(on.lambda_(ts[i]), schedule.lambda_(ts[i].clone()), rtol=1e-14, atol=0)
        assert on._cached("lambda", ts[i].clone()) is None and on._cached("alpha", ts[i].float()) is None
    assert on._cached("sigma", ts) is not None and on._cached("sigma", ts[1:]) is None


def test_a_new_solver_is_one_new_file(tmp_path, monkeypatch):
    """A module dropped into the sampler package is discovered: its solver is listed, runs with its NFE
    counted, and is in the default bench grids (configs/digits.yaml and configs/gmm.yaml say `solvers: default`)."""
    from pathlib import Path

    from dpms.bench.config import load_config

    (tmp_path / "zz_contract_probe.py").write_text(textwrap.dedent('''
        from dpms.sampler.registry import register, Steps
        from dpms.sampler.steps import ddim_step, eval_at

        @register("contract-probe", order=1, paper="test", plan=Steps(2))
        def probe(noise_fn, schedule, x, timesteps, gain: float = 1.0):
            for s, t in zip(timesteps[:-1], timesteps[1:]):
                eval_at(noise_fn, x, s)
                x = ddim_step(x, gain * eval_at(noise_fn, x, s), schedule, s, t)
            return x
    '''))
    monkeypatch.setattr(dpms.sampler, "__path__", [*dpms.sampler.__path__, str(tmp_path)])
    try:
        dpms.sampler._discover_solvers()
        spec = dpms.solvers()["contract-probe"]
        assert spec.options == {"gain": 1.0} and spec.rule == "NFE = 2·steps"
        gmm = GaussianMixture.default()
        _, info = dpms.sample(gmm, gmm.schedule, gmm.prior(2), solver="contract-probe", nfe=6, return_info=True)
        assert info.nfe == 6
        repo = Path(__file__).resolve().parents[1]
        for config in ("digits.yaml", "gmm.yaml"):
            assert "contract-probe" in [s.name for s in load_config(repo / "configs" / config).solvers]
        with pytest.raises(dpms.DpmsError, match="nearest valid: 6 or 8"):
            dpms.sample(gmm, gmm.schedule, gmm.prior(2), solver="contract-probe", nfe=7)
    finally:
        _REGISTRY.pop("contract-probe", None)
        import sys

        sys.modules.pop("dpms.sampler.zz_contract_probe", None)
