"""Drawing digits from the diffusion model and judging them through the classifier."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..evaluation import ModuleFeatures, frechet_distance
from ..images import to_uint8
from ..models.checkpoints import get_preset
from ..target import load_target
from .classifier import DigitsClassifier, feature_statistics, gaussian
from .data import digits_split, load_digits_images
from .features import FEATURES_NAME
from .model import PRESET


@torch.no_grad()
def sample_digits(model: nn.Module, num_samples: int, solver: str = "ddim", nfe: int = 50, seed: int = 0,
                  batch_size: int = 250) -> Tensor:
    """Draw samples from the digits DDPM `model` with a dpms solver, as `dpms sample` draws them: sample i
    starts from x_T derived from (seed, i) (`Target.draw`), so the result does not depend on the batch size."""
    target = load_target(PRESET, network=model)
    batches = [list(range(start, min(start + batch_size, num_samples))) for start in range(0, num_samples, batch_size)]
    device = next(model.parameters()).device
    return torch.cat([target.draw(idx, seed, device, solver, nfe).x for idx in batches])


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
    classifier.eval()
    convention = get_preset(PRESET).uint8
    images = to_uint8(samples, convention)
    probabilities = torch.softmax(ModuleFeatures(classifier, name="digits classifier").from_uint8(images), dim=1)
    counts = torch.bincount(probabilities.argmax(1), minlength=10)
    mu_real, sigma_real = feature_statistics(classifier.features, load_digits_images())
    mu_fake, sigma_fake = gaussian(ModuleFeatures(classifier.features, name=FEATURES_NAME).from_uint8(images))
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


@torch.no_grad()
def nearest_neighbour_statistics(samples: Tensor) -> dict:
    """Does the model copy its training digits? L2 distances (over the 64 pixels, samples quantised to 8 bits
    as the bench sees them) from each sample to its nearest digit of the train split and of the held-out split,
    against the same distances of the held-out digits themselves to the train split (unseen data: what a
    model that generalises produces). A memorising model's samples sit much closer to the train split than
    held-out digits do, and closer to the train split than to the held-out one by more than the sizes of the
    two splits explain (for a model trained on all digits the held-out split was seen too)."""
    convention = get_preset(PRESET).uint8
    quantised = to_uint8(samples, convention).float().div(127.5).sub(1.0).flatten(1)
    images = load_digits_images().flatten(1)
    train_idx, held_idx = digits_split()
    train, held = images[train_idx], images[held_idx]

    def nearest(a: Tensor, b: Tensor) -> Tensor:
        return torch.cdist(a.double(), b.double()).min(dim=1).values

    def summary(d: Tensor) -> dict:
        return {"median": d.median().item(), "mean": d.mean().item(), "fraction_below_1": (d < 1.0).float().mean().item()}

    return {
        "distance": "L2 over the 64 pixels in [-1, 1]; samples quantised to 8 bits",
        "samples_to_train_split": summary(nearest(quantised, train)),
        "samples_to_held_out_split": summary(nearest(quantised, held)),
        "held_out_to_train_split": summary(nearest(held, train)),
    }


def range_statistics(samples: Tensor) -> dict:
    """How far samples in [−1, 1] spill over the data's range: the fraction of pixels within ±1.1, the range,
    and the spread beyond each end, as the root mean square of x + 1 over pixels below −1 (and of x − 1 over
    those above 1). Only the background level −1 (and only full ink, 1) has pixels beyond its end, so each is
    the spread of one level's lower (upper) half: the training data's is the dequantisation's (N(0, d²): d,
    `dpms train digits --dequantise-std`; uniform over the bin: 1/(16√3) ≈ 0.036), and a model whose levels are wider than the data's
    is what puts pixels beyond ±1.1."""
    below, above = samples[samples < -1.0] + 1.0, samples[samples > 1.0] - 1.0

    def rms(v: Tensor) -> float | None:
        return v.pow(2).mean().sqrt().item() if v.numel() else None

    return {"fraction_pixels_within_1.1": (samples.abs() <= 1.1).float().mean().item(),
            "pixel_range": [samples.min().item(), samples.max().item()],
            "rms_beyond_-1": rms(below), "rms_beyond_1": rms(above)}


@torch.no_grad()
def ode_range_statistics(model: nn.Module, num_samples: int = 200, nfe: int = 1000, seed: int = 0) -> dict:
    """Does the model's own ODE solution stay in the data range? `range_statistics` of DDIM samples with `nfe`
    steps — close to the converged ODE solution, so this is the model's property, not a solver's. (The data,
    dequantised, lie within [−1.1, 1.1] but for 0.04 % of pixels with the Gaussian spread d = 1/32, none
    with d ≤ 1/48 or uniformly.)"""
    samples = sample_digits(model, num_samples, solver="ddim", nfe=nfe, seed=seed)
    return {"num_samples": num_samples, "solver": f"ddim, {nfe} steps", "seed": seed, **range_statistics(samples)}


def save_sample_grid(samples: Tensor, path: Path, nrow: int = 10, upscale: int = 4) -> None:
    """PNG grid of samples in [−1, 1], each upscaled by nearest neighbour so the 8×8 digits are visible."""
    from torchvision.utils import save_image

    big = F.interpolate(samples.clamp(-1, 1), scale_factor=upscale, mode="nearest")
    save_image(big, path, nrow=nrow, padding=2, normalize=True, value_range=(-1, 1), pad_value=1.0)

