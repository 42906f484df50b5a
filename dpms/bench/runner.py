"""Running a benchmark: every (solver, NFE) cell streams samples into feature statistics.

Determinism. Sample i of a cell starts from x_T drawn by its own generator seeded from (seed, i), takes
its stochastic solvers' noise from another generator seeded from (seed, i), and its class label (for
class-conditional or guided models) from a third (`dpms.sampler.noise`). So a cell's samples do not
depend on the batch size or on how many processes share the work, up to floating-point round-off (batched
convolutions and merged statistics sum in another order: < 1e-4 relative on digits, `benchmarks/roundoff.py`). Adaptive solvers (dpm12, dpm23, rk45)
are the exception the papers impose: one step size is shared by a whole batch (the error norm is the
batch maximum, as in the official code), so for them the batch is fixed by the config
(`adaptive_batch`: samples [0, A), [A, 2A), ...) instead of by --batch.

Streaming. Each batch is sampled, quantised to 8 bits exactly as a PNG would store it (image models),
passed through the feature network and folded into a float64 `FeatureStats`; only the statistics are
kept (and, with --save-images, the PNGs on disk). With K processes, rank r takes the samples
i ≡ r (mod K) (adaptive groups g ≡ r (mod K)); rank 0 merges the statistics and writes the cell.

Resumability. A finished cell is written at once (`report.write_cell`, atomic) and the tables are
regenerated; a rerun loads every finished cell whose key and settings match and runs only the rest, so
killing the process loses at most the running cell. The key covers what changes the number, not how
the table presents it: a loaded cell takes its label, column and published number (with Δ and
confidence) from the current config.

ode_error (`dpms.bench.ode_reference`). With it on, the converged ODE solutions of every t_end are loaded or
solved (and checked) before the first cell; each cell measures its first samples against them. It is not in
the cell key — it does not change the FD — so a finished cell that lacks it (run without ode_error, or with
other reference settings) keeps its FD and gets its ode_error measured by drawing those samples again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape

from ..atomic import atomic_path
from ..errors import DpmsError, MissingFileError, NonFiniteError
from ..evaluation import FeatureStats, feature_extractor, frechet_distance
from ..evaluation.kinds import get_feature_kind
from ..evaluation.stats import load_stats
from ..outputs import write_failure
from ..images import save_grid, to_uint8
from ..models.checkpoints import get_preset, resolve_checkpoint
from ..target import Target, describe_target, load_target
from . import report
from . import ode_reference
from .cells import Cell, Skipped, assign_keys, fingerprint, numerics_fingerprint, plan_cells
from .config import BenchConfig, candidate_paths, resolve_path
from .distributed import World


@dataclass
class Metric:
    """Features and reference statistics of one Fréchet distance."""

    name: str
    features: object  # a dpms.evaluation FeatureExtractor
    dims: int | None  # None: taken from the first batch (exact features)
    mu_ref: np.ndarray
    sigma_ref: np.ndarray


@dataclass
class Prepared:
    """A benchmark checked and loaded: what `run_cells` needs."""

    config: BenchConfig
    cells: list[Cell]
    skipped: list[Skipped]
    target: Target
    metric: Metric
    ode_error: ode_reference.OdeErrorSpec | None = None  # set: each cell's error against the converged ODE solution
    ode_keys: dict = field(default_factory=dict)  # t_end → the key of its ODE reference


@dataclass
class BenchResult:
    records: list[dict]  # finished cells, in plan order
    skipped: list[Skipped]
    computed: list[str] = field(default_factory=list)  # keys run now (the others were loaded)
    metric: str = ""
    document: dict | None = None  # results.json (rank 0 only)
    table: object = None  # the rich table of the results (rank 0 only)
    out_dir: Path | None = None


# ------------------------------------------------------------------------------------ preparation
def _model_info(config: BenchConfig):
    """(schedule, image shape or None for vectors, preset) without loading any weights."""
    preset, schedule, shape, is_image = describe_target(config.model.preset)
    return schedule, shape if is_image else None, preset


def _check_metric_fits(config: BenchConfig, image_shape) -> None:
    where = str(config.path or config.name)
    exact_model = image_shape is None
    kind = get_feature_kind(config.features)
    if not kind.images and not exact_model:
        raise DpmsError(f"{where}: features {kind.name!r} need the exact model (model: gmm); use digits or inception features")
    if exact_model and kind.images:
        raise DpmsError(f"{where}: the exact model {config.model.preset} makes vectors, not images; use features: exact")
    if kind.images and not kind.accepts(image_shape, True):
        shape = "×".join(map(str, kind.image_shape))
        raise DpmsError(f"{where}: {kind.name} features need {shape} images but {config.model.preset} makes {image_shape}; use features: inception")
    if config.model.guidance_scale and exact_model:
        raise DpmsError(f"{where}: the exact model takes no guidance")


def _reference_path(config: BenchConfig) -> Path | None:
    kind = get_feature_kind(config.features)
    if not kind.images:
        return None
    if config.reference_stats is None:
        if kind.reference is not None:
            return kind.reference
        raise DpmsError(f"{config.path or config.name}: FID needs reference_stats (an .npz with mu and sigma); pass --ref-stats PATH")
    path = resolve_path(config.reference_stats, config)
    if not path.is_file():
        raise MissingFileError(_missing_reference_message(config))
    return path


def _missing_reference_message(config: BenchConfig) -> str:
    """Names every absolute path looked at, and how to make the file where the config expects it."""
    places = candidate_paths(config.reference_stats, config)
    hint = get_feature_kind(config.features).reference_hint.format(path=places[-1])
    return (f"reference statistics {config.reference_stats} not found (looked at {' and '.join(map(str, places))}); "
            f"{hint}, or pass --ref-stats PATH")


def _load_reference(path: Path, dims: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    stats = load_stats(path)
    if stats.mu.shape != (dims,):
        raise DpmsError(f"reference statistics {path} have {stats.mu.shape[0]}-d features but {metric} gives {dims}-d; wrong file")
    return np.asarray(stats.mu, dtype=np.float64), np.asarray(stats.sigma, dtype=np.float64)


def _checkpoint_paths(config: BenchConfig, preset) -> tuple[Path | None, Path | None]:
    """(checkpoint, classifier checkpoint) paths; a missing file is a one-line MissingFileError."""
    if preset.kind == "exact":
        return None, None
    checkpoint = resolve_checkpoint(preset, resolve_path(config.model.checkpoint, config))
    classifier = None
    if config.model.guidance_scale:
        if preset.classifier is None and config.model.classifier is None:
            raise DpmsError(f"{preset.name} has no published classifier; set model.classifier to a classifier checkpoint")
        classifier = resolve_checkpoint(get_preset(preset.classifier), resolve_path(config.model.classifier, config))
    return checkpoint, classifier


def check_save_images(config: BenchConfig, save_images: bool) -> None:
    """--save-images writes PNGs; the exact model's samples are vectors, so asking for them is a mistake."""
    if save_images and _model_info(config)[1] is None:
        raise DpmsError(f"--save-images needs an image model, but the exact model {config.model.preset} makes vectors; drop --save-images")


