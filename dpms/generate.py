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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from . import sampler
from .errors import DpmsError
from .images import atomic_save_npz, save_grid, save_pngs, to_uint8
from .sampler.noise import initial_noise, labels, step_noise_seeds

DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Target:
    """What a sampler needs from a model: a noise predictor per batch, its schedule and sample shape."""

    name: str
    schedule: object
    shape: tuple  # one sample, e.g. (3, 32, 32) or (8,)
    is_image: bool
    make_noise_fn: object  # (labels or None) -> noise_fn(x, t)
    num_classes: int | None = None
    extra: dict = field(default_factory=dict)
    uint8: str = "floor"  # quantisation of image samples (dpms.images.to_uint8), the preset's `uint8`
    memory_format: torch.memory_format = torch.contiguous_format  # of the batch x_T (channels_last: NHWC)

    def in_layout(self, x: torch.Tensor) -> torch.Tensor:
        """A batch of images in the target's memory format (the solvers' elementwise updates keep the
        batch's layout, so x_T is converted once)."""
        return x.contiguous(memory_format=self.memory_format) if len(self.shape) == 3 else x

    def initial_noise(self, idx: list[int], seed: int, device, dtype: torch.dtype) -> torch.Tensor:
        """x_T of samples `idx` (`dpms.sampler.noise.initial_noise`), in the target's memory format."""
        return self.in_layout(initial_noise(self.shape, idx, seed, device=device, dtype=dtype))


def check_network_options(model: str, dtype: str, channels_last: bool, compile: bool, cuda_graphs: bool) -> None:
    """Refuse network options for `gmm`, whose ε is closed-form (float64), not a network."""
    if model == "gmm" and (dtype != "fp32" or channels_last or compile or cuda_graphs):
        raise DpmsError("gmm is the closed-form ε of a Gaussian mixture, computed in float64, not a network: "
                        "--dtype, --compile, --cuda-graphs and --channels-last do not apply to it")


def load_target(
    model: str,
    checkpoint: str | None = None,
    device: str = "cpu",
    dtype: str = "fp32",
    classifier: str | None = None,
    guidance_scale: float = 0.0,
    verify_hash: bool = True,
    channels_last: bool = False,
    compile: bool = False,
    cuda_graphs: bool = False,
) -> Target:
    """Resolve `--model` (the exact `gmm` or a checkpoint preset) into a sampling target.

    channels_last / compile / cuda_graphs: how the network runs (`dpms.models.acceleration.accelerate`).

    Labels are drawn for class-conditional networks, and for an unconditional network guided by a
    classifier (guided-diffusion's 256×256 unconditional model): there they only choose the class whose
    log-probability the guidance ascends.
    """
    if dtype not in DTYPES:
        raise DpmsError(f"unknown --dtype {dtype!r}; use fp32, fp16 or bf16")
    check_network_options(model, dtype, channels_last, compile, cuda_graphs)
    if model == "gmm":
        from .models import GaussianMixture

        gmm = GaussianMixture.default()
        return Target("gmm", gmm.schedule, (gmm.dim,), False, lambda y=None: gmm, extra={"gmm": gmm})
    from .models import checkpoints

    loaded = checkpoints.load(model, checkpoint=checkpoint, device=device, verify_hash=verify_hash)
    if channels_last or compile or cuda_graphs:
        from .models.acceleration import accelerate

        loaded.net = accelerate(loaded.net, channels_last=channels_last, compile=compile, cuda_graphs=cuda_graphs)
    clf = None
    label_classes = loaded.num_classes
    if classifier is not None or guidance_scale:
        if guidance_scale and classifier is None:
            raise DpmsError("--guidance-scale needs --classifier PATH (the noisy classifier checkpoint)")
        clf = checkpoints.load_classifier(loaded.classifier_preset, classifier, device=device, verify_hash=verify_hash)
        label_classes = label_classes or clf.out_channels
    autocast = DTYPES[dtype]

    def make_noise_fn(y=None):
        return loaded.noise_fn(y=y, guidance_scale=guidance_scale, classifier=clf, autocast_dtype=autocast)

    return Target(model, loaded.schedule, tuple(loaded.image_shape), True, make_noise_fn, label_classes,
                  uint8=loaded.preset.uint8, memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def auto_batch_size(target: Target, solver: str, nfe: int | None, device: str = "cpu", limit: int = 8192) -> int:
    """`--batch auto`: on CUDA the largest power of two whose forward pass fits in memory next to the
    copies of the batch the solver keeps (`dpms.speed.solver_copies`, measured), on CPU the power of two
    after which samples/s stop improving by 5 % (`dpms.speed.auto_batch`). Probes with the target's own
    noise predictor (labels, guidance, dtype, acceleration) at t = T/2."""
    from .speed import auto_batch, solver_copies

    dev = torch.device(device)
    dtype = torch.float64 if target.name == "gmm" else torch.float32
    if dev.type != "cuda":
        extra = 0  # the CPU probe times images/s; memory does not bound it
    elif sampler.get_solver(solver).adaptive:
        extra = 8  # the adaptive solvers keep x, x_prev and two candidate steps with their ε's
    else:
        extra = solver_copies(solver, target.schedule, target.shape, nfe or 10, dtype) + 1

    def forward_at(b: int, hold: int = 0):
        held = [torch.empty((b, *target.shape), dtype=dtype, device=dev) for _ in range(hold)]  # noqa: F841 (headroom)
        y = labels(target.num_classes, list(range(b)), 0).to(dev) if target.num_classes else None
        x = target.in_layout(torch.randn((b, *target.shape), dtype=dtype, device=dev))
        with torch.inference_mode():
            return target.make_noise_fn(y)(x, torch.full((b,), 0.5 * target.schedule.T, dtype=dtype, device=dev))

    return auto_batch(forward_at, dev, limit=limit, extra_copies=extra)


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


def _check_labels(target: Target, class_labels: list[int] | None) -> None:
    """Given labels must be classes of the model (or of its guiding classifier): checked before any
    sampling, since a bad index would otherwise surface as an embedding IndexError mid-run."""
    if class_labels is None:
        return
    if target.num_classes is None:
        raise DpmsError(f"model {target.name!r} is not class-conditional; drop --labels")
    if not class_labels:
        raise DpmsError("--labels is empty; give class indices such as 3,207,980, or omit it for random labels")
    from .models.checkpoints import check_labels

    check_labels(torch.tensor(class_labels), target.num_classes, target.name)


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
    _check_labels(target, class_labels)
    _prepare_out(Path(out), force)
    dtype = torch.float64 if target.name == "gmm" else torch.float32
    samples, sample_labels = _allocate(target, num, dtype), np.empty(num, dtype=np.int64) if target.num_classes else None
    nfe_used, t_end_used = [], None
    start = time.perf_counter()
    done = 0
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"), TimeRemainingColumn())
    try:
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task(f"{solver} NFE {nfe}", total=num, rate="")
            while done < num:
                idx = list(range(done, min(done + batch, num)))
                x_T = target.initial_noise(idx, seed, device, dtype)
                y = None
                if target.num_classes:
                    y = torch.tensor([class_labels[i % len(class_labels)] for i in idx]) if class_labels else labels(target.num_classes, idx, seed)
                    y = y.to(device)
                x, info = sampler.sample(
                    target.make_noise_fn(y), target.schedule, x_T, solver=solver, nfe=nfe, skip=skip, t_end=t_end,
                    seeds=step_noise_seeds(idx, seed), return_info=True, **options,
                )
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
