"""Training and reproducing the shipped digits files (`dpms train digits-classifier`, `dpms train digits`):
checkpoints/README.md lists them; their cards checkpoints/digits/digits_ddpm.json and
checkpoints/digits/digits_classifier.json record the settings, wall time and the numbers they produced."""

from __future__ import annotations

import json
import platform
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import Tensor

from ..atomic import atomic_write, atomic_write_text
from ..errors import DpmsError
from ..training import train_noise_predictor
from .classifier import FEATURE_DIM, DigitsClassifier, augment, classifier_accuracy, feature_statistics, load_digits_classifier
from .data import (CLASSIFIER_FILE, DDPM_FILE, DEQUANTISATIONS, DIGITS_DIR, GREY_LEVEL_SPACING, HELD_OUT_SIZE, SAMPLES_FILE, SHIFT_AUGMENT_DIM, SHIPPED_RECIPE, SPLIT_SEED, STATS_FILE, TRAIN_STATE_FILE, dequantise,
                   digits_split, load_digits_images, load_digits_labels, sha256_of, shift_augment)
from .model import DIGITS_SCHEDULE_SPEC, build_digits_ddpm, digits_ddpm_config, digits_schedule, load_digits_ddpm
from .sampling import evaluate_digits_samples, nearest_neighbour_statistics, ode_range_statistics, sample_digits, save_sample_grid


