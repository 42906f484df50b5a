"""A small real model that ships with dpms: scikit-learn's 8×8 handwritten digits.

* Data: the 1,797 images bundled with scikit-learn (`sklearn.datasets.load_digits`, no download),
  grey levels 0..16 mapped to [−1, 1], shape (1797, 1, 8, 8).
* Feature network: a small CNN digit classifier; its penultimate layer (128-d) is the feature map of
  "FD (digits features)", the Fréchet distance (Heusel et al. 2017, Eq. 6) computed in that space instead
  of Inception's. Reference statistics of all 1,797 real digits ship in `digits_stats.npz`.
* Diffusion model: dpms's DDPM U-Net (`build("ddpm", DIGITS_DDPM_CONFIG)`) trained with ε-prediction and
  L_simple on `NoiseSchedule.discrete_linear(1000)`; the EMA weights ship in `digits_ddpm.pt`.

Everything is reproducible from the command line: `dpms train digits-classifier` then `dpms train digits`
(checkpoints/README.md lists the shipped files; their cards checkpoints/digits/digits_ddpm.json and
checkpoints/digits/digits_classifier.json record the settings, wall time and the numbers they produced).
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import Tensor, nn

from .errors import DpmsError, MissingFileError
from .schedule import NoiseSchedule

DIGITS_DIR = Path(__file__).resolve().parent.parent / "checkpoints" / "digits"
CLASSIFIER_FILE = "digits_classifier.pt"
STATS_FILE = "digits_stats.npz"
DDPM_FILE = "digits_ddpm.pt"
SAMPLES_FILE = "samples_ddim50.png"
FEATURES_NAME = "FD (digits features)"
FEATURE_DIM = 128

# The `digits` preset: the DDPM U-Net of ermongroup/ddim shrunk to 8×8 single-channel images.
DIGITS_DDPM_CONFIG = {
    "ch": 32,
    "out_ch": 1,
    "ch_mult": [1, 2, 2],
    "num_res_blocks": 2,
    "attn_resolutions": [4],
    "dropout": 0.1,
    "in_channels": 1,
    "resolution": 8,
    "resamp_with_conv": True,
}
DIGITS_SCHEDULE_SPEC = {"type": "discrete_linear", "N": 1000}

SPLIT_SEED = 0  # numpy RandomState seed of the fixed train / held-out split of the classifier
HELD_OUT_SIZE = 360  # ~20 % of 1797


# ------------------------------------------------------------------------------------------- data
@lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64)


def load_digits_images() -> Tensor:
    """All 1,797 digits as a float32 tensor (1797, 1, 8, 8) in [−1, 1] (grey level g ↦ g/16·2 − 1)."""
    images, _ = _digits_arrays()
    return torch.from_numpy(images / 16.0 * 2.0 - 1.0).unsqueeze(1)


def load_digits_labels() -> Tensor:
    """The digit (0..9) of each image of `load_digits_images()`, int64 (1797,)."""
    return torch.from_numpy(_digits_arrays()[1].copy())


def digits_split() -> tuple[Tensor, Tensor]:
    """(train indices, held-out indices) of the fixed split: 1,437 / 360 images.

    numpy's legacy RandomState is used because its stream is frozen across numpy versions.
    """
    order = np.random.RandomState(SPLIT_SEED).permutation(len(_digits_arrays()[1]))
    held_out = np.sort(order[:HELD_OUT_SIZE])
    train = np.sort(order[HELD_OUT_SIZE:])
    return torch.from_numpy(train), torch.from_numpy(held_out)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _require(path: Path, how_to_make: str) -> Path:
    if not path.is_file():
        raise MissingFileError(f"{path} not found; {how_to_make}")
    return path


# ------------------------------------------------------------------------------- feature network
class DigitsClassifier(nn.Module):
    """conv3×3(1→32) → conv3×3(32→64) → max-pool to 4×4 → linear(1024→128) → [features] → ReLU → linear(128→10).

    `features(x)` maps images in [−1, 1] (B, 1, 8, 8) to the 128-d penultimate layer *before* its ReLU:
    after the ReLU many units are exactly zero on all digits, which would make Σ singular and the
    Fréchet distance blind in those directions.
    """

    def __init__(self, feature_dim: int = FEATURE_DIM, dropout: float = 0.3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, feature_dim),
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.dropout(F.relu(self.features(x))))


def _blur(x: Tensor, sigma: float = 0.8) -> Tensor:
    """3×3 Gaussian blur with replicate padding."""
    taps = torch.exp(-torch.tensor([1.0, 0.0, 1.0]) / (2 * sigma**2))
    kernel = torch.outer(taps, taps)
    kernel = (kernel / kernel.sum()).to(x)[None, None]
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel)


def augment(x: Tensor, generator: torch.Generator) -> Tensor:
    """Mild corruptions so the features stay meaningful on imperfect samples.

    Half of the images get Gaussian noise with a per-image std in [0, 0.3]; a third are blended
    towards their 3×3 Gaussian blur by a per-image amount in [0, 1]. No flips or shifts: they change digits.
    """
    b = x.shape[0]
    shape = (b, 1, 1, 1)
    noisy = (torch.rand(shape, generator=generator) < 0.5).float()
    noise_std = 0.3 * torch.rand(shape, generator=generator) * noisy
    blurred = (torch.rand(shape, generator=generator) < 1 / 3).float()
    blur_amount = torch.rand(shape, generator=generator) * blurred
    x = x + blur_amount * (_blur(x) - x)
    return x + noise_std * torch.randn(x.shape, generator=generator)


@torch.no_grad()
def classifier_accuracy(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    """Fraction of `images` whose arg-max logit is the label (model put in eval mode)."""
    model.eval()
    return (model(images).argmax(1) == labels).sum().item() / len(labels)


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


def load_digits_classifier(device="cpu", directory: Path | None = None) -> DigitsClassifier:
    """The shipped feature network, in eval mode."""
    path = _require(Path(directory or DIGITS_DIR) / CLASSIFIER_FILE, "run `dpms train digits-classifier` to create it")
    model = DigitsClassifier()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.to(device).eval()


def digits_features(device="cpu"):
    """The feature extractor of "FD (digits features)": images in [−1, 1] (B, 1, 8, 8) → (B, 128)."""
    from .evaluation import ModuleFeatures

    return ModuleFeatures(load_digits_classifier(device).features, name=FEATURES_NAME)


@torch.no_grad()
def feature_statistics(feature_net: nn.Module, images: Tensor, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """(μ, Σ) of the features of `images` in float64; Σ = np.cov(rowvar=False)."""
    feature_net.eval()
    return _gaussian(torch.cat([feature_net(chunk) for chunk in images.split(batch_size)]))


def load_digits_stats(directory: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(μ, Σ) of the shipped classifier's features over all 1,797 real digits."""
    path = _require(Path(directory or DIGITS_DIR) / STATS_FILE, "run `dpms train digits-classifier` to create it")
    with np.load(path) as stats:
        return stats["mu"], stats["sigma"]


