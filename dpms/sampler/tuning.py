"""Tuned time grids: the grid of one solver at one NFE, chosen for one model (GITS) or one schedule (DMN).

* ``gits`` (Chen et al. 2024, "On the Trajectory Regularity of ODE-based Diffusion Sampling"): a fine
  candidate grid of `candidates` steps on the solver's default skip; teacher trajectories through it from
  a high-accuracy solve (`teacher` with `teacher_substeps` sub-steps per candidate interval, or "ode": the
  DOP853 reference); a cost matrix C[i, j] = mean over samples of ‖step(x_i) − x_j‖₂, where step is the
  solver's own one step from the teacher's state x_i at candidate t_i to candidate t_j; and the path
  0 = p_0 < p_1 < … < p_S = n with exactly S steps minimising C[p_0, p_1] + c·C[p_1, p_2] + c²·C[p_2, p_3] + …
  by dynamic programming (c: GITS's `coeff`, 1.15 in its code, the value that scales each later step's
  cost relative to the path before it).

  History of multistep solvers: a step's error depends on the points before it, which a pairwise cost
  matrix cannot see. As GITS does (its costs are Euler steps from the teacher's state with the teacher's
  ε, whatever the student solver), each edge is costed with no history: the solver run for one step from
  the teacher's state, i.e. its own first, lowest-order step. For every tunable solver that first step is
  DDIM's (= DPM-Solver-1 = DPM-Solver++(1) = UniP-1 = DEIS order 0 = iPNDM's Euler step in σ): the DP's
  grid then differs between solvers only through the candidate grid (the solver's default skip) and its
  options. It is optimal for that surrogate; whether it helps the full multistep solver is measured, not
  assumed (benchmarks/tune_grids.py, on held-out x_T), and `refine` tunes on the full solver's error.

* ``dmn`` (Xue et al. 2024, "Accelerating Diffusion Sampling with Optimized Time Steps"; scxue/DM-NonUniform
  `step_optim.py`): no network call. The interior λ's minimise a bound on the accumulated error of a
  data-prediction multistep solver (orders 1, 2, 3, …, 3, 2, 1): each step's Lagrange weights of the data
  prediction at its nodes, integrated against e^λ over the step, times a per-node error proxy σ²/α
  (`power`=2; DMN reports σ/α, `power`=1, as better for pixel-space models); the first `trunc` steps add the
  root-sum-square of their terms, later ones add signed terms per node whose absolute values are summed.
  Minimised by scipy's trust-constr under λ_T ≤ λ_1 ≤ … ≤ λ_ε from the uniform-λ grid (DMN's "unif").

Only solvers with one network call per step (NFE = steps; `is_tunable` reads it off the solver's NfePlan)
are tuned: their grid of NFE + 1 points is all a run needs. A tuned grid is stored as a JSON file (`TunedGrid`) that `dpms sample/bench/speed --timesteps`
read back.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ..errors import DpmsError
from ..schedule import NoiseSchedule
from .grids import SKIP_TYPES, make_grid
from .registry import SolverSpec, Steps, get_solver, solvers

METHODS = ("gits", "dmn")
GRID_FORMAT = "dpms-tuned-grid"
GITS_COEFF = 1.15  # GITS's default (its launch flags and README)


# ----------------------------------------------------------------------------------------- the file
@dataclass
class TunedGrid:
    """A tuned grid and how it was made: what `dpms tune-grid --out` writes."""

    model: str
    schedule: str
    solver: str
    nfe: int
    method: str
    timesteps: list[float]  # decreasing continuous times, t_start first, t_end last (NFE + 1 of them)
    cost: float  # the minimised objective: GITS's weighted path cost, or DMN's bound
    settings: dict = field(default_factory=dict)
    report: dict = field(default_factory=dict)  # more figures: unweighted path cost, default grid's cost, …
    format: str = GRID_FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"

    @classmethod
    def read(cls, path: str | Path) -> "TunedGrid":
        """Read a grid file; a missing, unreadable or foreign file is a one-line DpmsError."""
        path = Path(path)
        if not path.is_file():
            raise DpmsError(f"grid file {path} not found; make one with `dpms tune-grid --out {path}`")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DpmsError(f"grid file {path} is not readable JSON ({e}); make one with `dpms tune-grid`") from None
        if not isinstance(data, dict) or data.get("format") != GRID_FORMAT:
            raise DpmsError(f"{path} is not a dpms tuned-grid file (no \"format\": \"{GRID_FORMAT}\"); make one with `dpms tune-grid`")
        try:
            grid = cls(**data)
            ts = [float(t) for t in grid.timesteps]
        except (TypeError, ValueError) as e:
            raise DpmsError(f"grid file {path} is malformed ({e}); make it again with `dpms tune-grid`") from None
        if len(ts) != int(grid.nfe) + 1 or any(b >= a for a, b in zip(ts, ts[1:])):
            raise DpmsError(f"grid file {path}: its timesteps must be NFE + 1 = {int(grid.nfe) + 1} strictly decreasing times")
        grid.timesteps = ts
        return grid

    def write(self, path: str | Path, overwrite: bool = False) -> None:
        from ..atomic import atomic_write_text

        path = Path(path)
        if path.exists() and not overwrite:
            raise DpmsError(f"{path} exists; choose another --out or pass --force")
        atomic_write_text(path, self.to_json())

    def check_matches(self, model: str, solver: str, nfe: int | None, where: str = "--timesteps") -> None:
        """Refuse a grid tuned for another model, solver or NFE (one line naming the mismatch)."""
        for what, mine, theirs in (("model", self.model, model), ("solver", self.solver, solver), ("NFE", self.nfe, nfe)):
            if mine != theirs:
                raise DpmsError(f"{where}: the grid was tuned for {what} {mine!r}, not {theirs!r} (model {self.model}, "
                                f"solver {self.solver}, NFE {self.nfe}); tune one with `dpms tune-grid --model {model} "
                                f"--solver {solver} --nfe {nfe}`")

    def tensor(self, dtype=torch.float64, device="cpu") -> Tensor:
        return torch.tensor(self.timesteps, dtype=torch.float64).to(dtype=dtype, device=device)


def load_grid(path, model: str, solver: str, nfe: int | None, where: str = "--timesteps") -> TunedGrid:
    """Read a grid file and refuse one tuned for another model, solver or NFE (one line each)."""
    grid = TunedGrid.read(path)
    grid.check_matches(model, solver, nfe, where)
    return grid


# --------------------------------------------------------------------------------- common checks
def is_tunable(spec: SolverSpec) -> bool:
    """Read off the solver's NfePlan: a deterministic `Steps` plan of one network call per step and no extra
    call (NFE = steps; ddim, dpm*m, dpmpp*m, ipndm, ipndm-v, unipc1-3, deis1-3, ...), whose whole run is a grid
    of NFE + 1 times and whose single step (a 2-point grid) is its own first, lowest-order step. Singlestep,
    Runge–Kutta, PNDM-type, adaptive and stochastic solvers are not: their grid is not all a run chooses."""
    plan = spec.plan
    return (not spec.stochastic and isinstance(plan, Steps) and not plan.makes_steps
            and (plan.calls_per_step, plan.extra_calls, plan.min_steps) == (1, 0, 1))


def tunable_solvers() -> list[str]:
    """The registered solvers `is_tunable` accepts, in listing order."""
    return [name for name, spec in solvers().items() if is_tunable(spec)]


def check_tunable(solver: str, nfe: int, method: str) -> SolverSpec:
    spec = get_solver(solver)
    if method not in METHODS:
        raise DpmsError(f"unknown --method {method!r}; use one of {', '.join(METHODS)}")
    ok = tunable_solvers()
    if solver not in ok:
        raise DpmsError(f"solver {solver!r} cannot be tuned (only solvers with one network call per step, NFE = steps): {', '.join(ok)}")
    if nfe is None or int(nfe) < 2:
        raise DpmsError(f"a tuned grid needs NFE ≥ 2 (one step has no interior time to choose), got {nfe}")
    return spec


# ------------------------------------------------------------------------------------------ GITS
class _FirstCallCached:
    """The noise function, except at the teacher's own state x_i (recognised by identity), where the
    teacher's ε_i is returned instead of a second, identical network call."""

    def __init__(self, noise_fn, x: Tensor, eps: Tensor):
        self.noise_fn, self.x, self.eps = noise_fn, x, eps

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        return self.eps if x is self.x else self.noise_fn(x, t)


