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

from .. import __version__, sampler
from ..errors import DpmsError
from ..sampler.registry import SolverSpec, get_solver
from .config import BenchConfig, SolverEntry, TEndRule

PACKAGE = Path(__file__).resolve().parents[1]
# the source that decides a cell's number: solvers, schedule, wrapper, networks and their weight mapping,
# quantisation, features and statistics, the per-sample noise and sharding of a cell. Not listed: the CLI,
# reports, downloads, config parsing and error messages, which change no number.
NUMERICS = ("sampler/*.py", "schedule.py", "model_wrapper.py", "images.py", "digits.py",
            "models/adm.py", "models/architectures.py", "models/ddpm.py", "models/diffusers_format.py", "models/gmm.py",
            "models/ncsnpp.py", "models/checkpoints.py",
            "evaluation/features.py", "evaluation/fid.py", "evaluation/frechet.py", "evaluation/inception.py", "evaluation/stats.py",
            "bench/runner.py", "bench/distributed.py")
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

    plan_options, _ = spec.split_options(options)
    for nfe in range(steps, 4 * steps + 13):
        try:
            timesteps, _ = spec.plan.grid(nfe, count_grid, skip, plan_options)
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
            cells.append(Cell(entry, spec, column, nfe, skip, t_end, paper=entry.paper.get(column), paper_column=column))
    _check_distinct_cells(cells, where)
    if not cells:
        reasons = "; ".join(f"{s.label} {config.axis} {s.column}: {s.reason}" for s in skipped[:3])
        raise DpmsError(f"{where}: no solver can run any of {config.axis} {config.columns} ({reasons})")
    return cells, skipped


def _check_distinct_cells(cells: list[Cell], where: str) -> None:
    """Entries whose settings differ only where a default fills in (skip: null vs the solver's default
    grid, t_end rules that agree at some NFE) still give one cell under two labels: refuse."""
    seen: dict[tuple, Cell] = {}
    for cell in cells:
        same = (cell.spec.name, json.dumps(cell.entry.options, sort_keys=True, default=str), cell.nfe, cell.skip, cell.t_end)
        other = seen.setdefault(same, cell)
        if other is not cell:
            what = "adaptive" if cell.adaptive else f"NFE {cell.nfe}"
            raise DpmsError(f"{where}: solver entries {other.label!r} and {cell.label!r} give the same cell ({cell.spec.name} {what}, "
                            f"skip {cell.skip}, t_end {cell.t_end:g}); remove one or change its settings")


def assign_keys(cells: list[Cell], config: BenchConfig, identity: dict) -> None:
    """Set each cell's settings and key; `identity` holds the model and metric fingerprints."""
    for cell in cells:
        _assign_key(cell, config, identity)


def numerics_files() -> list[Path]:
    """The NUMERICS files, and the preset registry (schedules, time maps, model types)."""
    from ..models.checkpoints import REGISTRY

    return sorted({f for pattern in NUMERICS for f in PACKAGE.glob(pattern)} | ({REGISTRY} if REGISTRY.is_file() else set()))


@lru_cache(maxsize=1)
def numerics_fingerprint() -> str:
    """sha256 of dpms's numerical source files (NUMERICS), in a fixed order."""
    digest = hashlib.sha256()
    for path in numerics_files():
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


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
    blob = json.dumps(cell.settings, sort_keys=True, default=str).encode()
    tag = "adaptive" if cell.adaptive else f"nfe{cell.nfe}"
    cell.key = f"{cell.spec.name}-{tag}-{hashlib.sha256(blob).hexdigest()[:16]}"
