"""Train an ε-prediction network on a discrete VP schedule with DDPM's simple loss.

DDPM (Ho et al. 2020, Algorithm 1 and Eq. 14, "L_simple"): draw a step n uniformly from {0, …, N−1}
and ε ~ N(0, I), form x_n = α_n x₀ + σ_n ε, and regress the network's output ε_θ(x_n, n) on ε with
the mean squared error. dpms's discrete schedules put step n at t_n = (n + 1)/N, so
α_n = schedule.alpha(t_n) = sqrt(ᾱ_n) and σ_n = sqrt(1 − ᾱ_n) exactly; the network takes the integer n,
which is what `wrap_model(..., time_map="discrete")` feeds it at sampling time.

Everything random is drawn from generators seeded by `seed` (data order, steps, noise) and from the
global RNG seeded by the caller (initialisation, dropout), so a run is reproducible on one machine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import Tensor, nn

from ..atomic import atomic_write
from ..errors import DpmsError
from ..schedule import NoiseSchedule


class WeightEMA:
    """Exponential moving average of a model's floating-point state (Polyak averaging, as DDPM uses).

    The decay warms up as min(decay, (1 + k)/(10 + k)) after k updates so that the average is not
    dominated by the random initialisation when training is short.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    def update(self, model: nn.Module) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        with torch.no_grad():
            for key, value in model.state_dict().items():
                if value.dtype.is_floating_point:
                    self.shadow[key].lerp_(value.float(), 1.0 - decay)
                else:
                    self.shadow[key].copy_(value)
        self.updates += 1

    def state_dict(self) -> dict[str, Tensor]:
        """A copy of the averaged weights, on the CPU wherever they were averaged."""
        return {k: v.to("cpu", copy=True) for k, v in self.shadow.items()}


@dataclass
class TrainResult:
    ema_state_dict: dict[str, Tensor]
    losses: list[float] = field(default_factory=list)  # mean batch loss of every step
    wall_time_s: float = 0.0
    resumed_from: list[int] = field(default_factory=list)  # the steps an interrupted run was resumed at

    def final_loss(self, window: int = 500) -> float:
        """Mean training loss over the last `window` steps (the per-step loss is noisy because n is random)."""
        tail = self.losses[-window:]
        return sum(tail) / len(tail)


LR_DECAYS = ("constant", "cosine")


def learning_rate(step: int, base_lr: float, warmup_steps: int, total_steps: int | None = None,
                  decay: str = "constant") -> float:
    """Linear warm-up from base_lr/warmup_steps to base_lr, then constant (DDPM's schedule) or, with
    decay="cosine", half a cosine from base_lr down to 0 at `total_steps` (Loshchilov & Hutter 2017, Eq. 5
    with η_min = 0 and one cycle), so that the last weights are not those of a noisy constant-rate walk."""
    if decay not in LR_DECAYS:
        raise ValueError(f"learning-rate decay must be one of {', '.join(LR_DECAYS)}, got {decay!r}")
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if decay == "constant" or not total_steps or total_steps <= warmup_steps:
        return base_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


class BatchOrder:
    """Endless stream of index batches: a fresh permutation each epoch, the incomplete last batch dropped.
    Its position (this epoch's order, the next start) is part of a training state (`state_dict`), so that a
    resumed run draws the same batches as an uninterrupted one."""

    def __init__(self, num_items: int, batch_size: int, generator: torch.Generator):
        if batch_size > num_items:
            raise ValueError(f"batch_size {batch_size} is larger than the data set ({num_items} items)")
        self.num_items, self.batch_size, self.generator = num_items, batch_size, generator
        self.order: Tensor | None = None
        self.start = 0

    def __next__(self) -> Tensor:
        if self.order is None or self.start + self.batch_size > self.num_items:
            self.order, self.start = torch.randperm(self.num_items, generator=self.generator), 0
        batch = self.order[self.start : self.start + self.batch_size]
        self.start += self.batch_size
        return batch

    def state_dict(self) -> dict:
        return {"order": self.order, "start": self.start}

    def load_state_dict(self, state: dict) -> None:
        self.order, self.start = state["order"], state["start"]