def teacher_trajectory(noise_fn, schedule: NoiseSchedule, x_T: Tensor, ts: Tensor, teacher: str = "dpm3", substeps: int = 4,
                       advance: Callable[[], None] | None = None) -> list[Tensor]:
    """x at every candidate time ts[k], from x_T at ts[0], by a high-accuracy solve of each interval:
    `substeps` uniform-λ steps of solver `teacher`, or (teacher="ode") the DOP853 reference (rtol=atol=1e-8)."""
    from . import sample
    from .runge_kutta import ode_reference

    states = [x_T]
    x = x_T
    for k in range(len(ts) - 1):
        if teacher == "ode":
            x = ode_reference(noise_fn, schedule, x, float(ts[k]), float(ts[k + 1]), rtol=1e-8, atol=1e-8)
        else:
            sub = make_grid(schedule, "logSNR", substeps, float(ts[k]), float(ts[k + 1]), x.dtype, x.device)
            x = sample(noise_fn, schedule, x, solver=teacher, timesteps=sub)
        states.append(x)
        if advance:
            advance()
    return states


def gits_cost_matrix(spec: SolverSpec, noise_fn, schedule: NoiseSchedule, ts: Tensor, states: list[Tensor], eps: list[Tensor],
                     options: dict | None = None, advance: Callable[[], None] | None = None) -> np.ndarray:
    """C[i, j] (i < j): mean over samples of the L2 distance between the solver's one step from the teacher's
    state at ts[i] to ts[j] and the teacher's state at ts[j]; +inf where j ≤ i."""
    n = len(ts) - 1
    cost = np.full((n + 1, n + 1), np.inf)
    options = options or {}
    with torch.inference_mode():
        for i in range(n):
            cached = _FirstCallCached(noise_fn, states[i], eps[i])
            for j in range(i + 1, n + 1):
                pair = torch.stack([ts[i], ts[j]])
                x = spec.fn(cached, schedule.on_grid(pair), states[i], pair, **options)
                cost[i, j] = float((x - states[j]).flatten(1).norm(dim=1).mean())
            if advance:
                advance()
    return cost