def save_digits_classifier(model: DigitsClassifier, info: dict, directory: Path) -> dict:
    """Write the classifier weights, its JSON card and the real-data feature statistics into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / CLASSIFIER_FILE
    torch.save({k: v.detach().float().contiguous() for k, v in model.state_dict().items()}, weights)
    mu, sigma = feature_statistics(model.features, load_digits_images())
    np.savez(directory / STATS_FILE, mu=mu, sigma=sigma)
    info = {**info, "torch": torch.__version__, "python": platform.python_version(), "file": CLASSIFIER_FILE,
            "sha256": sha256_of(weights), "stats_file": STATS_FILE, "stats_sha256": sha256_of(directory / STATS_FILE)}
    (directory / "digits_classifier.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


# ------------------------------------------------------------------------------ diffusion model
def digits_schedule() -> NoiseSchedule:
    """DDPM's linear betas, N = 1000 (the schedule the shipped model was trained on)."""
    return NoiseSchedule.from_spec(DIGITS_SCHEDULE_SPEC)


def build_digits_ddpm() -> nn.Module:
    from .models import build

    return build("ddpm", DIGITS_DDPM_CONFIG)


def load_digits_ddpm(device="cpu", directory: Path | None = None) -> nn.Module:
    """The shipped diffusion network (EMA weights), eval mode; it predicts ε from (x_n, n), n ∈ [0, 999]."""
    path = _require(Path(directory or DIGITS_DIR) / DDPM_FILE, "run `dpms train digits` to create it")
    with torch.device("meta"):
        model = build_digits_ddpm()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True, assign=True)
    return model.to(device).eval()