def prepare(config: BenchConfig, device: str = "cpu", acceleration: dict | None = None) -> Prepared:
    """Check everything that can fail before a single sample is drawn, then load the model and metric.

    Order: preset, metric/model fit, solvers and NFEs (plan), reference statistics file, feature network
    (Inception weights), reference statistics content, checkpoint files; then the network is loaded.
    """
    schedule, image_shape, preset = _model_info(config)
    _check_metric_fits(config, image_shape)
    cells, skipped = plan_cells(config, schedule)
    ode = None
    if config.ode_error is not None:
        dim = int(np.prod(describe_target(config.model.preset)[2]))  # coordinates of one sample
        ode = ode_reference.resolve(config.ode_error, config.num, dim, image_shape is None, schedule,
                                    sorted({c.t_end for c in cells}), str(config.path or config.name))
    reference = _reference_path(config)
    extractor = feature_extractor(config.features, resolve_path(config.inception_weights, config), device)
    name = extractor.name  # "FID (Inception)", "FD (digits features)" or "FD (exact features)"
    if reference is None:  # the exact model: its exact data moments
        exact = load_target(config.model.preset).exact
        mu_ref, sigma_ref = exact.mean.numpy(), exact.cov.numpy()
    else:
        mu_ref, sigma_ref = _load_reference(reference, extractor.dims, name)
    checkpoint, classifier = _checkpoint_paths(config, preset)
    identity = {
        "model": {
            "preset": config.model.preset,
            "checkpoint": fingerprint(checkpoint),
            "classifier": fingerprint(classifier),
            "guidance_scale": config.model.guidance_scale,
            "dtype": config.model.dtype,
            "uint8": preset.uint8 if image_shape is not None else None,
        },
        "metric": {"features": config.features, "reference": fingerprint(reference)},  # ode_error is not in the key: it leaves FD alone
    }
    weights = get_feature_kind(config.features).weights
    if weights is not None:
        identity["metric"]["feature_network"] = fingerprint(weights)
    assign_keys(cells, config, identity)
    target = load_target(config.model.preset, str(checkpoint) if checkpoint else None, device, config.model.dtype,
                         str(classifier) if classifier else None, config.model.guidance_scale, **(acceleration or {}))
    return Prepared(
        config=config, cells=cells, skipped=skipped, target=target,
        metric=Metric(name, extractor, extractor.dims, mu_ref, sigma_ref),
        ode_error=ode,
        ode_keys={t_end: ode_reference.reference_key(ode, numerics_fingerprint(), identity["model"], config.seed, t_end, target.sample_dtype)
                  for t_end in sorted({c.t_end for c in cells})} if ode is not None else {},
    )


