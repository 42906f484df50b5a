"""Sampling: `sample()` runs any registered solver from x_T at t_start to t_end.

    x_0 = dpms.sample(noise_fn, schedule, x_T, solver="dpm3", nfe=10)

`noise_fn(x, t)` predicts ε at continuous times t (a 1-D tensor, one per sample). Every solver makes
exactly `nfe` network calls (checked here by counting them), or `sample` raises a one-line error
that names the valid NFE values. Adaptive solvers (dpm12, dpm23, rk45) choose their own steps and
report the NFE they used in the returned `SampleInfo`.

Three options of `sample` apply to every solver (SAMPLE_OPTIONS); the NFE counts the calls they add or save:

* ``rho`` — the ρ of the ``karras`` grid (EDM's, default 7; `grids.py`).
* ``afs=True`` — the analytical first step of Zhou et al. 2024 (zju-pi diff-sampler): the first
  network call, at (x_T, t_start), is not made; ε = x_T is used instead (in EDM's σ-parametrization
  d = x/√(1 + σ²), the noise prediction of data concentrated at 0, which a large σ makes accurate).
  It saves one call: NFE = the solver's calls − 1. Every later use of that ε (a multistep solver's
  history) sees x_T, as in diff-sampler.
* ``denoise_to_zero=True`` — after the solver reaches t_end, one more call there and return the data
  prediction x̂₀ = (x − σ ε)/α (the official DPM-Solver code's `denoise_to_zero`, diff-sampler's
  option of that name). NFE = the solver's calls + 1. This is also EDM's last step: EDM's sampler
  (`edm_sampler`, S_churn = 0) takes N − 1 Heun steps down its ρ = 7 grid to σ_min and then one
  Euler step to σ = 0, x + (0 − σ)(x − D)/σ = D(x, σ_min), i.e. exactly the data prediction at
  σ_min. So EDM's 18-point sampler is `solver="heun", skip="karras", nfe=35, denoise_to_zero=True`
  (17 Heun steps of 2 calls + 1).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import DpmsError, NonFiniteError
from ..schedule import NoiseSchedule
from . import protocols
from .grids import DEFAULT_RHO, SKIP_TYPES, make_grid
from .registry import SolverSpec, default_grid, get_solver, solvers, sort_registry  # noqa: F401
from .runge_kutta import ode_reference
from .steps import eval_at, to_data


def _discover_solvers() -> None:
    """Import every module of this package (each registers its solvers), then order the registry by the
    modules' LISTING_POSITION (default 50: after the DPM-Solver, Runge–Kutta and PNDM families, before the
    stochastic baselines), registration order within a module."""
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")
    sort_registry(lambda spec: getattr(sys.modules[spec.fn.__module__], "LISTING_POSITION", 50))


_discover_solvers()

__all__ = ["sample", "validate", "solvers", "default_grid", "SampleInfo", "SKIP_TYPES", "make_grid", "ode_reference", "per_sample_randn", "SolverSpec", "PROTOCOLS",
           "SAMPLE_OPTIONS", "extra_calls"]

SAMPLE_OPTIONS = ("rho", "afs", "denoise_to_zero")  # options of `sample` itself, valid with every solver

PROTOCOLS = protocols.PROTOCOLS


@dataclass
class SampleInfo:
    solver: str
    nfe: int  # network calls actually made
    skip: str
    timesteps: Tensor  # the (outer) grid the solver stepped over (with a protocol: the states' times, 0 for ᾱ = 1)
    protocol: str | None = None  # a codebase's loop (dpms.sampler.protocols), or None: dpms's own grid


class CountingNoiseFn:
    """Counts network calls, and remembers whether any prediction was non-finite.

    Each call keeps one boolean on the device, whether every entry of its prediction is finite (checked in
    the prediction's own dtype: a float32 sum would flag a huge finite float64 prediction as inf): one
    reduction per call and no host synchronisation inside the sampling loop. `raise_if_non_finite` reads
    them once, after the loop. Adaptive solvers synchronise every step anyway (to accept or reject it) and
    a NaN error estimate would never be accepted, so with `eager=True` each call is checked at once.
    """

    def __init__(self, noise_fn, check_finite: bool, eager: bool = False):
        self.noise_fn = noise_fn
        self.calls = 0
        self.check_finite = check_finite
        self.eager = eager
        self._finite: list[Tensor] = []
        self._times: list[Tensor] = []

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        eps = self.noise_fn(x, t)
        if self.check_finite:
            self._finite.append(torch.isfinite(eps).all())
            self._times.append(t)
            if self.eager and not bool(self._finite[-1]):
                self.raise_if_non_finite()
        return eps

    def raise_if_non_finite(self) -> None:
        if not self._finite:
            return
        finite = torch.stack(self._finite)
        if bool(finite.all()):
            return
        first = int((~finite).nonzero()[0, 0])
        raise NonFiniteError(
            f"the network returned NaN/inf at call {first + 1} of {self.calls} (t={float(self._times[first].reshape(-1)[0]):.4g}): "
            "the solver diverged (try more NFE or another solver) or the network fails at this precision (try --dtype fp32)"
        )


def raise_if_non_finite_samples(x: Tensor, solver: str, nfe) -> None:
    """A sample with NaN/inf is never returned: finite ε can still give a non-finite x (an overflowing
    step, a σ or α outside the schedule), and a NaN image would be written as a black one."""
    finite = torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise NonFiniteError(f"{bad} of {x.shape[0]} samples of solver {solver!r} at NFE {nfe} are NaN/inf; "
                             "nothing of them is kept: try more NFE, another solver or the default --t-end")


class AnalyticFirstStep:
    """`afs`: the first call returns ε = x (diff-sampler's d = x/√(1 + σ²) in VP variables, since
    x/α is EDM's x and 1/√(1 + σ²) = α); later calls go to the network."""

    def __init__(self, noise_fn):
        self.noise_fn = noise_fn
        self.first = True

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        if self.first:
            self.first = False
            return x.clone()
        return self.noise_fn(x, t)


def extra_calls(afs: bool = False, denoise_to_zero: bool = False) -> int:
    """Network calls the NFE has beyond the solver's own: −1 for `afs`, +1 for `denoise_to_zero`."""
    return int(bool(denoise_to_zero)) - int(bool(afs))


def _check_sample_options(rho, afs, denoise_to_zero) -> None:
    for name, value in (("afs", afs), ("denoise_to_zero", denoise_to_zero)):
        if not isinstance(value, bool):
            raise DpmsError(f"{name} must be true or false, got {value!r}")
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not rho > 0:
        raise DpmsError(f"rho must be a positive number (EDM uses 7), got {rho!r}")


def per_sample_randn(seeds, device=None, dtype=None):
    """A `randn(x)` for stochastic solvers giving sample i its own generator seeded with seeds[i],
    so a sample's noise does not depend on the batch it is drawn in."""
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def randn(x: Tensor) -> Tensor:
        if x.shape[0] != len(generators):
            raise ValueError(f"batch of {x.shape[0]} samples but {len(generators)} seeds")
        z = torch.stack([torch.randn(x.shape[1:], generator=g, dtype=torch.float64) for g in generators])
        return z.to(device=x.device, dtype=x.dtype)

    return randn


def _check_option_types(spec: SolverSpec, options: dict) -> None:
    """A numeric option (rtol, max_nfe, ...) given something else (--option rtol=abc) is one line, not a
    TypeError deep in the solver. String-valued options (order_plan, lower_order_final) the solver checks."""
    for key, value in options.items():
        default = spec.options.get(key)
        if isinstance(default, bool) or not isinstance(default, (int, float)):
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or (isinstance(default, int) and not float(value).is_integer()):
            kind = "an integer" if isinstance(default, int) else "a number"
            raise DpmsError(f"solver {spec.name!r} option {key} takes {kind} (default {default!r}), got {value!r}")


def _prepare(spec: SolverSpec, schedule, dtype, device, nfe, skip, t_start, t_end, timesteps, options, rho=DEFAULT_RHO, afs=False, denoise_to_zero=False, protocol=None):
    """Validate a request and build the time grid: every check happens here, before any network call.

    Returns (timesteps, skip, the solver function's keyword arguments, the codebase plan): its options,
    plus `steps` where the solver's plan makes a per-step plan; the last is None without a protocol."""
    plan_options, options = spec.split_options(options)
    _check_sample_options(rho, afs, denoise_to_zero)
    _check_option_types(spec, {**plan_options, **options})
    if not dtype.is_floating_point:
        raise DpmsError(f"x_T must be a floating-point tensor, got {dtype}")
    if protocol is not None:
        if afs or denoise_to_zero:
            raise DpmsError(f"protocol {protocol!r} runs a codebase's loop as it is; drop afs/denoise_to_zero")
        return _prepare_protocol(spec, schedule, dtype, device, nfe, skip, t_start, t_end, timesteps, plan_options, options, protocol)
    if timesteps is not None:
        ts = torch.as_tensor(timesteps, dtype=torch.float64).to(dtype=dtype, device=device)
        if ts.dim() != 1 or len(ts) < 2 or not bool((ts[1:] < ts[:-1]).all()):
            raise DpmsError("timesteps must be a 1-D strictly decreasing sequence of at least 2 times")
        schedule.check_times(float(ts[0]), float(ts[-1]), what="timesteps[-1]")
        return ts, "explicit", _with_steps(spec, options, spec.plan.explicit(ts, plan_options)), None
    t_start = schedule.T if t_start is None else float(t_start)
    t_end = schedule.t_end if t_end is None else float(t_end)
    schedule.check_times(t_start, t_end)
    skip = skip or spec.skip_for(schedule)
    if skip not in SKIP_TYPES:
        raise DpmsError(f"unknown skip type {skip!r}; use one of {', '.join(SKIP_TYPES)}")
    if spec.adaptive:
        return torch.tensor([t_start, t_end], dtype=dtype, device=device), skip, options, None
    if nfe is None or int(nfe) < 1:
        raise DpmsError(f"solver {spec.name!r} needs a positive NFE (--nfe), got {nfe}")

    def grid(steps: int, start: float = t_start, end: float = t_end) -> Tensor:
        return make_grid(schedule, skip, steps, start, end, dtype, device, rho=rho)

    extra = extra_calls(afs, denoise_to_zero)
    try:
        ts, steps = spec.plan.grid(int(nfe) - extra, grid, skip, plan_options)
    except DpmsError as e:
        if not extra:
            raise DpmsError(f"solver {spec.name!r}: {e}") from None
        raise DpmsError(f"solver {spec.name!r}: {_impossible_with_extra(spec, int(nfe), extra, grid, skip, plan_options)}") from None
    return ts, skip, _with_steps(spec, options, steps), None


def _prepare_protocol(spec, schedule, dtype, device, nfe, skip, t_start, t_end, timesteps, plan_options, options, protocol):
    """A codebase's loop: the solver's own NFE plan over that codebase's index list (dpms.sampler.protocols)."""
    protocols.check_request(protocol, spec.name, schedule, t_start, t_end, timesteps)
    skip = skip or "discrete_uniform"
    if nfe is None or int(nfe) < 1:
        raise DpmsError(f"solver {spec.name!r} needs a positive NFE (--nfe), got {nfe}")
    plans = []

    def grid(steps: int, *_) -> Tensor:
        plans.append(protocols.plan(protocol, schedule, skip, steps, dtype, device))
        return plans[-1].timesteps

    try:
        ts, steps = spec.plan.grid(int(nfe), grid, skip, plan_options)
    except DpmsError as e:
        raise DpmsError(f"solver {spec.name!r} with protocol {protocol!r}: {e}") from None
    return ts, skip, _with_steps(spec, options, steps), plans[-1]


def _impossible_with_extra(spec: SolverSpec, nfe: int, extra: int, grid, skip: str, plan_options: dict) -> str:
    """The one-line error of an impossible NFE when afs or denoise_to_zero shift the solver's own calls."""

    def valid(n: int) -> bool:
        try:
            spec.plan.grid(n - extra, grid, skip, plan_options)
            return n >= 1
        except DpmsError:
            return False

    below = next((n for n in range(nfe - 1, 0, -1) if valid(n)), None)
    above = next((n for n in range(nfe + 1, nfe + 64) if valid(n)), None)
    near = " or ".join(str(n) for n in (below, above) if n is not None) or "none"
    shift = "one call fewer with afs" if extra < 0 else "one call more with denoise_to_zero"
    return f"NFE {nfe} is impossible ({spec.rule}, {shift}); nearest valid: {near}"


def _with_steps(spec: SolverSpec, options: dict, steps) -> dict:
    return {**options, "steps": steps} if spec.plan.makes_steps else options


def validate(
    solver: str, schedule: NoiseSchedule, nfe: int | None = 10, skip=None, t_start=None, t_end=None, timesteps=None,
    rho: float = DEFAULT_RHO, afs: bool = False, denoise_to_zero: bool = False, protocol=None, **options,
) -> None:
    """Raise the one-line DpmsError that `sample` would raise for these settings, without sampling."""
    _prepare(get_solver(solver), schedule, torch.float64, "cpu", nfe, skip, t_start, t_end, timesteps, dict(options), rho, afs, denoise_to_zero, protocol)


def sample(
    noise_fn,
    schedule: NoiseSchedule,
    x_T: Tensor,
    solver: str = "dpm3",
    nfe: int | None = 10,
    skip: str | None = None,
    t_start: float | None = None,
    t_end: float | None = None,
    timesteps=None,
    return_info: bool = False,
    seed: int = 0,
    seeds=None,
    check_finite: bool = True,
    rho: float = DEFAULT_RHO,
    afs: bool = False,
    denoise_to_zero: bool = False,
    protocol: str | None = None,
    **options,
):
    """Integrate from x_T at t_start (default schedule.T) to t_end (default schedule.t_end).

    solver: a name from `solvers()`; nfe: network evaluations (ignored by adaptive solvers);
    skip: time grid (`logSNR`, `time_uniform`, `time_quadratic`, `discrete_uniform`,
    `discrete_quadratic`, `karras`; default: the solver's paper's choice); rho: the karras grid's ρ;
    timesteps: an explicit decreasing grid instead (its first and last entries are t_start and t_end);
    seed/seeds: noise of stochastic solvers (seeds: one per sample; default seed + sample index);
    afs: analytical first step (one call fewer); denoise_to_zero: return the data prediction at t_end
    (one call more; see the module docstring); protocol: "ddim-code" or "pndm-code"
    runs that codebase's own loop instead of dpms's grid (dpms.sampler.protocols); options: solver options (e.g. order_plan="fixed",
    rtol=..., lower_order_final=False).
    Returns the samples (x at t_end, or x̂₀ with denoise_to_zero), or (samples, SampleInfo) with
    return_info=True.
    """
    spec = get_solver(solver)
    if getattr(noise_fn, "thresholding", None) and not spec.data_prediction:
        pp = ", ".join(n for n, s in solvers().items() if s.data_prediction)
        raise DpmsError(f"thresholding clips the data prediction, which solver {solver!r} does not use; use one of {pp}, or no thresholding")
    ts, skip, options, codebase = _prepare(spec, schedule, x_T.dtype, x_T.device, nfe, skip, t_start, t_end, timesteps, dict(options), rho, afs, denoise_to_zero, protocol)
    if spec.stochastic:
        options["randn"] = per_sample_randn(seeds if seeds is not None else [seed + i for i in range(x_T.shape[0])])
    counted = CountingNoiseFn(noise_fn, check_finite, eager=spec.adaptive)
    with torch.inference_mode():
        # α, σ, λ of every grid point computed once; the solver still sees only a NoiseSchedule.
        on_grid = codebase.schedule if codebase else schedule.on_grid(ts)
        x = spec.fn(AnalyticFirstStep(counted) if afs else counted, on_grid, x_T, ts, **options)
        if denoise_to_zero:
            x = to_data(x, eval_at(counted, x, ts[-1]), on_grid, ts[-1])
    counted.raise_if_non_finite()
    if check_finite:
        raise_if_non_finite_samples(x, solver, nfe)
    planned = spec.plan.nfe(ts, options.get("steps"))
    if planned is not None:
        planned += extra_calls(afs, denoise_to_zero)
    if planned is not None and counted.calls != planned:
        raise RuntimeError(f"internal error: solver {solver!r} made {counted.calls} network calls, its plan {planned}")
    info = SampleInfo(solver=solver, nfe=counted.calls, skip=skip, timesteps=codebase.state_times if codebase else ts, protocol=protocol)
    return (x, info) if return_info else x