def train_digits_ddpm(
    steps: int = 6000,
    seed: int = 0,
    batch_size: int = 128,
    lr: float = 2e-4,
    warmup_steps: int = 500,
    ema_decay: float = 0.999,
    images: Tensor | None = None,
    progress: bool = True,
    console: Console | None = None,
):
    """Train the digits DDPM on all 1,797 images (or `images`) and return (TrainResult, settings dict)."""
    from .training import train_noise_predictor

    torch.manual_seed(seed)  # initialisation and dropout
    model = build_digits_ddpm()
    images = load_digits_images() if images is None else images
    settings = {"steps": steps, "seed": seed, "batch_size": batch_size, "lr": lr, "warmup_steps": warmup_steps,
                "lr_schedule": "linear warm-up then constant", "optimizer": "AdamW(weight_decay=0)", "grad_clip": 1.0,
                "ema_decay": ema_decay, "loss": "L_simple: mean squared error of the eps prediction",
                "data": f"sklearn load_digits, {images.shape[0]} images in [-1,1], no augmentation"}
    result = train_noise_predictor(model, images, digits_schedule(), steps=steps, batch_size=batch_size, lr=lr,
                                   warmup_steps=warmup_steps, ema_decay=ema_decay, seed=seed, progress=progress,
                                   console=console)
    return result, settings


