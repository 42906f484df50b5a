"""The cells of a benchmark: one (solver entry, NFE) pair each, with every setting resolved and hashed.

A cell's key is `<solver>-nfe<N>-<hash>` (`<solver>-adaptive-<hash>` for adaptive solvers), where the hash
covers everything that changes the number it produces: the dpms version and a fingerprint of the source
of the code that computes the numbers (sampler, schedule, wrapper, networks, images, features: a fix to a
solver recomputes its cells instead of resuming stale ones), the model (preset, checkpoint
and classifier fingerprints, guidance scale, precision), the metric (feature kind, reference statistics
and feature-network fingerprints), the solver with its options, NFE, time grid, t_end, the number of
samples and the seed (and, for adaptive solvers, how many samples share a step size). The batch size,
the device and the number of processes are left out: results do not depend on them (up to round-off).

Cells that a solver cannot run (an NFE its rule excludes) are not errors but `Skipped` entries with the
solver's own message; a config in which no cell at all can run is an error.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch

from .. import sampler
from ..errors import DpmsError
from ..sampler.registry import SolverSpec, get_solver
from ..version import __version__
from ..sampler.tuning import load_grid
from .config import BenchConfig, SolverEntry, TEndRule, resolve_path
from .grids import check_tune, grid_for, tune_settings

PACKAGE = Path(__file__).resolve().parents[1]
# The code that produces a cell's number, found by following dpms's imports (module-level and inside
# functions) from the module that runs cells: solvers, schedule, targets, networks and their weight
# mapping, quantisation, features and statistics, per-sample noise, sharding. A new or moved module is
# covered as soon as that code imports it. Left out (and not followed): modules that only present or
# store numbers already computed, or word errors; none of them can move a number.
CELL_ENTRY_POINTS = ("dpms.bench.runner",)
PRESENTATION_ONLY = frozenset({"dpms.bench.report", "dpms.bench.check", "dpms.plot", "dpms.atomic", "dpms.errors",
                               "dpms.models.download", "dpms.cli"})
FULL_HASH_LIMIT = 256 << 20  # files up to 256 MiB are hashed whole; larger ones by size, head and tail
PROBE_NFES = range(1, 61)


@dataclass
class Cell:
    entry: SolverEntry
    spec: SolverSpec
    column: int | None  # the table column (NFE or steps); None for an adaptive solver
    nfe: int | None  # requested NFE; None for an adaptive solver
    skip: str
    t_end: float
    settings: dict = field(default_factory=dict)  # what the key hashes
    key: str = ""
    paper: float | None = None
    paper_column: int | None = None  # for adaptive cells: the paper's NFE
    timesteps: list[float] | None = None  # a tuned grid from a file (dpms/bench/grids.py)
    tune: dict | None = None  # a grid tuned when the cell first runs: its settings

    @property
    def label(self) -> str:
        return self.entry.label

    @property
    def adaptive(self) -> bool:
        return self.spec.adaptive


@dataclass
class Skipped:
    label: str
    solver: str
    column: int
    reason: str

    def to_dict(self) -> dict:
        return {"label": self.label, "solver": self.solver, "column": self.column, "reason": self.reason}


def fingerprint(path: Path | None) -> str | None:
    """sha256 of a file (of its size, first and last MiB when over 256 MiB), or of a folder's files."""
    if path is None:
        return None
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        size = f.stat().st_size
        digest.update(f"{f.relative_to(path) if path.is_dir() else f.name}:{size}\n".encode())
        with open(f, "rb") as handle:
            if size <= FULL_HASH_LIMIT:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
            else:
                digest.update(handle.read(1 << 20))
                handle.seek(size - (1 << 20))
                digest.update(handle.read(1 << 20))
    return digest.hexdigest()[:20]


def t_end_for(rules: list[TEndRule] | None, nfe: int | None, default: float) -> float:
    """The first rule whose max_nfe admits `nfe` (adaptive cells, nfe None: the last rule)."""
    if rules is None:
        return float(default)
    if nfe is None:
        return rules[-1].value
    return next(r.value for r in rules if r.max_nfe is None or nfe <= r.max_nfe)


