"""The solver registry: every sampler is a small function registered by name.

A solver function has the signature

    solver(noise_fn, schedule, x, timesteps, **options) -> Tensor

where `timesteps` is the decreasing time grid it integrates over (built by `dpms.sampler.grids`
from `skip`, the NFE and the solver's NFE rule) and `noise_fn(x, t)` predicts ε. It returns x at
timesteps[-1]. Solvers keep no state between calls.

`SolverSpec` records, per solver, how an NFE budget becomes a number of grid steps (and which
budgets are possible), its order, default grid and the paper it comes from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..errors import DpmsError


@dataclass(frozen=True)
class SolverSpec:
    name: str
    fn: Callable
    order: str  # convergence order, as text ("3", "adaptive 2/3", "1 (weak)")
    nfe_rule: str  # human-readable NFE rule for `dpms solvers`
    paper: str
    # plan(nfe, make_grid, skip, **options) -> (timesteps, extra solver options); None: adaptive solver.
    # make_grid(steps, start=t_start, end=t_end) is the request's grid of `steps` steps (on a sub-interval if asked).
    plan: Callable | None = None
    default_skip: str | Callable = "logSNR"  # a skip name, or a function of the schedule giving one
    stochastic: bool = False
    data_prediction: bool = False  # integrates the data prediction x₀ (DPM-Solver++): thresholding applies
    options: dict = field(default_factory=dict)  # documented option defaults, for `dpms solvers`

    @property
    def adaptive(self) -> bool:
        return self.plan is None

    def skip_for(self, schedule) -> str:
        return self.default_skip(schedule) if callable(self.default_skip) else self.default_skip


def steps_plan(calls_per_step: int = 1, extra_calls: int = 0, min_steps: int = 1):
    """The plan of a fixed-step solver whose NFE is calls_per_step · steps + extra_calls."""

    def nfe_of(steps: int) -> int:
        return calls_per_step * steps + extra_calls

    def plan(nfe: int, make_grid, skip: str, **_):
        steps, rest = divmod(nfe - extra_calls, calls_per_step)
        if rest or steps < min_steps:
            if steps < min_steps:
                near = [nfe_of(min_steps)]
            else:
                near = sorted({nfe_of(steps), nfe_of(steps + 1)})
            rule = f"{calls_per_step}·steps" + (f" + {extra_calls}" if extra_calls else "")
            raise DpmsError(
                f"NFE {nfe} is impossible (NFE = {rule} with steps ≥ {min_steps}); "
                f"nearest valid: {' or '.join(map(str, near))}"
            )
        return make_grid(steps), {}

    return plan


_REGISTRY: dict[str, SolverSpec] = {}


ADAPTIVE = None  # plan of a solver that chooses its own steps (NFE reported, not requested)


def register(name: str, plan: Callable | None = steps_plan(), **spec):
    """Decorator: register `fn` under `name` with its SolverSpec fields (default plan: NFE = steps)."""

    def deco(fn):
        if name in _REGISTRY:
            raise RuntimeError(f"solver {name!r} registered twice")
        _REGISTRY[name] = SolverSpec(name=name, fn=fn, plan=plan, **spec)
        return fn

    return deco


def get_solver(name: str) -> SolverSpec:
    if name not in _REGISTRY:
        raise DpmsError(f"unknown solver {name!r}; valid solvers: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def solvers() -> dict[str, SolverSpec]:
    """All registered solvers, by name, in registration order."""
    return dict(_REGISTRY)