def save_digits_ddpm(ema_state_dict: dict[str, Tensor], card: dict, directory: Path) -> dict:
    """Write the flat fp32 EMA state_dict and its JSON card (with the file's sha256) into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / DDPM_FILE
    torch.save({k: v.float().contiguous() for k, v in ema_state_dict.items()}, weights)
    card = {**card, "file": DDPM_FILE, "sha256": sha256_of(weights),
            "parameters": sum(v.numel() for v in ema_state_dict.values())}
    (directory / "digits_ddpm.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


@torch.no_grad()
def sample_digits(model: nn.Module, num_samples: int, solver: str = "ddim", nfe: int = 50, seed: int = 0,
                  batch_size: int = 250) -> Tensor:
    """Draw samples from the digits DDPM with a dpms solver; x_T ~ N(0, I) from a generator seeded by `seed`."""
    from . import sample, wrap_model

    schedule = digits_schedule()
    noise_fn = wrap_model(model, schedule, model_type="noise", time_map="discrete")
    x_T = torch.randn((num_samples, 1, 8, 8), generator=torch.Generator().manual_seed(seed))
    return torch.cat([sample(noise_fn, schedule, chunk, solver=solver, nfe=nfe) for chunk in x_T.split(batch_size)])


def _gaussian(features: Tensor) -> tuple[np.ndarray, np.ndarray]:
    features = features.double().numpy()
    return features.mean(axis=0), np.cov(features, rowvar=False)


@torch.no_grad()
def evaluate_digits_samples(samples: Tensor, classifier: DigitsClassifier, confident: float = 0.9) -> dict:
    """Quality of digit samples seen through the classifier.

    The samples are first quantised to 8-bit images exactly as `dpms bench` does for the digits model
    (`dpms.images.to_uint8` with the preset's uint8 convention, then the feature extractor's
    `from_uint8`, x/127.5 − 1): what is measured is what a PNG of the sample holds, so pixels the
    sampler left far outside [−1, 1] count as black or white, not as their raw values.
    Returns the class histogram of the arg-max, the fraction classified with probability ≥ `confident`,
    the FD (digits features) of the quantised samples against all 1,797 real digits (and, labelled, that
    of the raw float samples), and as a floor the FD of the held-out real split (360) against the other
    1,437 real digits.
    """
    from .evaluation import ModuleFeatures, frechet_distance
    from .images import to_uint8
    from .models.checkpoints import get_preset

    classifier.eval()
    convention = get_preset("digits").uint8
    images = to_uint8(samples, convention)
    probabilities = torch.softmax(ModuleFeatures(classifier, name="digits classifier").from_uint8(images), dim=1)
    counts = torch.bincount(probabilities.argmax(1), minlength=10)
    mu_real, sigma_real = feature_statistics(classifier.features, load_digits_images())
    mu_fake, sigma_fake = _gaussian(ModuleFeatures(classifier.features, name=FEATURES_NAME).from_uint8(images))
    mu_raw, sigma_raw = feature_statistics(classifier.features, samples)
    train_idx, held_idx = digits_split()
    images = load_digits_images()
    mu_held, sigma_held = feature_statistics(classifier.features, images[held_idx])
    mu_rest, sigma_rest = feature_statistics(classifier.features, images[train_idx])
    return {
        "num_samples": samples.shape[0],
        "quantisation": f"8-bit images as dpms bench: dpms.images.to_uint8 (convention {convention!r}), then x/127.5 - 1",
        "class_counts": counts.tolist(),
        f"fraction_confident_p{confident}": (probabilities.max(1).values >= confident).float().mean().item(),
        "fd_samples_vs_real": frechet_distance(mu_fake, sigma_fake, mu_real, sigma_real),
        "fd_samples_vs_real_unquantised": frechet_distance(mu_raw, sigma_raw, mu_real, sigma_real),
        "fd_floor_held_out_vs_rest": frechet_distance(mu_held, sigma_held, mu_rest, sigma_rest),
        "pixel_range": [samples.min().item(), samples.max().item()],
        # samples with a pixel far outside [−1, 1] (|x| > 1.5): what the unquantised FD is most sensitive to
        "fraction_samples_beyond_1.5": (samples.abs() > 1.5).flatten(1).any(1).float().mean().item(),
    }


def save_sample_grid(samples: Tensor, path: Path, nrow: int = 10, upscale: int = 4) -> None:
    """PNG grid of samples in [−1, 1], each upscaled by nearest neighbour so the 8×8 digits are visible."""
    from torchvision.utils import save_image

    big = F.interpolate(samples.clamp(-1, 1), scale_factor=upscale, mode="nearest")
    save_image(big, path, nrow=nrow, padding=2, normalize=True, value_range=(-1, 1), pad_value=1.0)


# ------------------------------------------------------------------------ reproduce (the CLI)
def reproduce_digits_classifier(epochs: int = 30, seed: int = 0, directory: Path | None = None,
                                console: Console | None = None) -> dict:
    """`dpms train digits-classifier`: train the feature network, write weights, card and real-data stats."""
    model, info = train_digits_classifier(epochs=epochs, seed=seed, console=console)
    info["torch_threads"] = torch.get_num_threads()
    return save_digits_classifier(model, info, Path(directory or DIGITS_DIR))


def reproduce_digits_ddpm(steps: int = 6000, seed: int = 0, directory: Path | None = None,
                          console: Console | None = None, check_samples: int = 500) -> dict:
    """`dpms train digits`: train the DDPM, write the EMA weights and their card, then check the samples.

    The check draws `check_samples` (500) DDIM samples with 50 steps, classifies them with the feature
    network found in `directory` (else the shipped one), records the result in the card and writes
    samples_ddim50.png. Prints, and records in the card, the training's seconds per step and wall time and
    the whole command's wall time (training, writing and the check).
    """
    start = time.perf_counter()
    console = console or Console()
    directory = Path(directory or DIGITS_DIR)
    result, settings = train_digits_ddpm(steps=steps, seed=seed, console=console)
    seconds_per_step = result.wall_time_s / steps
    console.print(f"trained {steps} steps in {result.wall_time_s:.1f} s: {seconds_per_step:.4f} s/step "
                  f"(batch {settings['batch_size']}, {torch.get_num_threads()} torch threads)", highlight=False)
    card = {"architecture": "ddpm", "config": DIGITS_DDPM_CONFIG, "schedule": DIGITS_SCHEDULE_SPEC,
            "model_type": "noise", "time_input": "integer step n in [0, 999]; t_n = (n+1)/1000 (time_map='discrete')",
            "weights": "EMA", **settings, "final_loss_last_500_steps": round(result.final_loss(500), 5),
            "wall_time_s": round(result.wall_time_s, 1), "seconds_per_step": round(seconds_per_step, 4),
            "torch": torch.__version__, "python": platform.python_version(), "torch_threads": torch.get_num_threads()}
    card = save_digits_ddpm(result.ema_state_dict, card, directory)
    card = check_digits_ddpm(directory, card, console, check_samples=check_samples, seed=seed)
    card["total_wall_time_s"] = round(time.perf_counter() - start, 1)
    (directory / "digits_ddpm.json").write_text(json.dumps(card, indent=2) + "\n")
    console.print(f"total wall time {card['total_wall_time_s']:.1f} s (training {result.wall_time_s:.1f} s, "
                  f"sample check {card['check_wall_time_s']:.1f} s)", highlight=False)
    return card


def check_digits_ddpm(directory: Path | None = None, card: dict | None = None, console: Console | None = None,
                      check_samples: int = 500, seed: int = 0) -> dict:
    """The card's sample check (also `dpms train digits --check-only`, on weights already there): draw
    `check_samples` DDIM-50 samples, classify them with the feature network found in `directory` (else the
    shipped one), write samples_ddim50.png and record the result in the card digits_ddpm.json."""
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
    card[f"check_ddim50_{check_samples}_samples"] = check
    card["check_wall_time_s"] = round(time.perf_counter() - check_start, 1)
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    console.print(f"FD (digits features) of {check_samples} DDIM-50 samples, quantised to 8 bits as dpms bench: "
                  f"{check['fd_samples_vs_real']:.3f} (unquantised {check['fd_samples_vs_real_unquantised']:.3f}; "
                  f"held-out real floor {check['fd_floor_held_out_vs_rest']:.3f})", highlight=False)
    return card
