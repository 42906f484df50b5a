"""`dpms speed`: what a sample costs, measured against its floor and against diffusers.

The floor of an ODE sampler is NFE × (one network forward pass at that batch): everything else the
loop does (grid, coefficients, the linear combinations of the updates, and dpms's model wrapper) is
overhead. `measure_speed` times, in one run and interleaved so that all see the same machine state,

* one bare forward pass `net(x, t_in)` at the batch, with the preset's time input t_in (and labels,
  autocast), without dpms's model wrapper (`forward_seconds`, the floor; median of `repeats`),
* the whole dpms sampling loop (`loop_seconds`: `dpms.sample` on dpms's wrapped noise predictor, grid
  construction included: the wrapper is part of what dpms costs),
* the same bare network driven by the diffusers scheduler that implements the same solver at the same
  NFE (`diffusers_seconds`; DDIMScheduler, DPMSolverSinglestepScheduler, DPMSolverMultistepScheduler,
  PNDMScheduler), fed diffusers' timestep as the network's time input, when diffusers is installed,
* both loops again with a null network that returns a precomputed prediction (`null_loop_ms_dpms`,
  `null_loop_ms_diffusers`, milliseconds per loop): the solver's own cost, without the network's noise,

and reports overhead = loop / (NFE × forward) and vs_diffusers = diffusers / dpms (> 1: dpms faster), each
the median over the repeats of that repeat's ratio, with a distribution-free 95 % confidence interval of
that median (`median_interval`; from 6 repeats); vs_diffusers_null is the same ratio of the null loops. The
runners take turns in each repeat, in reverse order every other repeat. Both loops make the same network
calls, so vs_diffusers differs from 1 by the solvers' own costs — tenths of a percent of a loop — and by the
network's timing noise, which on a shared CPU is several percent: there the null-network ratio decides
which solver costs more, and the interval says whether the whole-loop ratio could be ≥ 1.
Peak memory of the loop is reported next to the peak of one forward pass: the difference, in units
of the batch's size, is what the solver keeps alive (its O(order) history).

A 50k-sample FID run costs the sampling (`sampling_50k_seconds`) plus the feature extraction
(`features_50k_seconds`: images quantised to 8 bits as `dpms bench` does, then the FID network — pytorch-fid's
InceptionV3 with random weights, which cost the same as the real ones, resizing to 299×299 — or the digits
feature network for `digits`, or none for `gmm`), timed at `feature_batch`; `fid50k_seconds` is their sum.
"""

from __future__ import annotations

import math
import statistics
import warnings
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from . import sampler
from .errors import DpmsError
from .evaluation.kinds import default_feature_kind
from .images import to_uint8
from .memory import AllocationTracker, auto_batch, peak_bytes, solver_copies, timed  # noqa: F401 (also dpms.speed.*, their old home)
from .models.checkpoints import get_preset
from .sampler.multistep import lowers_final_order
from .target import DTYPES, load_target

# The solvers diffusers also implements, read from their registrations (SolverSpec.diffusers): solver ->
# (diffusers scheduler class name, its options, NFE -> num_inference_steps). An option value AS_DPMS is
# replaced by what dpms's solver does at that NFE (`diffusers_options`).
AS_DPMS = sampler.registry.LOWER_ORDER_FINAL_AS_DPMS
DIFFUSERS_EQUIVALENT = {name: (spec.diffusers.scheduler, dict(spec.diffusers.options), spec.diffusers.inference_steps)
                        for name, spec in sampler.solvers().items() if spec.diffusers is not None}


