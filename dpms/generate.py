"""`dpms sample`: draw samples from a model with any solver and write them to disk.

Sample i always starts from the same x_T (derived from (seed, i) by `dpms.sampler.noise`), so the
output does not depend on the batch size, up to floating-point round-off (a batched network may sum in
another order; `benchmarks/roundoff.py` measures it). PNGs are written batch by batch and every sample goes into one
preallocated array (uint8 for images); the `.npz` is written atomically at the end, or with what was
finished when the run is interrupted. It holds `samples` (N×H×W×C uint8 for images) and, for labelled
runs, `labels`.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from . import sampler
from .errors import DpmsError
from .images import atomic_save_npz, save_grid, save_pngs, to_uint8
from .target import DTYPES, Target, auto_batch_size, check_network_options, load_target  # noqa: F401 (dpms.generate.*: their old home)


def _allocate(target: Target, num: int, dtype: torch.dtype) -> np.ndarray:
    """Room for every sample, filled batch by batch: uint8 NHWC for images (what PNGs and FID use, a
    quarter of float32), the solver's floats for vectors. No float copy of all samples is ever held."""
    if target.is_image:
        channels, height, width = target.shape
        return np.empty((num, height, width, channels), dtype=np.uint8)
    return np.empty((num, *target.shape), dtype=np.float64 if dtype == torch.float64 else np.float32)


def _npz_arrays(samples: np.ndarray, sample_labels: np.ndarray | None) -> dict[str, np.ndarray]:
    """The arrays of samples.npz: `samples` (and `labels`), once: npz cannot alias an entry, and a second
    copy under guided-diffusion's names would double a 50k-image file (`dpms fid` and `dpms stats` read
    guided-diffusion's `arr_0` files too)."""
    return {"samples": samples} if sample_labels is None else {"samples": samples, "labels": sample_labels}


def _prepare_out(out: Path, force: bool) -> None:
    """Check the folder before any sampling; with `force`, remove the earlier run's images."""
    from .outputs import check_out_dir, refuse_to_replace

    check_out_dir(out)
    refuse_to_replace([out / "samples.npz", out / "images"], force, "samples of an earlier run",
                      "pass --out with a new folder")
    for old in [*(out / "images").glob("*.png"), out / "grid.png"] if force else []:
        old.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def generate(
    target: Target,
    solver: str,
    nfe: int | None,
    num: int,
    batch: int,
    seed: int,
    out: Path,
    device: str = "cpu",
    skip: str | None = None,
    t_end: float | None = None,
    class_labels: list[int] | None = None,
    save_png: bool = True,
    console: Console | None = None,
    force: bool = False,
    **options,
) -> dict:
    """Sample `num` samples in batches; write out/samples.npz (+ PNGs and grid.png for images).

    A folder that already holds samples is refused unless `force`, which first removes the earlier run's
    PNGs (a smaller run would leave stale ones beside the new samples.npz)."""
    console = console or Console()
    sampler.validate(solver, target.schedule, nfe=nfe, skip=skip, t_end=t_end, **options)  # fail before any work
    if num < 1 or batch < 1:
        raise DpmsError(f"--num and --batch must be positive, got {num} and {batch}")
    target.check_labels(class_labels)
    _prepare_out(Path(out), force)
    samples, sample_labels = _allocate(target, num, target.sample_dtype), np.empty(num, dtype=np.int64) if target.num_classes else None
    nfe_used, t_end_used = [], None
    start = time.perf_counter()
    done = 0
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"), TimeRemainingColumn())
    try:
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task(f"{solver} NFE {nfe}", total=num, rate="")
            while done < num:
                idx = list(range(done, min(done + batch, num)))
                x, info, _, y = target.draw(idx, seed, device, solver, nfe, skip=skip, t_end=t_end,
                                            class_labels=class_labels, **options)
                nfe_used.append(info.nfe)
                if t_end_used is None:  # the grid's last time: --t-end, else the schedule's default (1/N, 1e-3)
                    t_end_used = float(info.timesteps[-1])
                rows = slice(done, done + len(idx))
                if target.is_image:
                    imgs = to_uint8(x, target.uint8)
                    samples[rows] = imgs.numpy()
                    if save_png:
                        save_pngs(imgs, out / "images", done)
                else:
                    samples[rows] = x.cpu().numpy()
                if y is not None:
                    sample_labels[rows] = y.cpu().numpy()
                done += len(idx)
                rate = done / (time.perf_counter() - start)
                progress.update(task, completed=done, rate=f"{rate:.1f} samples/s")
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted after {done} of {num} samples; saving them[/]")
    seconds = time.perf_counter() - start
    if done == 0:
        raise DpmsError("no samples were finished; nothing written")
    finished = samples[:done]  # views: an interrupted run saves what it finished, without copies
    try:
        atomic_save_npz(out / "samples.npz", **_npz_arrays(finished, None if sample_labels is None else sample_labels[:done]))
        if target.is_image:
            save_grid(torch.from_numpy(finished[:64]), out / "grid.png", scale=max(1, 64 // finished.shape[1]))
    except OSError as e:
        from .outputs import write_failure

        pngs = len(list((out / "images").glob("*.png"))) if save_png and target.is_image else 0
        failure = write_failure(e, "samples.npz was not written" + (f" ({pngs} PNGs are in {out / 'images'})" if pngs else ""))
        if failure is None:
            raise
        raise failure from None
    summary = {
        "model": target.name,
        "solver": solver,
        "nfe": nfe,
        "nfe_used_per_batch": sorted(set(nfe_used)),
        "t_end": t_end_used,
        "num": done,
        "interrupted": done < num,
        "seconds": seconds,
        "out": str(out),
    }
    return summary
