"""Tuned time grids in benchmarks: a solver entry's `grid:`, and `dpms bench --timesteps FILE`.

In a config, a solver entry may take

    grid: {tune: gits, coeff: 1.15, refine: 2}       # every column of the entry: tuned at run time
    grid: {5: grids/dpm2m_nfe5.json, 6: {tune: dmn}} # per NFE: a grid file (`dpms tune-grid --out`) or a tuning

A file must have been tuned for the config's model, the entry's solver and that NFE (else a one-line
error before any sampling); its cell runs on the file's times (its key covers them). A `tune:` grid is
computed once, when its first cell runs, with `dpms.tune.tune_grid` (its settings as keys; `num` 256 and
`seed` = the config's seed + 1 by default, so the grid is never tuned on the x_T it is measured on), and kept
as OUT/grids/<solver>-nfe<N>-<hash>.json, where the hash covers the model, solver, NFE, the tuning settings and
the numerics fingerprint: a rerun loads it, a change to any of them tunes again. The cell's key covers the same.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import DpmsError
from ..sampler.tuning import METHODS, TunedGrid, check_tunable

TUNE_KEYS = {"tune", "num", "seed", "candidates", "skip", "coeff", "teacher", "teacher_substeps", "refine", "trunc", "power"}


def _tune_spec(value: dict, where: str) -> dict:
    unknown = sorted(str(k) for k in value if k not in TUNE_KEYS)
    if unknown:
        raise DpmsError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(TUNE_KEYS))}")
    if value.get("tune") not in METHODS:
        raise DpmsError(f"{where}: tune must be one of {', '.join(METHODS)}, got {value.get('tune')!r}")
    return dict(value)


def parse_grid(value, where: str) -> dict:
    """A solver entry's `grid:` as {column or None (every column): file path (str) or tune settings (dict)}."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not value:
        raise DpmsError(f"{where} must be {{tune: gits}} or a mapping from NFE to a grid file or {{tune: ...}}, got {value!r}")
    if "tune" in value:
        return {None: _tune_spec(value, where)}
    out = {}
    for nfe, spec in value.items():
        if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
            raise DpmsError(f"{where}: keys must be NFE values, got {nfe!r}")
        if isinstance(spec, str):
            out[nfe] = spec
        elif isinstance(spec, dict):
            out[nfe] = _tune_spec(spec, f"{where}[{nfe}]")
        else:
            raise DpmsError(f"{where}[{nfe}] must be a grid file path or {{tune: gits}}, got {spec!r}")
    return out


def grid_to_data(grids: dict):
    """`parse_grid`'s result as the config's `grid:` value again (results.json, entry comparison)."""
    if not grids:
        return None
    if None in grids:
        return dict(grids[None])
    return {nfe: spec for nfe, spec in sorted(grids.items())}


def grid_for(grids: dict, nfe: int):
    """The entry's grid of one column (None: the solver's own grid from skip and t_end)."""
    return grids.get(nfe, grids.get(None))


def tune_settings(spec: dict, seed: int) -> dict:
    """The tuning's settings with the defaults filled in: num 256, seed = the config's seed + 1 (held out)."""
    settings = {k: v for k, v in spec.items() if k != "tune"}
    settings.setdefault("num", 256)
    settings.setdefault("seed", seed + 1)
    return {"method": spec["tune"], **dict(sorted(settings.items()))}


def check_tune(solver: str, nfe: int, spec: dict, where: str) -> None:
    try:
        check_tunable(solver, nfe, spec["tune"])
    except DpmsError as e:
        raise DpmsError(f"{where}: {e}") from None


def cache_path(out_dir: Path, solver: str, nfe: int, key_settings: dict) -> Path:
    blob = json.dumps(key_settings, sort_keys=True, default=str).encode()
    return Path(out_dir) / "grids" / f"{solver}-nfe{nfe}-{hashlib.sha256(blob).hexdigest()[:16]}.json"


def tuned_timesteps(target, solver: str, nfe: int, t_end: float, options: dict, settings: dict, key_settings: dict, out_dir: Path,
                    console=None) -> list[float]:
    """The grid of a `tune:` entry: loaded from OUT/grids/ when its settings match, else tuned and kept there."""
    from ..tune import tune_grid

    path = cache_path(out_dir, solver, nfe, key_settings)
    if path.is_file():
        cached = TunedGrid.read(path)
        if cached.settings.get("cache_key") == json.loads(json.dumps(key_settings, default=str)):
            return cached.timesteps
    kwargs = {k: v for k, v in settings.items() if k != "method"}
    grid = tune_grid(target.name, solver, nfe, method=settings["method"], t_end=t_end, target=target, console=console,
                     **kwargs, **options)
    grid.settings["cache_key"] = key_settings
    grid.write(path, overwrite=True)  # the cache's own file: a stale one (other settings) is replaced
    return grid.timesteps


def apply_grid_files(config, paths: list) -> None:
    """`dpms bench --timesteps FILE` (repeatable): each file replaces the grid of the cells of its solver and
    NFE; a file for another model, or for a (solver, NFE) this run has no cell of, is refused."""
    for path in paths:
        grid = TunedGrid.read(path)
        if grid.model != config.model.preset:
            raise DpmsError(f"--timesteps {path}: the grid was tuned for model {grid.model!r}, not {config.model.preset!r}")
        entries = [e for e in config.solvers if e.name == grid.solver and grid.nfe in (e.columns or config.columns)]
        if not entries:
            raise DpmsError(f"--timesteps {path}: this run has no {grid.solver} cell at NFE {grid.nfe} "
                            f"(solvers: {', '.join(e.name for e in config.solvers)}; NFE: {config.columns})")
        for entry in entries:
            entry.grids = {**entry.grids, grid.nfe: str(Path(path).resolve())}