def nfe_for_steps(spec: SolverSpec, steps: int, skip: str, options: dict) -> int:
    """The smallest NFE at which the solver's plan takes `steps` grid steps (PNDM's tables are in steps)."""
    def count_grid(k: int, *_):
        return torch.zeros(k + 1, dtype=torch.float64)

    extra = sampler.extra_calls(options.get("afs", False), options.get("denoise_to_zero", False))  # calls beyond the solver's own
    plan_options, _ = spec.split_options({k: v for k, v in options.items() if k not in (*sampler.SAMPLE_OPTIONS, "protocol")})
    for nfe in range(max(1, steps + extra), 4 * steps + 13):
        try:
            timesteps, _ = spec.plan.grid(nfe - extra, count_grid, skip, plan_options)
        except DpmsError:
            continue
        if len(timesteps) - 1 == steps:
            return nfe
    raise DpmsError(f"solver {spec.name!r} has no NFE that takes {steps} steps")


def _check_entry(entry: SolverEntry, spec: SolverSpec, schedule, skip: str, t_end: float, where: str) -> None:
    """Raise the solver's own error for settings that no NFE can fix (an unknown option, a bad grid)."""
    if spec.adaptive:
        sampler.validate(entry.name, schedule, nfe=None, skip=skip, t_end=t_end, **entry.options)
        return
    first_error = None
    for nfe in PROBE_NFES:
        try:
            sampler.validate(entry.name, schedule, nfe=nfe, skip=skip, t_end=t_end, **entry.options)
            return
        except DpmsError as e:
            first_error = first_error or e
    raise DpmsError(f"{where}: {first_error}")


def plan_cells(config: BenchConfig, schedule) -> tuple[list[Cell], list[Skipped]]:
    """Every runnable cell of the config (in solver order, then column order) and the skipped ones.

    Cells come without keys: `assign_keys` adds them once the model and metric files are fingerprinted.
    """
    where = str(config.path or config.name)
    cells: list[Cell] = []
    skipped: list[Skipped] = []
    for entry in config.solvers:
        spec = get_solver(entry.name)
        skip = entry.skip or config.skip or spec.skip_for(schedule)
        rules = entry.t_end if entry.t_end is not None else config.t_end
        if spec.adaptive:
            t_end = t_end_for(rules, None, schedule.t_end)
            _check_entry(entry, spec, schedule, skip, t_end, where)
            paper_column, paper = next(iter(entry.paper.items()), (None, None))
            cells.append(Cell(entry, spec, None, None, skip, t_end, paper=paper, paper_column=paper_column))
            continue
        if not config.columns:
            raise DpmsError(f"{where}: solver {entry.name!r} needs a list of NFE (nfe: [...]) or steps (steps: [...])")
        _check_entry(entry, spec, schedule, skip, t_end_for(rules, None, schedule.t_end), where)
        for column in entry.columns or config.columns:
            try:
                nfe = column if config.axis == "nfe" else nfe_for_steps(spec, column, skip, entry.options)
                t_end = t_end_for(rules, nfe, schedule.t_end)
                sampler.validate(entry.name, schedule, nfe=nfe, skip=skip, t_end=t_end, **entry.options)
            except DpmsError as e:
                skipped.append(Skipped(entry.label, entry.name, column, str(e)))
                continue
            cell = Cell(entry, spec, column, nfe, skip, t_end, paper=entry.paper.get(column), paper_column=column)
            _set_tuned_grid(cell, config, where)
            cells.append(cell)
    _check_distinct_cells(cells, where)
    if not cells:
        reasons = "; ".join(f"{s.label} {config.axis} {s.column}: {s.reason}" for s in skipped[:3])
        raise DpmsError(f"{where}: no solver can run any of {config.axis} {config.columns} ({reasons})")
    return cells, skipped


def _set_tuned_grid(cell: Cell, config: BenchConfig, where: str) -> None:
    """A cell with a tuned grid: a file's times (checked against model, solver, NFE) or the tuning's settings."""
    spec = grid_for(cell.entry.grids, cell.nfe)
    if spec is None:
        return
    here = f"{where}: solvers {cell.label!r} NFE {cell.nfe}"
    if isinstance(spec, str):
        grid = load_grid(resolve_path(spec, config), config.model.preset, cell.spec.name, cell.nfe, f"{here} grid {spec}")
        cell.timesteps, cell.t_end, cell.skip = grid.timesteps, grid.timesteps[-1], f"tuned ({grid.method}, file)"
        return
    check_tune(cell.spec.name, cell.nfe, spec, here)
    cell.tune = tune_settings(spec, config.seed)
    cell.skip = f"tuned ({spec['tune']})"