def simple_loss(model: nn.Module, x0: Tensor, steps: Tensor, noise: Tensor, alphas: Tensor, sigmas: Tensor,
                dequantisation_std: float = 0.0, augment_labels: Tensor | None = None) -> Tensor:
    """L_simple = E‖ε − ε_θ(α_n x₀ + σ_n ε, n)‖² averaged over pixels (DDPM Eq. 14).

    With `dequantisation_std` = d > 0, x₀ are quantised levels and the data are x₀ + d·z (Gaussian
    dequantisation, z ~ N(0, I)), folded into the forward noise: α_n(x₀ + d z) + σ_n ε = α_n x₀ + τ_n ε'
    with τ_n = √(α_n² d² + σ_n²), so x_n is drawn exactly as with the dequantised data. The target is then
    E[ε | x_n, x₀] = (σ_n/τ_n) ε' instead of the drawn ε: the same minimiser (E[ε | x_n] is unchanged, by the
    tower rule), but without the part of ε that no network can predict. That part dominates where σ_n ≲ α_n d
    (the target's variance falls from 1 to σ_n²/τ_n², 0.09 at n = 0 for the digits), which is where the
    learned ODE's last stretch is made.

    `augment_labels`, if given, go to the network with its inputs (`model(x_n, n, augment_labels=...)`): the
    parameters of the augmentation each x₀ was drawn with (non-leaking augmentation, see `train_noise_predictor`).
    """
    shape = (-1,) + (1,) * (x0.dim() - 1)
    alpha, sigma = alphas[steps].reshape(shape), sigmas[steps].reshape(shape)
    if dequantisation_std == 0.0:
        x_n, target = alpha * x0 + sigma * noise, noise
    else:
        total = torch.sqrt((alpha * dequantisation_std) ** 2 + sigma**2)
        x_n, target = alpha * x0 + total * noise, (sigma / total) * noise
    output = model(x_n, steps) if augment_labels is None else model(x_n, steps, augment_labels=augment_labels)
    return (output - target).pow(2).mean()


def step_coefficients(schedule: NoiseSchedule, dtype=torch.float32) -> tuple[Tensor, Tensor]:
    """(α_n, σ_n) for n = 0..N−1 at the schedule's discrete times t_n = (n + 1)/N."""
    if not schedule.is_discrete:
        raise ValueError(f"training needs a discrete schedule, got {schedule.name or schedule.kind}")
    t = torch.arange(1, schedule.N + 1, dtype=torch.float64) / schedule.N
    return schedule.alpha(t).to(dtype), schedule.sigma(t).to(dtype)


def step_probabilities(schedule: NoiseSchedule, lambda_share: float = 0.0) -> Tensor | None:
    """Probabilities of drawing step n in training: DDPM's uniform p_n = 1/N (None), or, with
    `lambda_share` = w > 0, the mixture (1 − w)/N + w·Δλ_n/(λ_0 − λ_{N−1}), where Δλ_n is the width in
    half-log-SNR of step n's cell (the gradient of λ over n). The second part is uniform in λ.

    Why: on the linear schedule only 0.8 % of uniform steps have σ/α < 0.03, where the learned ODE's
    last stretch is decided (a pixel's spread around its grey level), while uniform-in-λ gives that range
    11 %; the loss stays L_simple, only where it is sampled moves (as importance sampling of t does in
    Nichol & Dhariwal 2021, Sec. 3.3, and EDM's σ distribution, Karras et al. 2022, Sec. 5)."""
    if not 0.0 <= lambda_share <= 1.0:
        raise ValueError(f"lambda_share must be in [0, 1], got {lambda_share}")
    if lambda_share == 0.0:
        return None
    t = torch.arange(1, schedule.N + 1, dtype=torch.float64) / schedule.N
    width = torch.gradient(schedule.lambda_(t))[0].abs()
    return (1.0 - lambda_share) / schedule.N + lambda_share * width / width.sum()