@dataclass
class SpeedReport:
    model: str
    solver: str
    nfe: int  # network calls per sample, counted
    batch: int
    device: str
    dtype: str  # what the network ran in: fp32/fp16/bf16 (autocast), fp64 for gmm's closed-form ε
    compile: bool
    channels_last: bool
    repeats: int
    forward_seconds: float  # median, one bare network call net(x, t_in) at `batch` (no dpms wrapper): the floor
    loop_seconds: float  # median, one whole dpms sampling loop at `batch` (dpms's wrapper included)
    seconds_per_image: float
    images_per_second: float
    overhead: float  # loop / (nfe × forward); 1.0 is the floor
    solver_dtype: str = "fp32"  # dtype of x and of the solver's arithmetic
    diffusers_scheduler: str | None = None
    diffusers_seconds: float | None = None  # median, diffusers' scheduler driving the bare network
    vs_diffusers: float | None = None  # diffusers time / dpms time
    vs_diffusers_ci: tuple | None = None  # distribution-free ≥ 95 % interval of that median (`median_interval`)
    overhead_ci: tuple | None = None  # the same for the overhead
    null_loop_ms_dpms: float | None = None  # median ms per dpms loop with a network returning a precomputed tensor
    null_loop_ms_diffusers: float | None = None  # the same for diffusers' scheduler
    vs_diffusers_null: float | None = None  # null_loop_ms_diffusers / null_loop_ms_dpms (median of per-repeat ratios)
    peak_forward_bytes: int | None = None  # memory allocated by one forward pass at `batch`
    peak_loop_bytes: int | None = None  # memory allocated during the whole sampling loop
    batch_bytes: int = 0  # one copy of the batch
    solver_state_batches: float | None = None  # (peak_loop − peak_forward) / batch_bytes
    memory_method: str = ""
    sampling_50k_seconds: float | None = None  # 50,000 × seconds_per_image
    feature_network: str | None = None  # what the FID's features are computed with
    feature_batch: int | None = None  # the batch the feature extraction was timed at
    features_50k_seconds: float | None = None  # 50,000 images: 8-bit quantisation + feature network
    fid50k_seconds: float | None = None  # sampling_50k_seconds + features_50k_seconds
    note: str = ""
    samples: dict = field(default_factory=dict)  # every timing, seconds

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------- timing
def median_interval(values, level: float = 0.95) -> tuple[float, float] | None:
    """A distribution-free confidence interval (coverage ≥ level) for the median of i.i.d. `values`:
    (x₍ₖ₎, x₍ₙ₊₁₋ₖ₎) of the sorted values, with k the largest for which P(Binomial(n, ½) < k) ≤ (1 − level)/2.
    None when n is too small for any interval to reach that coverage (n < 6 at 95 %)."""
    xs = sorted(values)
    n = len(xs)
    tail, k = 0.0, 0  # tail = P(Binomial(n, ½) ≤ k − 1)
    while True:
        nxt = tail + math.comb(n, k) / 2**n
        if nxt > (1 - level) / 2:
            break
        tail, k = nxt, k + 1
    return None if k == 0 else (xs[k - 1], xs[n - k])


# ------------------------------------------------------------------------------------- diffusers
def diffusers_options(solver: str, nfe: int):
    """(scheduler class name, its constructor options, NFE -> num_inference_steps) for `solver` at `nfe`,
    with AS_DPMS resolved to what dpms's solver does at that NFE."""
    name, options, steps_for = DIFFUSERS_EQUIVALENT[solver]
    mode = sampler.get_solver(solver).options.get("lower_order_final")
    options = {k: (lowers_final_order(mode, steps_for(nfe)) if v == AS_DPMS else v) for k, v in options.items()}
    return name, options, steps_for