def _check_distinct_cells(cells: list[Cell], where: str) -> None:
    """Entries whose settings differ only where a default fills in (skip: null vs the solver's default
    grid, t_end rules that agree at some NFE) still give one cell under two labels: refuse."""
    seen: dict[tuple, Cell] = {}
    for cell in cells:
        same = (cell.spec.name, json.dumps(cell.entry.options, sort_keys=True, default=str), cell.nfe, cell.skip, cell.t_end,
                json.dumps(cell.timesteps if cell.tune is None else cell.tune, sort_keys=True))
        other = seen.setdefault(same, cell)
        if other is not cell:
            what = "adaptive" if cell.adaptive else f"NFE {cell.nfe}"
            raise DpmsError(f"{where}: solver entries {other.label!r} and {cell.label!r} give the same cell ({cell.spec.name} {what}, "
                            f"skip {cell.skip}, t_end {cell.t_end:g}); remove one or change its settings")


def assign_keys(cells: list[Cell], config: BenchConfig, identity: dict) -> None:
    """Set each cell's settings and key; `identity` holds the model and metric fingerprints."""
    for cell in cells:
        _assign_key(cell, config, identity)


def _module_file(name: str, root: Path) -> Path | None:
    """The source file of dpms module `name` under the package folder `root` (None: not a dpms module)."""
    parts = name.split(".")
    if parts[0] != root.name:
        return None
    base = root.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported_modules(name: str, path: Path) -> set[str]:
    """Every dpms module that module `name` imports anywhere in its source (absolute or relative), with the
    packages above each (importing a.b.c runs a/__init__ and a/b/__init__)."""
    import ast

    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from . import sampler` imports a module
    # A package that discovers its modules at run time (dpms.sampler: pkgutil, so a solver is one new file and no
    # import statement names it) imports them all, as the discovery does (it skips names starting with "_").
    if path.name == "__init__.py" and "pkgutil" in found:
        found.update(f"{name}.{p.stem}" for p in path.parent.glob("*.py") if not p.stem.startswith("_"))
    with_parents = set()
    for module in found:
        parts = module.split(".")
        with_parents.update(".".join(parts[:k]) for k in range(1, len(parts) + 1))
    return with_parents


def numerics_modules(root: Path = PACKAGE, entry_points=CELL_ENTRY_POINTS) -> dict[str, Path]:
    """The dpms modules (name → file) reachable by imports from the cell entry points, less PRESENTATION_ONLY."""
    todo = [m for entry in entry_points for m in (entry, *_parents(entry))]
    seen: dict[str, Path] = {}
    while todo:
        name = todo.pop()
        if name in seen or name in PRESENTATION_ONLY:
            continue
        path = _module_file(name, root)
        if path is None:
            continue
        seen[name] = path
        todo.extend(_imported_modules(name, path))
    return seen


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:k]) for k in range(1, len(parts))]


def numerics_files(root: Path = PACKAGE) -> list[Path]:
    """The source files of `numerics_modules`, and the preset registry (schedules, time maps, model types)."""
    from ..models.checkpoints import REGISTRY

    registry = root.parent / REGISTRY.relative_to(PACKAGE.parent) if REGISTRY.is_relative_to(PACKAGE.parent) else REGISTRY
    return sorted(set(numerics_modules(root).values()) | ({registry} if registry.is_file() else set()))


def fingerprint_of_sources(root: Path = PACKAGE) -> str:
    """sha256 of the numerics files under the package folder `root`: relative path and content, in a fixed order."""
    digest = hashlib.sha256()
    for path in numerics_files(root):
        digest.update(path.relative_to(root.parent).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@lru_cache(maxsize=1)
def numerics_fingerprint() -> str:
    """The fingerprint of dpms's numerical source (`numerics_files`) that every cell key includes."""
    return fingerprint_of_sources(PACKAGE)


def _assign_key(cell: Cell, config: BenchConfig, identity: dict) -> None:
    cell.settings = {
        "dpms": __version__,
        "numerics": numerics_fingerprint(),
        **identity,
        "solver": cell.spec.name,
        "options": dict(sorted(cell.entry.options.items())),
        "nfe": cell.nfe,
        "skip": cell.skip,
        "t_end": cell.t_end,
        "num": config.num,
        "seed": config.seed,
        "adaptive_batch": config.adaptive_batch if cell.adaptive else None,
    }
    if cell.timesteps is not None or cell.tune is not None:  # only then: the keys of default-grid cells stay as they were
        cell.settings["grid"] = cell.timesteps if cell.timesteps is not None else cell.tune
    blob = json.dumps(cell.settings, sort_keys=True, default=str).encode()
    tag = "adaptive" if cell.adaptive else f"nfe{cell.nfe}"
    cell.key = f"{cell.spec.name}-{tag}-{hashlib.sha256(blob).hexdigest()[:16]}"