# ------------------------------------------------------------------------------------ one cell
def shard(cell: Cell, config: BenchConfig, world: World) -> list[list[int]]:
    """This rank's batches of sample indices (see the module docstring)."""
    if cell.adaptive:
        size = config.adaptive_batch
        groups = [list(range(s, min(s + size, config.num))) for s in range(0, config.num, size)]
        return groups[world.rank :: world.size]
    mine = list(range(world.rank, config.num, world.size))
    return [mine[k : k + config.batch] for k in range(0, len(mine), config.batch)]


def grid_cells(prep: Prepared) -> set[str]:
    """Keys of the cells whose first samples are drawn as a grid: per solver, the NFE of `sample_grid`
    (else the nearest larger one it can run, else its largest), and every adaptive cell."""
    grid = prep.config.sample_grid
    if grid is None or not prep.target.is_image:
        return set()
    keys = set()
    for label in dict.fromkeys(c.label for c in prep.cells):
        mine = [c for c in prep.cells if c.label == label]
        if mine[0].adaptive:
            keys.add(mine[0].key)
            continue
        above = [c for c in mine if c.nfe >= grid["nfe"]]
        keys.add(min(above, key=lambda c: c.nfe).key if above else max(mine, key=lambda c: c.nfe).key)
    return keys


def grid_path(out_dir: Path, cell: Cell) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in cell.label)
    return Path(out_dir) / f"samples_{safe}_{'adaptive' if cell.adaptive else f'nfe{cell.nfe}'}.png"