def _diffusers_loop(solver: str, schedule, network, nfe: int, device: torch.device, time_input_of=None):
    """A function x_T -> x_0 running diffusers' scheduler for `solver`, calling `network(x, t_in)`.

    The scheduler gets the schedule's own ᾱ table (for continuous schedules, its values at
    t_n = (n+1)/1000). Its step index n reaches the network as t_in = time_input_of(t_n), t_n = (n+1)/N:
    with the presets' time inputs (`model_wrapper.time_input`) that is n itself for the DDPM-style
    networks (time map 'discrete', scale 1000), as a diffusers pipeline hands its UNet the timestep, and
    999·t_n for score_sde's; without time_input_of the network gets t_n (a noise_fn, the GMM). The inputs
    of a run's timesteps are computed once per run, after set_timesteps, as a pipeline would. A network
    output in another dtype than x (autocast) is cast to x's dtype, so that the scheduler's state keeps
    the precision of dpms's (diffusers would otherwise cast its sample to the model output's dtype).
    """
    time_input_of = time_input_of or (lambda t: t)
    import diffusers

    name, options, steps_for = diffusers_options(solver, nfe)
    steps = steps_for(nfe)
    if steps < 1:
        raise DpmsError(f"diffusers' {name} cannot run {solver} at NFE {nfe}")
    N = schedule.N if schedule.is_discrete else 1000
    t_n = torch.arange(1, N + 1, dtype=torch.float64) / N
    alphas_cumprod = schedule.alpha(t_n) ** 2
    betas = 1.0 - alphas_cumprod / torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    with warnings.catch_warnings():  # diffusers deprecates algorithm_type="dpmsolver" (noise prediction)
        warnings.simplefilter("ignore", FutureWarning)
        scheduler = getattr(diffusers, name)(num_train_timesteps=N, trained_betas=betas.numpy(), **options)

    def run(x: Tensor) -> Tensor:
        scheduler.set_timesteps(steps, device=device)
        timesteps = scheduler.timesteps
        t_in = time_input_of(((timesteps.to(torch.float64) + 1) / N).to(x.dtype))
        for n, t_in_n in zip(timesteps, t_in):
            out = network(x, t_in_n.expand(x.shape[0]))
            x = scheduler.step(out if out.dtype == x.dtype else out.to(x.dtype), n, x).prev_sample
        return x

    def count_calls() -> int:
        scheduler.set_timesteps(steps, device=device)
        return len(scheduler.timesteps)

    return run, name, count_calls


# ------------------------------------------------------------------------------------- targets
def speed_target(*args, **kwargs):
    """Gone: `dpms speed` times a `dpms.target.Target` (`noise_fn` → `make_noise_fn(y, net)`, `network(y)`)."""
    raise DpmsError("dpms.speed.speed_target is gone; use dpms.target.load_target(model, checkpoint, device, "
                    "random_weights=...), whose Target has make_noise_fn(y, net), network(y) and time_input(t)")


# ------------------------------------------------------------------------------------- FID features
FEATURE_BATCH_LIMIT = {"cpu": 50, "cuda": 500}  # pytorch-fid's default batch is 50


def feature_extractor(model: str, device: torch.device):
    """(description, images in [−1, 1] -> features) of the FID pipeline of `model`, with random weights
    (the cost of the trained ones) so that nothing is read or downloaded.

    The feature kind is the model's default (`dpms.evaluation.default_feature_kind`: pytorch-fid's InceptionV3
    up to pool3, which resizes to 299×299; the digits feature network for the 1×8×8 digits; the samples
    themselves for `gmm`). Images are first quantised to 8 bits exactly as `dpms bench` does
    (`dpms.images.to_uint8` with the preset's uint8 convention, then the extractor's `from_uint8`).
    """
    preset = get_preset(model)
    kind = default_feature_kind(tuple(preset.image_shape), preset.kind != "exact")
    extractor = kind.random_weights(device)
    if not kind.images:
        return kind.timing, extractor
    return kind.timing, lambda x: extractor.from_uint8(to_uint8(x, preset.uint8))


