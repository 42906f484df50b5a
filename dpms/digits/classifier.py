"""The feature network of "FD (digits features)": a small CNN digit classifier whose penultimate layer
(128-d) is the feature map; reference statistics of all 1,797 real digits ship in `digits_stats.npz`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import CLASSIFIER_FILE, DIGITS_DIR, STATS_FILE, require_file

FEATURE_DIM = 128


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


def load_digits_classifier(device="cpu", directory: Path | None = None) -> DigitsClassifier:
    """The shipped feature network, in eval mode."""
    path = require_file(Path(directory or DIGITS_DIR) / CLASSIFIER_FILE, "run `dpms train digits-classifier` to create it")
    model = DigitsClassifier()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.to(device).eval()


@torch.no_grad()
def feature_statistics(feature_net: nn.Module, images: Tensor, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """(μ, Σ) of the features of `images` in float64; Σ = np.cov(rowvar=False)."""
    feature_net.eval()
    return gaussian(torch.cat([feature_net(chunk) for chunk in images.split(batch_size)]))


def load_digits_stats(directory: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(μ, Σ) of the shipped classifier's features over all 1,797 real digits."""
    path = require_file(Path(directory or DIGITS_DIR) / STATS_FILE, "run `dpms train digits-classifier` to create it")
    with np.load(path) as stats:
        return stats["mu"], stats["sigma"]


def gaussian(features: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(μ, Σ) of (N, D) features in float64; Σ = np.cov(rowvar=False)."""
    features = features.double().numpy()
    return features.mean(axis=0), np.cov(features, rowvar=False)