def train_digits_classifier(
    epochs: int = 30,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 1e-3,
    console: Console | None = None,
) -> tuple[DigitsClassifier, dict]:
    """Train the feature network on the fixed train split (seeded); returns (model, info).

    Adam, cross-entropy, `augment` on every batch. info holds the settings and the train/held-out accuracy.
    """
    console = console or Console()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    images, labels = load_digits_images(), load_digits_labels()
    train_idx, held_idx = digits_split()
    model = DigitsClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = train_idx[torch.randperm(len(train_idx), generator=generator)]
        for batch in order.split(batch_size):
            loss = F.cross_entropy(model(augment(images[batch], generator)), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if (epoch + 1) % 10 == 0 or epoch + 1 == epochs:
            held = classifier_accuracy(model, images[held_idx], labels[held_idx])
            console.print(f"epoch {epoch + 1}/{epochs}  loss {loss.item():.4f}  held-out accuracy {held:.4f}", highlight=False)
    info = {
        "architecture": "conv3x3(1->32) relu conv3x3(32->64) relu maxpool2 linear(1024->128) [features] relu dropout(0.3) linear(128->10)",
        "feature_dim": FEATURE_DIM,
        "feature_layer": "features: the penultimate linear layer, before its ReLU",
        "train_accuracy": classifier_accuracy(model, images[train_idx], labels[train_idx]),
        "held_out_accuracy": classifier_accuracy(model, images[held_idx], labels[held_idx]),
        "split": {"rule": "numpy.random.RandomState(seed).permutation(1797)[:held_out] is held out",
                  "seed": SPLIT_SEED, "held_out": HELD_OUT_SIZE, "train": len(train_idx)},
        "epochs": epochs,
        "seed": seed,
        "batch_size": batch_size,
        "optimizer": f"Adam(lr={lr})",
        "augmentation": "p=0.5 gaussian noise std~U[0,0.3]; p=1/3 blend towards 3x3 gaussian blur (sigma 0.8) by U[0,1]",
        "wall_time_s": round(time.perf_counter() - start, 1),
    }
    return model, info


def save_digits_classifier(model: DigitsClassifier, info: dict, directory: Path) -> dict:
    """Write the classifier weights, its JSON card and the real-data feature statistics into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / CLASSIFIER_FILE
    atomic_write(weights, partial(torch.save, {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}))
    mu, sigma = feature_statistics(model.features, load_digits_images())
    np.savez(directory / STATS_FILE, mu=mu, sigma=sigma)
    info = {**info, "torch": torch.__version__, "python": platform.python_version(), "file": CLASSIFIER_FILE,
            "sha256": sha256_of(weights), "stats_file": STATS_FILE, "stats_sha256": sha256_of(directory / STATS_FILE)}
    atomic_write_text(directory / "digits_classifier.json", json.dumps(info, indent=2) + "\n")
    return info


LOSS_WINDOW = 250  # steps per point of the card's loss curve


def train_digits_ddpm(
    steps: int = SHIPPED_RECIPE["steps"],
    seed: int = 0,
    batch_size: int = 128,
    lr: float = SHIPPED_RECIPE["lr"],
    warmup_steps: int = 500,
    ema_decay: float = 0.999,
    lr_decay: str = SHIPPED_RECIPE["lr_decay"],
    dequantisation: str = SHIPPED_RECIPE["dequantisation"],
    lambda_share: float = SHIPPED_RECIPE["lambda_share"],
    dequantisation_std: float = SHIPPED_RECIPE["dequantisation_std"],
    dropout: float = SHIPPED_RECIPE["dropout"],
    shift_probability: float = SHIPPED_RECIPE["shift_probability"],
    held_out: bool = SHIPPED_RECIPE["held_out"],
    images: Tensor | None = None,
    progress: bool = True,
    log_every: int = 500,
    snapshot=None,
    console: Console | None = None,
    state_path: Path | None = None,
    device: str = "cpu",
):
    """Train the digits DDPM and return (TrainResult, settings dict).

    The defaults are the recipe of the shipped weights (SHIPPED_RECIPE). `held_out=True` trains on the 1,437
    digits of the fixed train split only (the 360 others stay unseen, so samples can be checked for
    memorisation against them), `held_out=False` on all 1,797 (the first shipped model's recipe, with
    dequantisation "none", lr 2e-4, lr_decay "constant" and 6,000 steps); `dequantisation` ("uniform" |
    "gaussian") applies `dequantise` to every batch, "gaussian-conditional" folds the Gaussian spread into
    the training noise and regresses on the conditional expectation of ε (`simple_loss`: same minimiser, less
    variance where σ is below the spread); `dequantisation_std` is the std of both Gaussian spreads; `dropout` is the U-Net's
    dropout rate in training; `shift_probability` > 0 shifts that share of the digits by one pixel and gives
    the network the shift (`shift_augment`: non-leaking, the network gets an augmentation input that sampling
    leaves empty); `lr_decay="cosine"` decays the rate to 0;
    `lambda_share` draws that share of the steps n uniformly in λ (`step_probabilities`). `images` replaces
    the data. With `state_path` the run writes its state there every 1,000 steps and resumes from it
    (`train_noise_predictor`). `device` ("cpu", "cuda") is where the network trains.
    """
    torch.manual_seed(seed)  # initialisation and dropout
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if not 0.0 <= shift_probability <= 1.0:
        raise ValueError(f"shift_probability must be in [0, 1], got {shift_probability}")
    model = build_digits_ddpm(dropout, SHIFT_AUGMENT_DIM if shift_probability else 0)
    if images is None and held_out:
        images = load_digits_images()[digits_split()[0]]
        what = f"sklearn load_digits, the {images.shape[0]} digits of the train split (digits_split; {HELD_OUT_SIZE} held out)"
    elif images is None:
        images = load_digits_images()
        what = f"sklearn load_digits, all {images.shape[0]} images"
    else:
        what = f"{images.shape[0]} given images"
    if dequantisation not in DEQUANTISATIONS:
        raise ValueError(f"dequantisation must be one of {', '.join(DEQUANTISATIONS)}, got {dequantisation!r}")
    if not dequantisation_std > 0:
        raise ValueError(f"dequantisation_std must be positive, got {dequantisation_std}")
    if dequantisation_std == GREY_LEVEL_SPACING / 4:  # the shipped spread, named as its card names it
        law, width = "N(0, (1/32)^2)", "a quarter of one grey level's width"
    else:
        law, width = f"N(0, ({dequantisation_std:.6g})^2)", f"{dequantisation_std / GREY_LEVEL_SPACING:.6g} of one grey level's width"
    spread = {"none": "not dequantised",
              "uniform": "dequantised: + U(-1/16, 1/16) per pixel per batch (one grey level's width, centred)",
              "gaussian": f"dequantised: + {law} per pixel per batch ({width})",
              "gaussian-conditional": f"dequantised: + {law} per pixel ({width}), "
                                      "folded into the forward noise, target E[eps | x_n, levels] (simple_loss)"}
    augmentation = ("no other augmentation" if not shift_probability else
                    f"shifted with probability {shift_probability:g} by (dx, dy) uniform in {{-1, 0, 1}}^2, blank (-1) "
                    "filling the uncovered edge, the shift given to the network (non-leaking; none at sampling)")
    data = f"{what}, in [-1,1]; {spread[dequantisation]}; {augmentation}"
    folded = dequantisation == "gaussian-conditional"  # the spread goes into the noise, not into the batches
    schedule_text = {"cosine": f"linear warm-up over {warmup_steps} steps, then cosine decay to 0 at step {steps}",
                     "constant": "linear warm-up then constant"}.get(lr_decay, lr_decay)
    settings = {"steps": steps, "seed": seed, "dropout": dropout, "batch_size": batch_size, "lr": lr, "warmup_steps": warmup_steps,
                "lr_schedule": schedule_text, "optimizer": "AdamW(weight_decay=0)", "grad_clip": 1.0,
                "ema_decay": ema_decay, "loss": "L_simple: mean squared error of the eps prediction" + (
                    " against E[eps | x_n, levels]" if folded else ""),
                "steps_n": ("uniform over 0..999 (DDPM)" if lambda_share == 0 else
                            f"drawn from ({1 - lambda_share:g} x uniform in n + {lambda_share:g} x uniform in lambda) (step_probabilities)"),
                "data": data, **({"dequantisation_std": dequantisation_std} if dequantisation.startswith("gaussian") else {}),
                **({"shift_probability": shift_probability} if shift_probability else {})}
    result = train_noise_predictor(model, images, digits_schedule(), steps=steps, batch_size=batch_size, lr=lr,
                                   warmup_steps=warmup_steps, ema_decay=ema_decay, lr_decay=lr_decay,
                                   lambda_share=lambda_share, seed=seed, progress=progress,
                                   data_transform=None if dequantisation == "none" or folded else partial(dequantise, kind=dequantisation, std=dequantisation_std),
                                   dequantisation_std=dequantisation_std if folded else 0.0,
                                   augmentation=partial(shift_augment, probability=shift_probability) if shift_probability else None,
                                   log_every=log_every, snapshot=snapshot, console=console, state_path=state_path, run=settings,
                                   device=device)
    return result, settings


def loss_curve(losses: list[float], window: int = LOSS_WINDOW) -> list[float]:
    """Mean training loss over consecutive windows of `window` steps (the last partial window dropped)."""
    return [round(sum(losses[k : k + window]) / window, 5) for k in range(0, len(losses) - window + 1, window)]


def save_digits_ddpm(ema_state_dict: dict[str, Tensor], card: dict, directory: Path) -> dict:
    """Write the flat fp32 EMA state_dict and its JSON card (with the file's sha256) into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / DDPM_FILE
    atomic_write(weights, partial(torch.save, {k: v.float().contiguous() for k, v in ema_state_dict.items()}))
    card = {**card, "file": DDPM_FILE, "sha256": sha256_of(weights),
            "parameters": sum(v.numel() for v in ema_state_dict.values())}
    atomic_write_text(directory / "digits_ddpm.json", json.dumps(card, indent=2) + "\n")
    return card


def reproduce_digits_classifier(epochs: int = 30, seed: int = 0, directory: Path | None = None,
                                console: Console | None = None) -> dict:
    """`dpms train digits-classifier`: train the feature network, write weights, card and real-data stats."""
    model, info = train_digits_classifier(epochs=epochs, seed=seed, console=console)
    info["torch_threads"] = torch.get_num_threads()
    return save_digits_classifier(model, info, Path(directory or DIGITS_DIR))


def _device_name(device: str) -> str:
    """What trained the weights, for the card: "cpu", or the GPU's name (the floats depend on it)."""
    device = torch.device(device)
    return "cpu" if device.type == "cpu" else f"{device.type}: {torch.cuda.get_device_name(device) if device.type == 'cuda' else device}"


def reproduce_digits_ddpm(steps: int = SHIPPED_RECIPE["steps"], seed: int = 0, directory: Path | None = None,
                          console: Console | None = None, check_samples: int = 500, snapshot_every: int = 0,
                          **recipe) -> dict:
    """`dpms train digits`: train the DDPM, write the EMA weights and their card, then check the samples.

    The check draws `check_samples` (500) DDIM samples with 50 steps, classifies them with the feature
    network found in `directory` (else the shipped one), records the result in the card and writes
    samples_ddim50.png. Prints, and records in the card, the training's seconds per step and wall time and
    the whole command's wall time (training, writing and the check). With `snapshot_every` > 0 the EMA
    weights are also written every that many steps to DIRECTORY/snapshots/step<N>.pt, to inspect a run.
    The run keeps its state in DIRECTORY/train_state.pt (every 1,000 steps) until its weights are written, so
    the same command resumes an interrupted run.
    `recipe` goes to `train_digits_ddpm` (held_out, dequantisation, dequantisation_std, dropout, shift_probability, lr, lr_decay, lambda_share, device).
    """
    start = time.perf_counter()
    console = console or Console()
    directory = Path(directory or DIGITS_DIR)

    def snapshot(step: int, weights: dict) -> None:
        folder = directory / "snapshots"
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / f"step{step}.pt", partial(torch.save, weights))

    state_path = directory / TRAIN_STATE_FILE
    result, settings = train_digits_ddpm(steps=steps, seed=seed, console=console, log_every=snapshot_every or 500,
                                         snapshot=snapshot if snapshot_every else None, state_path=state_path, **recipe)
    seconds_per_step = result.wall_time_s / steps
    console.print(f"trained {steps} steps in {result.wall_time_s:.1f} s: {seconds_per_step:.4f} s/step "
                  f"(batch {settings['batch_size']}, {torch.get_num_threads()} torch threads)", highlight=False)
    shifts = recipe.get("shift_probability", SHIPPED_RECIPE["shift_probability"])
    config = digits_ddpm_config(recipe.get("dropout", SHIPPED_RECIPE["dropout"]), SHIFT_AUGMENT_DIM if shifts else 0)
    card = {"architecture": "ddpm", "config": config, "schedule": DIGITS_SCHEDULE_SPEC,
            "model_type": "noise", "time_input": "integer step n in [0, 999]; t_n = (n+1)/1000 (time_map='discrete')",
            "weights": "EMA", **settings, "final_loss_last_500_steps": round(result.final_loss(500), 5),
            f"loss_curve_mean_per_{LOSS_WINDOW}_steps": loss_curve(result.losses),
            "wall_time_s": round(result.wall_time_s, 1), "seconds_per_step": round(seconds_per_step, 4),
            **({"resumed_at_steps": result.resumed_from} if result.resumed_from else {}),
            "torch": torch.__version__, "python": platform.python_version(), "torch_threads": torch.get_num_threads(),
            "device": _device_name(recipe.get("device", "cpu"))}
    card = save_digits_ddpm(result.ema_state_dict, card, directory)
    state_path.unlink(missing_ok=True)  # the weights are written: nothing left to resume
    card = check_digits_ddpm(directory, card, console, check_samples=check_samples, seed=seed)
    card["total_wall_time_s"] = round(time.perf_counter() - start, 1)
    atomic_write_text(directory / "digits_ddpm.json", json.dumps(card, indent=2) + "\n")
    console.print(f"total wall time {card['total_wall_time_s']:.1f} s (training {result.wall_time_s:.1f} s, "
                  f"sample check {card['check_wall_time_s']:.1f} s)", highlight=False)
    return card


def check_digits_ddpm(directory: Path | None = None, card: dict | None = None, console: Console | None = None,
                      check_samples: int = 500, seed: int = 0, range_samples: int = 200) -> dict:
    """The card's sample check (also `dpms train digits --check-only`, on weights already there): draw
    `check_samples` DDIM-50 samples, classify them with the feature network found in `directory` (else the
    shipped one), measure their nearest neighbours in the train and held-out splits, and the pixel range of
    `range_samples` DDIM-1000 samples (the model's own ODE solution); write samples_ddim50.png and record
    the result in the card digits_ddpm.json."""
    console = console or Console()
    directory = Path(directory or DIGITS_DIR)
    card_path = directory / "digits_ddpm.json"
    if card is None:
        if not card_path.is_file():
            raise DpmsError(f"no digits DDPM card at {card_path}; train one with `dpms train digits --out {directory}`")
        card = json.loads(card_path.read_text())
    model = load_digits_ddpm(directory=directory)
    classifier_dir = directory if (directory / CLASSIFIER_FILE).is_file() else DIGITS_DIR
    check_start = time.perf_counter()
    samples = sample_digits(model, check_samples, solver="ddim", nfe=50, seed=seed)
    save_sample_grid(samples[:100], directory / SAMPLES_FILE)
    check = evaluate_digits_samples(samples, load_digits_classifier(directory=classifier_dir))
    check["nearest_neighbours"] = nearest_neighbour_statistics(samples)
    card[f"check_ddim50_{check_samples}_samples"] = check
    card["check_ode_range"] = ode_range_statistics(model, num_samples=range_samples, seed=seed)
    card["check_wall_time_s"] = round(time.perf_counter() - check_start, 1)
    atomic_write_text(card_path, json.dumps(card, indent=2) + "\n")
    console.print(f"FD (digits features) of {check_samples} DDIM-50 samples, quantised to 8 bits as dpms bench: "
                  f"{check['fd_samples_vs_real']:.3f} (unquantised {check['fd_samples_vs_real_unquantised']:.3f}; "
                  f"held-out real floor {check['fd_floor_held_out_vs_rest']:.3f})", highlight=False)
    neighbours = check["nearest_neighbours"]
    console.print(f"median nearest-neighbour distance: samples→train {neighbours['samples_to_train_split']['median']:.3f}, "
                  f"samples→held-out {neighbours['samples_to_held_out_split']['median']:.3f}, "
                  f"held-out→train {neighbours['held_out_to_train_split']['median']:.3f}", highlight=False)
    spill = card["check_ode_range"]
    console.print(f"DDIM-1000 pixels within ±1.1: {spill['fraction_pixels_within_1.1']:.5f}; spread beyond −1 / 1 "
                  f"(RMS; the data's Gaussian dequantisation: {card.get('dequantisation_std', GREY_LEVEL_SPACING / 4):.3g}): {spill['rms_beyond_-1'] or 0:.4f} / {spill['rms_beyond_1'] or 0:.4f}",
                  highlight=False)
    return card