def load_training_state(path: Path, identity: dict) -> dict:
    """The training state at `path` (tensors, numbers and strings only: loaded with weights_only), checked to
    belong to the run described by `identity`."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which, never run it
        raise DpmsError(f"{path} is not a dpms training state ({type(exc).__name__}); delete it to start the run afresh") from exc
    if not isinstance(state, dict) or state.get("identity") != identity:
        theirs = state.get("identity", {}) if isinstance(state, dict) else {}
        differ = sorted(k for k in set(identity) | set(theirs) if identity.get(k) != theirs.get(k))
        raise DpmsError(f"{path} holds the state of a run with other settings ({', '.join(differ) or 'unknown'}); "
                        "resume it with the same options, or delete it to start this run afresh")
    return state


def train_noise_predictor(
    model: nn.Module,
    images: Tensor,
    schedule: NoiseSchedule,
    *,
    steps: int,
    batch_size: int = 128,
    lr: float = 2e-4,
    warmup_steps: int = 500,
    weight_decay: float = 0.0,
    ema_decay: float = 0.999,
    grad_clip: float = 1.0,
    lr_decay: str = "constant",
    lambda_share: float = 0.0,
    dequantisation_std: float = 0.0,
    data_transform: Callable[[Tensor, torch.Generator], Tensor] | None = None,
    augmentation: Callable[[Tensor, torch.Generator], tuple[Tensor, Tensor]] | None = None,
    seed: int = 0,
    progress: bool = True,
    log_every: int = 500,
    snapshot: Callable[[int, dict[str, Tensor]], None] | None = None,
    console: Console | None = None,
    state_path: Path | None = None,
    state_every: int = 1000,
    run: dict | None = None,
    device: str | torch.device = "cpu",
) -> TrainResult:
    """Train `model` (ε-prediction, time input = step index n) on `images` (B, C, H, W) for `steps` steps.

    AdamW with linear warm-up then `lr_decay` (see `learning_rate`), gradient-norm clipping at `grad_clip`
    (as DDPM), EMA of the weights. Steps n are uniform (DDPM) or, with `lambda_share` > 0, partly uniform
    in λ (`step_probabilities`). `dequantisation_std` > 0 folds a Gaussian dequantisation of `images` into the
    forward noise and regresses on its conditional expectation (`simple_loss`). `data_transform(x0, generator)`, if given, is applied to every batch
    (dequantisation) and draws its randomness from the training generator. `augmentation(x0, generator)`, if
    given, returns (augmented x0, labels) after it, and the labels go to the network with the noisy batch
    (`simple_loss`): a non-leaking augmentation (EDM, Karras et al. 2022, Appendix B.4), whose unaugmented data
    are those with label 0, the label the network gets (none) at sampling.
    The caller seeds the global RNG before building the model (initialisation and dropout);
    `seed` seeds the data order, the data transform, the steps n and the noise ε. `snapshot(step, ema_weights)`,
    if given, is called every `log_every` steps (to inspect a long run while it trains). Returns the EMA
    weights and the losses.

    With `state_path`, everything the run depends on (weights, optimizer moments, EMA, the training generator,
    the global RNG that drives dropout (and, on a GPU, its RNG), the batch order, the losses and the time spent) is written there
    atomically every `state_every` steps, and a run that finds the file resumes from it: an interrupted run
    continues where its last state was written and ends with the same weights as an uninterrupted one (on the
    same machine and thread count). `run` (the caller's description of the recipe, JSON-like) is stored with
    the state, and a state written for another recipe is refused rather than continued.

    `device` is where the model, the forward pass and the optimizer run (a GPU, to train long recipes fast).
    Every random draw except dropout's stays on the CPU training generator, so the data order, the steps n and
    the noise are the same on every device; the floats of the result are not (other kernels).
    """
    device = torch.device(device)
    console = console or Console()
    model.to(device)
    alphas, sigmas = (c.to(device) for c in step_coefficients(schedule, images.dtype))
    probabilities = step_probabilities(schedule, lambda_share)
    generator = torch.Generator().manual_seed(seed)
    batches = BatchOrder(images.shape[0], batch_size, generator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    ema = WeightEMA(model, ema_decay)  # on `device`, beside the weights it follows
    result = TrainResult(ema_state_dict={})
    identity = {"run": run or {}, "steps": steps, "batch_size": batch_size, "lr": lr, "warmup_steps": warmup_steps,
                "weight_decay": weight_decay, "ema_decay": ema_decay, "grad_clip": grad_clip, "lr_decay": lr_decay,
                "lambda_share": lambda_share, "seed": seed, "num_images": images.shape[0],
                **({"dequantisation_std": dequantisation_std} if dequantisation_std else {}),
                **({"device": device.type} if device.type != "cpu" else {})}  # floats differ by device: no mixing
    first_step, time_before = 0, 0.0
    if state_path is not None and Path(state_path).is_file():
        state = load_training_state(state_path, identity)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        ema.shadow, ema.updates = {k: v.to(device) for k, v in state["ema"].items()}, state["ema_updates"]
        generator.set_state(state["generator"])
        torch.set_rng_state(state["global_rng"])
        if device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        batches.load_state_dict(state["batches"])
        result.losses, first_step, time_before = list(state["losses"]), state["step"], state["wall_time_s"]
        result.resumed_from = list(state["resumed_from"]) + [first_step]
        console.print(f"resuming from step {first_step} of {steps} ({state_path})", highlight=False)

    def save_state(step: int) -> None:
        state = {"identity": identity, "step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "ema": ema.shadow, "ema_updates": ema.updates, "generator": generator.get_state(),
                 "global_rng": torch.get_rng_state(), "batches": batches.state_dict(), "losses": result.losses,
                 **({"cuda_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}),
                 "resumed_from": result.resumed_from, "wall_time_s": time_before + time.perf_counter() - start}
        atomic_write(state_path, partial(torch.save, state))

    model.train()
    start = time.perf_counter()
    columns = [TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.4f}"),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, disable=not progress) as bar:
        task = bar.add_task("train", total=steps, completed=first_step, loss=math.nan)
        for step in range(first_step, steps):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, lr, warmup_steps, steps, lr_decay)
            x0 = images[next(batches)]
            if data_transform is not None:
                x0 = data_transform(x0, generator)
            labels = None
            if augmentation is not None:
                x0, labels = augmentation(x0, generator)
            if probabilities is None:
                n = torch.randint(0, schedule.N, (x0.shape[0],), generator=generator)
            else:
                n = torch.multinomial(probabilities, x0.shape[0], replacement=True, generator=generator)
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
            x0, n, noise = x0.to(device), n.to(device), noise.to(device)  # no copy on the CPU
            labels = None if labels is None else labels.to(device)
            loss = simple_loss(model, x0, n, noise, alphas, sigmas, dequantisation_std, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            ema.update(model)
            result.losses.append(loss.item())
            recent = result.final_loss(window=100)
            bar.update(task, advance=1, loss=recent)
            if state_path is not None and state_every and (step + 1) % state_every == 0 and step + 1 < steps:
                save_state(step + 1)
            if snapshot is not None and log_every and (step + 1) % log_every == 0 and step + 1 < steps:
                snapshot(step + 1, ema.state_dict())
            if progress and log_every and ((step + 1) % log_every == 0 or step + 1 == steps):
                elapsed = time_before + time.perf_counter() - start
                bar.console.print(f"step {step + 1}/{steps}  loss(last {min(step + 1, log_every)}) "
                                  f"{result.final_loss(log_every):.4f}  {elapsed:.0f}s", highlight=False)
    result.wall_time_s = time_before + time.perf_counter() - start
    result.ema_state_dict = ema.state_dict()
    model.eval()
    return result
