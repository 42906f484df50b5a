"""The solver registry: every sampler is a small function declared once, by `register`, in its own module.

A solver function has the signature

    solver(noise_fn, schedule, x, timesteps, [steps,] **options) -> Tensor

where `timesteps` is the decreasing time grid it integrates over (built by `dpms.sampler.grids`
from `skip`, the NFE and the solver's `NfePlan`) and `noise_fn(x, t)` predicts ε. It returns x at
timesteps[-1]. Solvers keep no state between calls. The parameters after `timesteps` are the user's
options (with their defaults), except the ones the machinery supplies: `steps`, the per-step plan of a
plan that makes one (`NfePlan.makes_steps`), and `randn`, the noise of a stochastic solver.

Every module of `dpms/sampler/` is imported by `dpms.sampler` (pkgutil), so a new solver is one new
file: its `@register(...)` declaration is what `dpms solvers`, `dpms sample`, the default bench grids,
the speed table and the shared contract tests (tests/test_solver_contract.py) read.

Schedule coefficients: `dpms.sample` hands the solver `schedule.on_grid(timesteps)`, on which α, σ, λ,
d log α/dt of the grid's points are precomputed; a solver that evaluates at other times (intermediate
points, stages) computes them for all steps at once and calls `schedule.on_grid(those)` before its loop
(the contract is stated in `NoiseSchedule.on_grid`, and tested for every registered solver).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from ..errors import DpmsError

# The first four parameters of every solver function (the protocol above); the rest are options.
PROTOCOL = ("noise_fn", "schedule", "x", "timesteps")


# ----------------------------------------------------------------------------------------- NFE plans
class NfePlan:
    """How an NFE budget becomes a time grid, and how many network calls a grid costs.

    `grid(nfe, make_grid, skip, options)` returns (timesteps, steps): the outer grid and, for plans
    with `makes_steps`, the per-step plan the solver receives as its `steps` argument (else None).
    `make_grid(k, start=t_start, end=t_end)` is the request's grid of k steps (on a sub-interval if asked).
    `explicit(timesteps, options)` is the per-step plan of a user-given grid. `nfe(timesteps, steps)`
    is the exact number of network calls of a run (None for adaptive plans), checked by `dpms.sample`.
    `options` are the plan's own user options with their defaults (e.g. singlestep's order_plan).
    """

    adaptive = False
    makes_steps = False
    options: Mapping[str, Any] = {}

    def rule(self) -> str:
        raise NotImplementedError

    def grid(self, nfe: int, make_grid, skip: str, options: dict) -> tuple[Tensor, Any]:
        raise NotImplementedError

    def explicit(self, timesteps: Tensor, options: dict) -> Any:
        return None

    def nfe(self, timesteps: Tensor, steps: Any) -> int | None:
        raise NotImplementedError


@dataclass(frozen=True)
class Steps(NfePlan):
    """NFE = calls_per_step · steps + extra_calls, with steps ≥ min_steps."""

    calls_per_step: int = 1
    extra_calls: int = 0
    min_steps: int = 1

    def rule(self) -> str:
        rule = "steps" if self.calls_per_step == 1 else f"{self.calls_per_step}·steps"
        return f"NFE = {rule}" + (f" + {self.extra_calls}" if self.extra_calls else "")

    def nfe_of_steps(self, steps: int) -> int:
        return self.calls_per_step * steps + self.extra_calls

    def grid(self, nfe: int, make_grid, skip: str, options: dict):
        steps, rest = divmod(nfe - self.extra_calls, self.calls_per_step)
        if rest or steps < self.min_steps:
            if steps < self.min_steps:
                near = [self.nfe_of_steps(self.min_steps)]
            else:
                near = sorted({self.nfe_of_steps(steps), self.nfe_of_steps(steps + 1)})
            raise DpmsError(f"NFE {nfe} is impossible ({self.rule()} with steps ≥ {self.min_steps}); nearest valid: {' or '.join(map(str, near))}")
        return make_grid(steps), None

    def nfe(self, timesteps: Tensor, steps: Any) -> int:
        return self.nfe_of_steps(len(timesteps) - 1)


@dataclass(frozen=True)
class Adaptive(NfePlan):
    """A solver that chooses its own steps: the NFE is reported, not requested."""

    adaptive = True

    def rule(self) -> str:
        return "adaptive (reported)"

    def nfe(self, timesteps: Tensor, steps: Any) -> None:
        return None


ADAPTIVE = Adaptive()


# ----------------------------------------------------------------------------------------- the spec
@dataclass(frozen=True)
class DiffusersEquivalent:
    """The diffusers scheduler that runs the same algorithm (for `dpms speed`'s comparison).

    options: its constructor options; a value LOWER_ORDER_FINAL_AS_DPMS is replaced by whether dpms's solver
    lowers the final orders at that NFE. inference_steps: NFE -> num_inference_steps (0: no such run).
    """

    scheduler: str
    options: Mapping[str, Any] = field(default_factory=dict)
    inference_steps: Callable[[int], int] = lambda nfe: nfe


LOWER_ORDER_FINAL_AS_DPMS = "as dpms"


@dataclass(frozen=True)
class SolverSpec:
    name: str
    fn: Callable
    order: float | None  # convergence order measured on the exact model (None: adaptive or stochastic)
    paper: str
    plan: NfePlan = Steps()
    order_note: str = ""  # why `order` is what it is, where it differs from the method's nominal order
    nfe_rule: str = ""  # `dpms solvers`' NFE rule (default: the plan's)
    default_skip: str | Callable = "logSNR"  # a skip name, or a function of the schedule giving one
    stochastic: bool = False
    data_prediction: bool = False  # integrates the data prediction x₀ (DPM-Solver++): thresholding applies
    default_grid: bool = True  # in the default bench grids (configs/digits.yaml, configs/gmm.yaml: `solvers: default`)
    diffusers: DiffusersEquivalent | None = None
    options: Mapping[str, Any] = field(default_factory=dict)  # user options and defaults (from fn and plan)
    # the λ-uniform step counts whose error ratio on the exact model measures `order` (tests/test_solver_contract.py)
    order_steps: tuple[int, int] = (48, 96)

    @property
    def adaptive(self) -> bool:
        return self.plan.adaptive

    @property
    def rule(self) -> str:
        return self.nfe_rule or self.plan.rule()

    @property
    def order_text(self) -> str:
        if self.order is None:
            return self.order_note or "-"
        return f"{self.order:g}" + (f" ({self.order_note})" if self.order_note else "")

    def skip_for(self, schedule) -> str:
        return self.default_skip(schedule) if callable(self.default_skip) else self.default_skip

    def first_valid_nfe(self, at_least: int) -> int:
        """The smallest NFE ≥ at_least that the solver's plan accepts with its default options."""
        def count_grid(k: int, *_):
            return torch.zeros(k + 1, dtype=torch.float64)

        for nfe in range(at_least, 4 * at_least + 13):
            try:
                self.plan.grid(nfe, count_grid, "logSNR", dict(self.plan.options))
                return nfe
            except DpmsError:
                continue
        raise DpmsError(f"solver {self.name!r} takes no NFE from {at_least} to {4 * at_least + 12}")

    def split_options(self, options: dict) -> tuple[dict, dict]:
        """(the plan's options with defaults, the solver function's options); an unknown name is one line."""
        unknown = [k for k in options if k not in self.options]
        if unknown:
            raise DpmsError(f"solver {self.name!r} has no option {unknown[0]!r}; its options: {', '.join(self.options) or 'none'}")
        plan_options = {k: options.get(k, v) for k, v in self.plan.options.items()}
        return plan_options, {k: v for k, v in options.items() if k not in self.plan.options}


def _function_options(name: str, fn: Callable, plan: NfePlan, stochastic: bool) -> dict:
    """The user options of a solver function: its parameters after the protocol's four, less those supplied."""
    params = list(inspect.signature(fn).parameters.values())
    if tuple(p.name for p in params[:4]) != PROTOCOL:
        raise RuntimeError(f"solver {name!r}: the first parameters must be {', '.join(PROTOCOL)}")
    supplied = {"steps"} if plan.makes_steps else set()
    supplied |= {"randn"} if stochastic else set()
    names = {p.name for p in params[4:]}
    if not supplied <= names:
        raise RuntimeError(f"solver {name!r} must take {', '.join(sorted(supplied - names))}")
    options = {p.name: p.default for p in params[4:] if p.name not in supplied}
    missing = [k for k, v in options.items() if v is inspect.Parameter.empty]
    if missing:
        raise RuntimeError(f"solver {name!r}: option {missing[0]!r} needs a default")
    return options


_REGISTRY: dict[str, SolverSpec] = {}


def register(name: str, *, order: float | None, paper: str, plan: NfePlan = Steps(), **spec):
    """Decorator: register `fn` under `name` with its SolverSpec fields (default plan: NFE = steps).

    `order` is the convergence order the solver attains on the exact model (the contract tests measure
    it); `order_note` says why where that differs from the method's nominal order."""

    def deco(fn):
        if name in _REGISTRY:
            raise RuntimeError(f"solver {name!r} registered twice")
        if order is not None and not isinstance(order, (int, float)):
            raise RuntimeError(f"solver {name!r}: order must be a number (put prose in order_note), got {order!r}")
        options = {**_function_options(name, fn, plan, spec.get("stochastic", False)), **plan.options}
        _REGISTRY[name] = SolverSpec(name=name, fn=fn, order=order, paper=paper, plan=plan, options=options, **spec)
        return fn

    return deco


def get_solver(name: str) -> SolverSpec:
    if name not in _REGISTRY:
        raise DpmsError(f"unknown solver {name!r}; valid solvers: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def solvers() -> dict[str, SolverSpec]:
    """All registered solvers, by name, in listing order (see `dpms.sampler`)."""
    return dict(_REGISTRY)


def default_grid() -> list[str]:
    """The solvers of the default bench grids, in listing order."""
    return [name for name, spec in _REGISTRY.items() if spec.default_grid]


def sort_registry(position: Callable[[SolverSpec], Any]) -> None:
    """Order the registry by `position` (stable: registration order within a position)."""
    ordered = sorted(_REGISTRY.values(), key=position)
    _REGISTRY.clear()
    _REGISTRY.update((spec.name, spec) for spec in ordered)
