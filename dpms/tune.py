"""`dpms tune-grid`: a time grid tuned for one model, solver and NFE, written as a JSON file.

    grid = dpms.tune_grid(model="gmm", solver="dpm2m", nfe=5, method="gits")
    grid.write("grid.json")
    x = dpms.sample(noise_fn, schedule, x_T, solver="dpm2m", nfe=5, timesteps=grid.timesteps)

The algorithms live in `dpms.sampler.tuning`; this module loads the model, draws the tuning x_T (sample i
from (seed, i), as `dpms sample` does), shows progress and records the settings in the file.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .errors import DpmsError
from .sampler.registry import get_solver
from .sampler.tuning import GITS_COEFF, METHODS, TunedGrid, check_tunable, dmn, gits, load_grid
from .target import load_target
from .version import __version__

__all__ = ["tune_grid", "TunedGrid", "METHODS", "GITS_COEFF", "load_grid"]


def _settings(method: str, num: int, seed: int, candidates: int, skip, coeff: float, teacher: str, teacher_substeps: int,
              refine: int, trunc, power: float, t_end, options: dict) -> dict:
    """What the grid depends on besides model, solver and NFE (recorded in the file; a bench cache key)."""
    common = {"t_end": t_end, "options": dict(sorted(options.items()))}
    if method == "dmn":
        return {**common, "trunc": trunc, "power": power, "init": "logSNR"}
    return {**common, "num": num, "seed": seed, "candidates": candidates, "skip": skip, "coeff": coeff, "teacher": teacher,
            "teacher_substeps": teacher_substeps, "refine": refine, "metric": "mean L2"}


def tune_grid(
    model: str = "gmm",
    solver: str = "dpm2m",
    nfe: int = 5,
    num: int = 256,
    method: str = "gits",
    seed: int = 0,
    candidates: int = 60,
    skip: str | None = None,
    coeff: float = GITS_COEFF,
    teacher: str = "dpm3",
    teacher_substeps: int = 4,
    refine: int = 0,
    trunc: int | None = None,
    power: float = 2.0,
    t_end: float | None = None,
    checkpoint: str | None = None,
    device: str = "cpu",
    target=None,
    console: Console | None = None,
    **options,
) -> TunedGrid:
    """Tune the time grid of `solver` at `nfe` for `model` (method "gits" or "dmn"; see dpms.sampler.tuning).

    gits: num tuning samples from x_T of (seed, i); candidates, skip (default: the solver's), coeff, teacher,
    teacher_substeps, refine as in `dpms.sampler.tuning.gits`. dmn: trunc, power; no network call.
    target: an already loaded `Target` (else `model` is loaded). options: solver options.
    """
    check_tunable(solver, nfe, method)
    if method == "gits" and num < 1:
        raise DpmsError(f"--num must be positive, got {num}")
    if target is None:
        target = load_target(model, checkpoint, device)
    schedule = target.schedule
    console = console or Console(stderr=True)
    start = time.perf_counter()
    if method == "dmn":
        result = dmn(schedule, solver, nfe, t_end=t_end, trunc=trunc, power=power)
        timesteps, cost = result.timesteps, result.cost
        report = {"initial_cost": result.initial_cost, "converged": result.converged, "lambdas": result.lambdas.tolist()}
        trunc = result.trunc
    else:
        idx = list(range(num))  # the tuning x_T and labels, drawn as Target.draw draws sample i of a run seeded by `seed`
        x_T = target.initial_noise(idx, seed, device)
        y = target.labels(idx, seed, device)
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=False, disable=not console.is_terminal) as bar:
            def phase(description: str, total: int):
                task = bar.add_task(description, total=total)
                return lambda: bar.advance(task)

            result = gits(target.make_noise_fn(y), schedule, x_T, solver, nfe, candidates=candidates, skip=skip, coeff=coeff,
                          teacher=teacher, teacher_substeps=teacher_substeps, t_end=t_end, options=options, refine=refine,
                          progress=phase, teacher_cache=_teacher_cache(target, num, seed, device))
        timesteps, cost = result.timesteps, result.cost
        skip = skip or get_solver(solver).skip_for(schedule)
        report = {"unweighted_cost": result.unweighted_cost, "path": result.path, "dp_path": result.dp_path,
                  "candidate_times": result.candidates.tolist(), "teacher_error": result.teacher_error}
    settings = _settings(method, num, seed, candidates, skip, coeff, teacher, teacher_substeps, refine, trunc, power, t_end, options)
    report["seconds"] = round(time.perf_counter() - start, 3)
    report["dpms"] = __version__
    return TunedGrid(model=target.name, schedule=repr(schedule), solver=solver, nfe=int(nfe), method=method,
                     timesteps=[float(t) for t in timesteps], cost=float(cost), settings=settings, report=report)


_TEACHERS: list[tuple[object, tuple, dict]] = []  # (target, (num, seed, device), teacher cache): the last few


def _teacher_cache(target, num: int, seed: int, device) -> dict:
    """The teacher trajectories already computed in this process for this target and tuning x_T (a benchmark
    tunes many solvers and NFEs on the same ones). The target is compared by identity and kept alive with it."""
    key = (num, seed, str(device))
    for known, known_key, cache in _TEACHERS:
        if known is target and known_key == key:
            return cache
    _TEACHERS.append((target, key, {}))
    del _TEACHERS[:-4]
    return _TEACHERS[-1][2]