def dp_path(cost: np.ndarray, steps: int, coeff: float = GITS_COEFF) -> tuple[list[int], float]:
    """The path 0 = p_0 < … < p_steps = n minimising Σ_k coeff^k · cost[p_k, p_{k+1}] (GITS's `dp`), and that sum.

    V_k[j] is the least cost of reaching n from j in exactly k steps: V_1[j] = cost[j, n],
    V_k[j] = min_{i > j} cost[j, i] + coeff · V_{k-1}[i].
    """
    n = cost.shape[0] - 1
    if steps > n:
        raise DpmsError(f"cannot choose {steps} steps from a candidate grid of {n} steps; use more candidates")
    if not coeff > 0:
        raise DpmsError(f"the GITS coefficient must be positive, got {coeff}")
    value = cost[:, n].copy()
    choices = []
    for _ in range(2, steps + 1):
        total = cost[:, :n] + coeff * value[None, :n]
        best = np.argmin(total, axis=1)
        value = total[np.arange(n + 1), best]
        choices.append(best)
    path = [0]
    for best in reversed(choices):
        path.append(int(best[path[-1]]))
    path.append(n)
    return path, float(value[0])


def path_cost(cost: np.ndarray, path: list[int], coeff: float = 1.0) -> float:
    return float(sum(coeff**k * cost[a, b] for k, (a, b) in enumerate(zip(path, path[1:]))))


@dataclass
class GitsResult:
    timesteps: Tensor
    path: list[int]
    cost: float  # weighted (coeff) cost of the path, the DP's objective
    unweighted_cost: float
    cost_matrix: np.ndarray
    candidates: Tensor
    dp_path: list[int]  # the DP's path, before refinement
    teacher_error: dict = field(default_factory=dict)  # the full solver's error to the teacher's x at t_end: "dp", "refined"