def _features(prep: Prepared, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(features, uint8 NHWC images or None). Images are quantised to 8 bits first, as the papers'
    pipelines do when they save PNGs before computing FID, so --save-images writes what was measured."""
    with torch.inference_mode():
        if not prep.target.is_image:
            return prep.metric.features(x), None
        u8 = to_uint8(x, prep.target.uint8)  # the preset's convention (registry `uint8`)
        return prep.metric.features.from_uint8(u8), u8


def _draw(prep: Prepared, cell: Cell, idx: list[int], world: World, timesteps: list[float] | None):
    """Samples `idx` of a cell (`Target.draw`: the same samples whatever the batch or process), on its tuned
    grid `timesteps` (`cell_timesteps`) or, when None, the solver's own grid from skip and t_end."""
    grid = {"timesteps": timesteps} if timesteps is not None else {"skip": cell.skip, "t_end": cell.t_end}
    return prep.target.draw(idx, prep.config.seed, world.device, cell.spec.name, cell.nfe, **grid, **cell.entry.options)


def run_cell(prep: Prepared, cell: Cell, world: World, out_dir: Path, save_images: bool, keep_grid: bool,
             on_batch=None, references: dict | None = None) -> dict | None:
    """Sample this rank's share of a cell; on rank 0 return the merged record (None elsewhere).

    references: t_end → `ode_reference.Reference`, when the config measures ode_error (`run_cells` loads them)."""
    config, target = prep.config, prep.target
    stats = FeatureStats(prep.metric.dims)
    nfe_used: list[tuple[int, int]] = []  # (samples, NFE) per batch
    err_sum = err_sq = 0.0
    grid_images: list[tuple[int, np.ndarray]] = []
    count = config.sample_grid["count"] if keep_grid else 0
    seconds = sampling_seconds = 0.0  # ode_error is measurement, not sampling: not timed
    diverged = None  # the NaN/inf message of the first batch that diverged: the cell is recorded as diverged
    timesteps = cell_timesteps(prep, cell, world, out_dir)
    for idx in shard(cell, config, world):
        start = time.perf_counter()
        try:
            x, info, _, _ = _draw(prep, cell, idx, world, timesteps)
        except NonFiniteError as e:
            diverged = f"samples {idx[0]}..{idx[-1]}: {e}"
            break
        nfe_used.append((len(idx), info.nfe))
        sampling_seconds += time.perf_counter() - start
        features, u8 = _features(prep, x)
        stats.update(features)
        seconds += time.perf_counter() - start
        if prep.ode_error is not None:
            errors = ode_reference.distances(x, idx, references[cell.t_end])
            err_sum += float(errors.sum())
            err_sq += float((errors**2).sum())
        if u8 is not None:
            grid_images += [(i, u8[k].numpy()) for k, i in enumerate(idx) if i < count]
            if save_images:
                _save_pngs(u8, idx, Path(out_dir) / "images" / cell.key)
        if on_batch is not None:
            on_batch(len(idx))
    parts = world.gather({"stats": stats.state_dict(), "seconds": seconds, "sampling_seconds": sampling_seconds, "nfe_used": nfe_used,
                          "err_sum": err_sum, "err_sq": err_sq, "grid": grid_images, "diverged": diverged})
    if parts is None:
        return None
    merged = FeatureStats.from_state_dict(parts[0]["stats"])
    for part in parts[1:]:
        merged.merge(FeatureStats.from_state_dict(part["stats"]))
    record = _record(prep, cell, merged, parts, world, references)
    if keep_grid:
        images = [img for _, img in sorted((pair for part in parts for pair in part["grid"]), key=lambda pair: pair[0])]
        if images:
            path = grid_path(out_dir, cell)
            with atomic_path(path) as tmp:
                save_grid(torch.from_numpy(np.stack(images)), tmp, nrow=10, scale=max(1, 64 // images[0].shape[0]))
            record["sample_grid"] = path.name
    return record


def measure_ode_error(prep: Prepared, cell: Cell, record: dict, world: World, references: dict, out_dir: Path,
                      on_batch=None) -> dict | None:
    """A finished cell's record with its ode_error measured now (rank 0; None elsewhere): its first samples are
    drawn again — the same samples, up to round-off, since each comes from its own generators — and compared
    with the reference. Its FD and everything else stay as they were."""
    reference = references[cell.t_end]
    timesteps = cell_timesteps(prep, cell, world, out_dir)  # a tuned grid is read back from OUT/grids/
    err_sum = err_sq = 0.0
    for idx in shard(cell, prep.config, world):
        if idx[0] >= prep.ode_error.num:
            continue
        if not cell.adaptive:  # an adaptive group is drawn whole: its samples share one step size
            idx = [i for i in idx if i < prep.ode_error.num]
        errors = ode_reference.distances(_draw(prep, cell, idx, world, timesteps).x, idx, reference)
        err_sum, err_sq = err_sum + float(errors.sum()), err_sq + float((errors**2).sum())
        if on_batch is not None:
            on_batch(len(idx))
    parts = world.gather((err_sum, err_sq))
    if parts is None:
        return None
    return {**record, **ode_reference.record_fields(prep.ode_error, reference, *map(sum, zip(*parts)))}


def cell_timesteps(prep: Prepared, cell: Cell, world: World, out_dir: Path) -> list[float] | None:
    """The cell's tuned grid (a file's; or a `tune:` grid, tuned on rank 0 or loaded from OUT/grids/, and
    sent to every rank), None for the solver's own grid from skip and t_end (dpms/bench/grids.py)."""
    if cell.tune is None:
        return cell.timesteps
    from .grids import tuned_timesteps

    key = {"numerics": cell.settings["numerics"], "model": cell.settings["model"], "solver": cell.spec.name, "nfe": cell.nfe,
           "t_end": cell.t_end, "options": cell.settings["options"], "tune": cell.tune}
    mine = tuned_timesteps(prep.target, cell.spec.name, cell.nfe, cell.t_end, cell.entry.options, cell.tune, key, out_dir) \
        if world.is_main else None
    return world.broadcast(mine)


def _save_pngs(u8: torch.Tensor, idx: list[int], folder: Path) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for k, i in enumerate(idx):
        arr = u8[k].numpy()
        Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).save(folder / f"{i:06d}.png")


def _record(prep: Prepared, cell: Cell, stats, parts: list[dict], world: World, references: dict | None = None) -> dict:
    config = prep.config
    diverged = next((part["diverged"] for part in parts if part.get("diverged")), None)
    # a diverged cell has no value: it is kept (a rerun does not redo it) and shown as "diverged"
    value = None if diverged else float(frechet_distance(stats.mu, stats.sigma, prep.metric.mu_ref, prep.metric.sigma_ref))
    batches = [b for part in parts for b in part["nfe_used"]] or [(1, cell.nfe or 0)]
    used = [n for _, n in batches]
    nfe_used = sum(s * n for s, n in batches) / sum(s for s, _ in batches)
    seconds = max(part["seconds"] for part in parts)  # the slowest rank: the cell's wall time
    shown = report.presentation(cell, config, value)
    record = {
        "key": cell.key,
        "label": shown["label"],
        "solver": cell.spec.name,
        "column": shown["column"],
        "axis": shown["axis"],
        "nfe": cell.nfe,
        "nfe_used": round(nfe_used, 2) if cell.adaptive else int(nfe_used),
        "nfe_used_range": [min(used), max(used)],
        "adaptive": cell.adaptive,
        "stochastic": cell.spec.stochastic,
        "metric": prep.metric.name,
        "fid": value,
        "diverged": diverged,
        "paper": shown["paper"],
        "paper_nfe": shown["paper_nfe"],
        "delta": shown["delta"],
        "confidence": shown["confidence"],
        "num": config.num,
        "seconds": seconds,  # sampling + features of the slowest rank
        "sampling_seconds": max(part["sampling_seconds"] for part in parts),
        "images_per_s": config.num / seconds if seconds > 0 else None,
        "skip": cell.skip,
        "t_end": cell.t_end,
        "options": cell.entry.options,
        "world_size": world.size,
        "device": world.device,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": cell.settings,
    }
    if prep.ode_error is not None and not diverged:
        record.update(ode_reference.record_fields(prep.ode_error, references[cell.t_end], sum(p["err_sum"] for p in parts),
                                                  sum(p["err_sq"] for p in parts)))
    return record


# ------------------------------------------------------------------------------------ all cells
def run_cells(prep: Prepared, out_dir: Path, world: World, save_images: bool = False, console: Console | None = None,
              force: bool = False) -> BenchResult:
    """Run every unfinished cell (rank 0 writes each one at once and refreshes the reports).

    A report in out_dir of another grid or settings is not replaced unless `force` (`report.replaced_report`)."""
    console = console or Console()
    out_dir = Path(out_dir)
    config = prep.config
    if world.is_main:
        refusal = None if force else report.replaced_report(out_dir, prep.cells)
        found = (None, refusal) if refusal else (_load_finished(prep, out_dir, console), None)
    records, refusal = world.broadcast(found if world.is_main else None)
    if refusal:  # every rank stops, not only the one that writes
        raise DpmsError(refusal)
    todo = [c for c in prep.cells if c.key not in records]
    grids = grid_cells(prep)
    computed: list[str] = []
    if world.is_main:
        console.print(
            f"[bold]{config.name}[/]: {len(prep.cells)} cells ({len(records)} already finished, {len(todo)} to run, "
            f"{len(prep.skipped)} impossible), {config.num} samples each, metric {prep.metric.name}, "
            f"{world.size} process{'es' if world.size > 1 else ''} on {world.device} → {out_dir}", highlight=False)
        report.write_reports(out_dir, config, prep.metric.name, prep.cells, records, prep.skipped, world.size)
    keys = prep.ode_keys
    measure = [c for c in prep.cells if c.key in records and keys and ode_reference.needs_measuring(records[c.key], keys[c.t_end])]
    references = {t_end: ode_reference.load_or_compute(prep.target, prep.ode_error, keys[t_end], t_end, config.seed, config.batch,
                                                       out_dir, world, console)
                  for t_end in sorted({c.t_end for c in todo + measure}) if keys}  # checked before any cell
    with _progress(console, world, len(measure) + len(todo), config.num) as progress:
        for n, cell in enumerate(measure, 1):  # finished cells without this ode_error: only that is measured
            progress.start_cell(n, cell, prep.ode_error.num, "ode_error of ")
            record = measure_ode_error(prep, cell, records[cell.key], world, references, out_dir, progress.advance)
            _keep(prep, out_dir, records, record, world)
            progress.finish_cell(record)
        for n, cell in enumerate(todo, len(measure) + 1):
            progress.start_cell(n, cell)
            record = run_cell(prep, cell, world, out_dir, save_images, cell.key in grids, progress.advance, references)
            computed.append(cell.key)
            _keep(prep, out_dir, records, record, world)
            progress.finish_cell(record)
    document = table = None
    if world.is_main:
        document = report.write_reports(out_dir, config, prep.metric.name, prep.cells, records, prep.skipped, world.size)
        table = report.rich_table(config, prep.metric.name, prep.cells, records, prep.skipped)
        if any(r.get("ode_error") is not None for r in records.values()):  # ode_error: its table too
            from rich.console import Group

            table = Group(table, report.rich_table(config, prep.metric.name, prep.cells, records, prep.skipped, quantity="ode_error"))
    ordered = [records[c.key] for c in prep.cells if c.key in records]
    return BenchResult(ordered, prep.skipped, computed, prep.metric.name, document, table, out_dir)


def _keep(prep: Prepared, out_dir: Path, records: dict, record: dict | None, world: World) -> None:
    """Rank 0: write a finished cell at once and refresh the reports (an unwritable folder: one line saying
    that the finished cells are kept)."""
    if not world.is_main:
        return
    records[record["key"]] = record
    try:
        report.write_cell(out_dir, record)
        report.write_reports(out_dir, prep.config, prep.metric.name, prep.cells, records, prep.skipped, world.size)
    except OSError as e:
        kept = sum(report.cell_path(out_dir, key).is_file() for key in records)
        failure = write_failure(e, f"{kept} finished cell{'s' * (kept != 1)} are kept in {out_dir / 'cells'} "
                                   f"and a rerun resumes from them")
        if failure is None:
            raise
        raise failure from None


def _load_finished(prep: Prepared, out_dir: Path, console: Console | None = None) -> dict[str, dict]:
    """The finished cells in out_dir, presented as the current config says (label, published number),
    each cell file rewritten where that changed. Damaged or edited cell files are reported and recomputed."""
    warn = (lambda line: console.print(f"[yellow]{escape(line)}[/]", highlight=False, soft_wrap=True)) if console else None
    records = report.read_finished(out_dir, prep.cells, warn)
    for cell in prep.cells:
        if cell.key in records:
            fresh = report.refresh(records[cell.key], cell, prep.config)
            if fresh != records[cell.key]:
                report.write_cell(out_dir, fresh)
            records[cell.key] = fresh
    return records


class _progress:
    """rich progress on rank 0: cells done, and the current cell with images/s and ETA."""

    def __init__(self, console: Console, world: World, cells: int, num: int):
        self.console, self.world, self.cells, self.num = console, world, cells, num
        self.progress = None

    def __enter__(self):
        if self.world.is_main and self.cells:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TextColumn("ETA"), TimeRemainingColumn(), console=self.console, transient=False,
            )
            self.progress.start()
            self.all = self.progress.add_task("cells", total=self.cells, rate="")
            self.current = self.progress.add_task("", total=self.num, rate="")
        return self

    def start_cell(self, n: int, cell: Cell, total: int | None = None, what: str = "") -> None:
        self.done, self.t0, self.total = 0, time.perf_counter(), total or self.num
        if self.progress is not None:
            what += f"{cell.label} {'adaptive' if cell.adaptive else f'NFE {cell.nfe}'}"
            self.progress.reset(self.current, total=self.total, description=what, rate="")

    def advance(self, samples: int) -> None:
        self.done += samples * self.world.size  # the other ranks advance at the same pace
        if self.progress is not None:
            rate = self.done / max(time.perf_counter() - self.t0, 1e-9)
            self.progress.update(self.current, completed=min(self.done, self.total), rate=f"{rate:.0f} img/s")

    def finish_cell(self, record: dict) -> None:
        if self.progress is not None:
            self.progress.advance(self.all)
            self.progress.console.print(
                f"  {record['label']:>10} {'adaptive' if record['adaptive'] else 'NFE ' + str(record['nfe']):>9}: "
                f"{record['metric']} {'diverged' if record.get('diverged') else report.fmt(record['fid'])}"
                + (f", ode_error {report.fmt(record['ode_error'])}" if record.get("ode_error") is not None else "")
                + f"  (NFE used {record['nfe_used']}, {record['seconds']:.1f} s)",
                highlight=False)

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()
        return False