def feature_cost(model: str, shape: tuple[int, ...], device: torch.device, batch: int, repeats: int) -> dict:
    """Seconds the FID feature extraction of 50,000 samples takes: `feature_extractor` timed at
    min(batch, FEATURE_BATCH_LIMIT) in fp32 (pytorch-fid's precision), median of min(repeats, 3) runs."""
    description, extract = feature_extractor(model, device)
    feature_batch = min(batch, FEATURE_BATCH_LIMIT.get(device.type, FEATURE_BATCH_LIMIT["cuda"]))
    images = torch.rand((feature_batch, *shape), generator=torch.Generator().manual_seed(0)).mul(2).sub(1).to(device)

    def run():
        with torch.inference_mode():
            extract(images)

    run()  # warm-up
    samples = [timed(run, device) for _ in range(min(repeats, 3))]
    return {"network": description, "batch": feature_batch, "samples": samples,
            "seconds_50k": 50_000 * statistics.median(samples) / feature_batch}


# ------------------------------------------------------------------------------------- main
def measure_speed(
    model: str = "digits",
    solver: str = "dpm3",
    nfe: int = 10,
    batch: int | str = 256,
    device: str = "cpu",
    dtype: str = "fp32",
    compile: bool = False,
    cuda_graphs: bool = False,
    channels_last: bool = False,
    repeats: int = 5,
    checkpoint: str | None = None,
    random_weights: bool = False,
    diffusers: bool = True,
    memory: bool = True,
    progress=None,
    max_batch: int = 8192,
    timesteps: list[float] | None = None,
) -> SpeedReport:
    """Time `solver` at `nfe` against one forward pass and against diffusers (see the module doc).

    timesteps: a tuned grid (`dpms tune-grid`) for dpms's loops; diffusers keeps its own grid of the same NFE
    (a grid changes which times are evaluated, not what a step costs)."""
    if dtype not in DTYPES:
        raise DpmsError(f"unknown --dtype {dtype!r}; use fp32, fp16 or bf16")
    if repeats < 1:
        raise DpmsError(f"--repeats must be at least 1, got {repeats}")
    spec = sampler.get_solver(solver)
    if spec.adaptive or spec.stochastic:
        raise DpmsError(f"`dpms speed` times fixed-NFE ODE solvers; {solver} is {'adaptive' if spec.adaptive else 'stochastic'}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DpmsError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    if get_preset(model).kind == "classifier":
        raise DpmsError(f"{model} is a classifier preset; `dpms speed` times diffusion models")
    target = load_target(model, checkpoint, device, dtype, channels_last=channels_last, compile=compile,
                         cuda_graphs=cuda_graphs, random_weights=random_weights)
    schedule, shape, x_dtype = target.schedule, target.shape, target.sample_dtype
    sampler.validate(solver, schedule, nfe=nfe, timesteps=timesteps)  # impossible NFE: one line, before any work

    def inputs(b: int) -> Tensor:
        g = torch.Generator().manual_seed(0)
        return target.in_layout(torch.randn((b, *shape), generator=g, dtype=x_dtype).to(dev))

    def batch_labels(b: int) -> Tensor | None:
        return target.labels(list(range(b)), 0, dev)

    def mid_time_input(b: int) -> Tensor:
        return target.time_input(torch.full((b,), 0.5, dtype=x_dtype, device=dev))

    def forward_at(b: int, hold: int = 0):
        held = [torch.empty((b, *shape), dtype=x_dtype, device=dev) for _ in range(hold)]  # noqa: F841 (headroom)
        with torch.inference_mode():
            return target.network(batch_labels(b))(inputs(b), mid_time_input(b))

    if batch == "auto":
        extra = solver_copies(solver, schedule, shape, nfe, x_dtype) + 2 if dev.type == "cuda" else 0
        batch = auto_batch(forward_at, dev, limit=max_batch, extra_copies=extra)
    batch = int(batch)
    if batch < 1:
        raise DpmsError(f"--batch must be positive or 'auto', got {batch}")
    y = batch_labels(batch)
    noise_fn = target.make_noise_fn(y)  # dpms's wrapper: part of what dpms costs
    network = target.network(y)  # the bare call: the floor, and what diffusers drives
    x_T = inputs(batch)
    t_in_mid = mid_time_input(batch)
    with torch.inference_mode():  # the null network's answer: a precomputed prediction in x's dtype
        eps_null = network(x_T, t_in_mid).to(x_dtype)

    def forward():
        with torch.inference_mode():
            network(x_T, t_in_mid)

    info = {}

    def loop():
        _, info["sample"] = sampler.sample(noise_fn, schedule, x_T, solver=solver, nfe=nfe, timesteps=timesteps, return_info=True)

    null_network = lambda x, t, **kwargs: eps_null  # noqa: E731
    null_noise_fn = target.make_noise_fn(y, net=null_network)  # the same wrapper around it

    def null_loop():
        sampler.sample(null_noise_fn, schedule, x_T, solver=solver, nfe=nfe, timesteps=timesteps)

    runners = {"forward": forward, "dpms": loop, "null_dpms": null_loop}
    scheduler_name = None
    note = ["dpms runs the tuned grid of --timesteps; diffusers its own grid of the same NFE"] if timesteps is not None else []
    if diffusers and solver in DIFFUSERS_EQUIVALENT:
        try:
            run, scheduler_name, count_calls = _diffusers_loop(solver, schedule, network, nfe, dev, target.time_input)
            run_null, _, _ = _diffusers_loop(solver, schedule, null_network, nfe, dev, target.time_input)
        except ImportError:
            note.append("diffusers is not installed: vs_diffusers not measured")
        except DpmsError as e:
            note.append(f"{e}: vs_diffusers not measured")
        else:
            if count_calls() != nfe:
                raise RuntimeError(f"internal error: diffusers' {scheduler_name} makes {count_calls()} calls for NFE {nfe}")

            def diffusers_run():
                with torch.inference_mode():
                    run(x_T)

            def diffusers_null():
                with torch.inference_mode():
                    run_null(x_T)

            runners["diffusers"] = diffusers_run
            runners["null_diffusers"] = diffusers_null
    elif diffusers:
        note.append(f"diffusers has no scheduler for {solver}: vs_diffusers not measured")
    for fn in runners.values():  # warm-up (and compilation)
        fn()
    # A null loop takes a millisecond or so: each of its timings is the mean over enough back-to-back runs
    # to last ≥ 20 ms, so that timer resolution and single hiccups do not decide the ratio.
    inner = {name: 1 for name in runners}
    for name in ("null_dpms", "null_diffusers"):
        if name in runners:
            inner[name] = max(1, min(1000, math.ceil(0.02 / max(timed(runners[name], dev), 1e-6))))
    timings = {name: [] for name in runners}
    order = list(runners)
    for i in range(repeats):
        # interleaved, so every runner sees the same machine state, and in reverse order every other
        # repeat (A B … B A), so that a drift within a repeat favours no runner
        for name in order if i % 2 == 0 else order[::-1]:
            fn = runners[name]
            k = inner[name]
            timings[name].append(timed(fn if k == 1 else lambda: [fn() for _ in range(k)], dev) / k)
        if progress is not None:
            progress(i + 1, repeats)
    median = {name: statistics.median(values) for name, values in timings.items()}
    nfe_used = info["sample"].nfe
    # Ratios are medians of per-repeat ratios: the runs of one repeat are back to back, so they share the
    # machine's state, and the ratio cancels the drift that moves every median by several percent.
    ratios = lambda a, b: [x / y for x, y in zip(timings[a], timings[b])] if a in timings else None  # noqa: E731
    ratio = lambda a, b: statistics.median(ratios(a, b)) if a in timings else None  # noqa: E731
    overheads = [loop / (nfe_used * fwd) for loop, fwd in zip(timings["dpms"], timings["forward"])]
    overhead = statistics.median(overheads)
    sampling_50k = 50_000 * median["dpms"] / batch
    features = feature_cost(model, shape, dev, batch, repeats)
    report = SpeedReport(
        model=model, solver=solver, nfe=nfe_used, batch=batch, device=str(dev), dtype=target.network_dtype,
        compile=compile or cuda_graphs, channels_last=channels_last, repeats=repeats,
        forward_seconds=median["forward"], loop_seconds=median["dpms"],
        seconds_per_image=median["dpms"] / batch, images_per_second=batch / median["dpms"],
        overhead=overhead, solver_dtype={torch.float64: "fp64", torch.float32: "fp32"}[x_dtype],
        diffusers_scheduler=scheduler_name,
        diffusers_seconds=median.get("diffusers"),
        vs_diffusers=ratio("diffusers", "dpms"),
        vs_diffusers_ci=median_interval(ratios("diffusers", "dpms")) if "diffusers" in timings else None,
        overhead_ci=median_interval(overheads),
        null_loop_ms_dpms=1e3 * median["null_dpms"],
        null_loop_ms_diffusers=1e3 * median["null_diffusers"] if "null_diffusers" in median else None,
        vs_diffusers_null=ratio("null_diffusers", "null_dpms"),
        batch_bytes=x_T.numel() * x_T.element_size(),
        sampling_50k_seconds=sampling_50k,
        feature_network=features["network"], feature_batch=features["batch"],
        features_50k_seconds=features["seconds_50k"], fid50k_seconds=sampling_50k + features["seconds_50k"],
        note="; ".join(note),
        samples={**timings, "features": features["samples"]},
    )
    if memory:
        report.peak_forward_bytes, report.memory_method = peak_bytes(forward, dev)
        report.peak_loop_bytes, _ = peak_bytes(loop, dev)
        report.solver_state_batches = (report.peak_loop_bytes - report.peak_forward_bytes) / report.batch_bytes
    return report


def _interval(ci) -> str:
    return f" [95 % CI {ci[0]:.3f}–{ci[1]:.3f}]" if ci else ""


def format_report(r: SpeedReport) -> list[str]:
    """Human-readable lines of a report."""
    mib = lambda b: f"{b / 2**20:.1f} MiB" if b is not None else "—"  # noqa: E731
    precision = f"network {r.dtype}, solver {r.solver_dtype}" if r.dtype != r.solver_dtype else r.dtype
    lines = [
        f"{r.model} · {r.solver} · NFE {r.nfe} · batch {r.batch} · {r.device} {precision}"
        + (" · compiled" if r.compile else "") + (" · channels_last" if r.channels_last else ""),
        f"bare forward {r.forward_seconds * 1e3:.2f} ms · dpms loop {r.loop_seconds * 1e3:.2f} ms · "
        f"overhead {r.overhead:.3f}{_interval(r.overhead_ci)} (loop / (NFE × bare forward)) · {r.images_per_second:.1f} images/s · "
        f"{r.seconds_per_image * 1e3:.3f} ms/image",
        f"solver alone (null network): dpms {r.null_loop_ms_dpms:.3f} ms/loop"
        + (f", diffusers {r.null_loop_ms_diffusers:.3f} ms/loop → {r.vs_diffusers_null:.2f}×" if r.null_loop_ms_diffusers is not None else ""),
    ]
    if r.vs_diffusers is not None:
        lines.append(f"diffusers {r.diffusers_scheduler} on the bare network: {r.diffusers_seconds * 1e3:.2f} ms → "
                     f"vs_diffusers {r.vs_diffusers:.3f}{_interval(r.vs_diffusers_ci)} (> 1: dpms faster)")
    lines.append(f"50k-sample FID run ≈ {r.fid50k_seconds / 60:.1f} min: sampling {r.sampling_50k_seconds / 60:.1f} min + "
                 f"features {r.features_50k_seconds / 60:.1f} min ({r.feature_network}, timed at batch {r.feature_batch})")
    if r.peak_loop_bytes is not None:
        lines.append(f"peak memory: forward {mib(r.peak_forward_bytes)}, sampling loop {mib(r.peak_loop_bytes)}; "
                     f"solver state {r.solver_state_batches:.1f} × the batch ({mib(r.batch_bytes)})")
    if r.note:
        lines.append(r.note)
    return lines