def gits(noise_fn, schedule: NoiseSchedule, x_T: Tensor, solver: str, nfe: int, candidates: int = 60, skip: str | None = None,
         coeff: float = GITS_COEFF, teacher: str = "dpm3", teacher_substeps: int = 4, t_start: float | None = None,
         t_end: float | None = None, options: dict | None = None, refine: int = 0,
         progress: Callable[[str, int], Callable[[], None]] | None = None, teacher_cache: dict | None = None) -> GitsResult:
    """GITS: the minimum-cost grid of `nfe` steps among `candidates` + 1 candidate times (see the module docstring).

    refine: sweeps of coordinate descent after the DP (0: GITS as published). Each moves every interior
    point among the candidates between its neighbours to lower the *full* solver's mean L2 error to the
    teacher's x at t_end on these x_T: the multistep history the pairwise costs cannot see is then seen.
    progress(description, total) -> advance(): called once per phase (teacher, cost matrix, refinement).
    teacher_cache: a dict the caller keeps for one noise_fn and x_T; the teacher trajectory depends only on the
    candidate grid and the teacher, not on the solver or NFE, so tunings of several solvers share it.
    """
    spec = check_tunable(solver, nfe, "gits")
    _, options = spec.split_options(dict(options or {}))  # an unknown option: one line, before any call (Steps has no plan options)
    if teacher != "ode":
        get_solver(teacher)
    if candidates < nfe:
        raise DpmsError(f"GITS needs at least NFE = {nfe} candidate steps, got {candidates}")
    if teacher_substeps < 1:
        raise DpmsError(f"teacher_substeps must be ≥ 1, got {teacher_substeps}")
    skip = skip or spec.skip_for(schedule)
    if skip not in SKIP_TYPES:
        raise DpmsError(f"unknown skip type {skip!r}; use one of {', '.join(SKIP_TYPES)}")
    t_start = schedule.T if t_start is None else float(t_start)
    t_end = schedule.t_end if t_end is None else float(t_end)
    ts = make_grid(schedule, skip, candidates, t_start, t_end, x_T.dtype, x_T.device)
    none = lambda *_: (lambda: None)  # noqa: E731
    progress = progress or none
    key = (skip, candidates, t_start, t_end, teacher, teacher_substeps)
    if teacher_cache is not None and key in teacher_cache:
        states, eps = teacher_cache[key]
    else:
        with torch.inference_mode():
            states = teacher_trajectory(noise_fn, schedule, x_T, ts, teacher, teacher_substeps, progress(f"teacher ({teacher})", candidates))
            eps = [noise_fn(x, t.expand(x.shape[0])) for x, t in zip(states[:-1], ts[:-1])]
        if teacher_cache is not None:
            teacher_cache[key] = (states, eps)
    cost = gits_cost_matrix(spec, noise_fn, schedule, ts, states, eps, options, progress(f"cost matrix ({solver})", candidates))
    first, weighted = dp_path(cost, nfe, coeff)
    target = states[-1]

    def run(p: list[int]) -> float:
        from . import sample

        x = sample(noise_fn, schedule, x_T, solver=solver, timesteps=ts[p], **(options or {}))
        return float((x - target).flatten(1).norm(dim=1).mean())

    errors = {"dp": run(first)}
    path = first
    if refine:
        path, errors["refined"] = refine_path(run, first, int(refine), progress("refinement (full solver)", int(refine)))
    grid = ts[path].to(torch.float64).cpu()
    grid[0], grid[-1] = t_start, t_end
    return GitsResult(grid, path, path_cost(cost, path, coeff), path_cost(cost, path), cost, ts.to(torch.float64).cpu(), first, errors)


# ------------------------------------------------------------------------------------------- DMN
def _h_functions(h: float) -> tuple[float, float, float]:
    """H₀ = e^h − 1, H₁ = h e^h − H₀, H₂ = h² e^h − 2H₁: ∫₀^h e^u u^k du for k = 0, 1, 2 (up to e^{λ_n} factors)."""
    h0 = math.expm1(h)
    h1 = h * math.exp(h) - h0
    h2 = h * h * math.exp(h) - 2.0 * h1
    return h0, h1, h2


def dmn_objective(lambdas: np.ndarray, trunc: int = 3, power: float = 2.0) -> float:
    """DMN's error bound of the λ-grid `lambdas` (λ_T first, λ_ε last; see the module docstring)."""
    lam = np.asarray(lambdas, dtype=np.float64)
    steps = len(lam) - 1
    h = np.diff(lam)
    e_lam = np.exp(lam)
    alpha = 1.0 / np.sqrt(1.0 + np.exp(-2.0 * lam))
    sigma = 1.0 / np.sqrt(1.0 + np.exp(2.0 * lam))
    node_err = sigma**power / alpha  # the error proxy of the data prediction at each node
    independent = 0.0
    coherent = np.zeros(steps + 1)
    for s in range(steps):
        if s in (0, steps - 1):  # first-order steps: the first and (lower_order_final) the last
            independent += abs((e_lam[s + 1] - e_lam[s]) * node_err[s])
            continue
        if s in (1, steps - 2):  # second order, nodes s-1, s
            n = s - 1
            _, h1, _ = _h_functions(h[n + 1])
            h0 = math.expm1(h[n + 1])
            weights = {n: -e_lam[n + 1] * h1 / h[n], n + 1: e_lam[n + 1] * (h1 + h[n] * h0) / h[n]}
        else:  # third order, nodes s-2, s-1, s
            n = s - 2
            h0, h1, h2 = _h_functions(h[n + 2])
            a, b = h[n], h[n + 1]
            weights = {
                n: e_lam[n + 2] * (h2 + b * h1) / (a * (a + b)),
                n + 1: -e_lam[n + 2] * (h2 + (a + b) * h1) / (a * b),
                n + 2: e_lam[n + 2] * (h2 + (2 * b + a) * h1 + b * (a + b) * h0) / (b * (a + b)),
            }
        if s >= trunc:
            for node, w in weights.items():
                coherent[node] += node_err[node] * w
        else:
            independent += math.sqrt(sum((node_err[node] * w) ** 2 for node, w in weights.items()))
    return float(independent + np.abs(coherent).sum())


@dataclass
class DmnResult:
    timesteps: Tensor
    lambdas: np.ndarray
    cost: float
    initial_cost: float
    trunc: int
    converged: bool


def dmn(schedule: NoiseSchedule, solver: str, nfe: int, t_start: float | None = None, t_end: float | None = None,
        trunc: int | None = None, power: float = 2.0, maxiter: int = 2000) -> DmnResult:
    """DMN: the λ-grid of `nfe` steps minimising `dmn_objective`, from the uniform-λ grid (scipy trust-constr).

    trunc: steps whose terms add as root-sum-squares (DMN: 3 for NFE ≤ 7, 0 above, per its code comment).
    """
    from scipy.optimize import LinearConstraint, minimize

    check_tunable(solver, nfe, "dmn")
    t_start = schedule.T if t_start is None else float(t_start)
    t_end = schedule.t_end if t_end is None else float(t_end)
    trunc = (3 if nfe <= 7 else 0) if trunc is None else int(trunc)
    lam_T = float(schedule.lambda_(torch.tensor(t_start, dtype=torch.float64)))
    lam_eps = float(schedule.lambda_(torch.tensor(t_end, dtype=torch.float64)))
    start = np.linspace(lam_T, lam_eps, nfe + 1)

    def full(inner: np.ndarray) -> np.ndarray:
        return np.concatenate([[lam_T], inner, [lam_eps]])

    # λ_T ≤ λ_1, λ_k ≤ λ_{k+1}, λ_{S-1} ≤ λ_ε as rows of A·inner ≥ lb
    m = nfe - 1
    rows = np.zeros((nfe, m))
    lower = np.zeros(nfe)
    rows[0, 0], lower[0] = 1.0, lam_T
    for k in range(1, m):
        rows[k, k - 1], rows[k, k] = -1.0, 1.0
    rows[m, m - 1], lower[m] = -1.0, -lam_eps
    constraint = LinearConstraint(rows, lower, np.full(nfe, np.inf))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's quasi-Newton notes on flat directions of the objective
        result = minimize(lambda v: dmn_objective(full(v), trunc, power), start[1:-1], method="trust-constr",
                          constraints=[constraint], options={"maxiter": maxiter})
    lambdas = full(np.sort(result.x))
    if not bool(np.all(np.diff(lambdas) > 0)):
        raise DpmsError(f"DMN's optimisation collapsed two times of the {nfe}-step grid; try another NFE or --method gits")
    ts = schedule.inverse_lambda(torch.from_numpy(lambdas))
    ts[0], ts[-1] = t_start, t_end
    return DmnResult(ts, lambdas, dmn_objective(lambdas, trunc, power), dmn_objective(start, trunc, power), trunc, bool(result.success))


def refine_path(run: Callable[[list[int]], float], path: list[int], sweeps: int, advance: Callable[[], None] | None = None) -> tuple[list[int], float]:
    """Coordinate descent over the interior points of `path` (each moved among the candidates between its
    neighbours) on `run(path)`, the full solver's error; `sweeps` passes. Returns the best path and its error."""
    seen: dict[tuple, float] = {}

    def score(p: list[int]) -> float:
        key = tuple(p)
        if key not in seen:
            seen[key] = run(p)
        return seen[key]

    best = list(path)
    for _ in range(sweeps):
        before = score(best)
        for k in range(1, len(best) - 1):
            options = range(best[k - 1] + 1, best[k + 1])
            best[k] = min(options, key=lambda c: score(best[:k] + [c] + best[k + 1:]))
        if advance:
            advance()
        if score(best) >= before:
            break
    return best, score(best)
