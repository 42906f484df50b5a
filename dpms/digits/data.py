"""The data of the digits model: scikit-learn's 1,797 8×8 handwritten digits (bundled with scikit-learn,
no download), grey levels 0..16 mapped to [−1, 1], shape (1797, 1, 8, 8); the fixed train / held-out split
of the feature network; where the shipped files live."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import MissingFileError

DIGITS_DIR = Path(__file__).resolve().parents[2] / "checkpoints" / "digits"
CLASSIFIER_FILE = "digits_classifier.pt"
STATS_FILE = "digits_stats.npz"
DDPM_FILE = "digits_ddpm.pt"
SAMPLES_FILE = "samples_ddim50.png"
TRAIN_STATE_FILE = "train_state.pt"  # an unfinished `dpms train digits` run, resumed by the same command

SPLIT_SEED = 0  # numpy RandomState seed of the fixed train / held-out split of the classifier
HELD_OUT_SIZE = 360  # ~20 % of 1797
GREY_LEVEL_SPACING = 2.0 / 16  # the 17 grey levels 0..16 of load_digits on [−1, 1]


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


def require_file(path: Path, how_to_make: str) -> Path:
    if not path.is_file():
        raise MissingFileError(f"{path} not found; {how_to_make}")
    return path


DEQUANTISATIONS = ("none", "uniform", "gaussian", "gaussian-conditional")
GAUSSIAN_DEQUANTISATION_STD = GREY_LEVEL_SPACING / 4

# The recipe of the shipped weights (`dpms train digits` with no options reproduces them; issue 17's choice,
# see checkpoints/README.md): the 1,437 train-split digits (the 360 others stay unseen, for the memorisation
# check), each pixel spread by N(0, (1/64)^2) folded into the forward noise with the conditional target
# (`simple_loss`), steps n drawn uniformly in λ, 30 % of the digits shifted by one pixel with the shift given to
# the network (`shift_augment`), peak rate 6e-4 decayed by a cosine to 0 over 32,000 steps, one torch thread
# (the float result depends on the thread count). results/README.md says why each of these.
SHIPPED_RECIPE = {"steps": 32000, "held_out": True, "dequantisation": "gaussian-conditional", "lr": 6e-4, "lr_decay": "cosine",
                  "lambda_share": 1.0, "dequantisation_std": GREY_LEVEL_SPACING / 8, "dropout": 0.1, "threads": 1,
                  "shift_probability": 0.3}
SHIFT_AUGMENT_DIM = 2  # the shift's (dx, dy), the network's augmentation labels when shifts are on


def shift_augment(x0: Tensor, generator: torch.Generator, probability: float,
                  background: float = -1.0) -> tuple[Tensor, Tensor]:
    """Shift each image, with `probability`, by (dx, dy) drawn uniformly from {−1, 0, 1}² (dx > 0: right,
    dy > 0: down), filling the uncovered row and column with `background` (blank paper, −1); return the
    images and the labels (dx, dy) as floats, (0, 0) for the unshifted ones.

    Why labels: sklearn's digits are centred, so plain shifts would teach the model off-centre digits that the
    real data do not have (and the metric would pay for them). With the shift given to the network, as EDM's
    non-leaking augmentation does (Karras et al. 2022, Appendix B.4), the shifted digits are extra data for
    what the network shares across shifts (strokes, shapes), while the label-0 output, the one it gives at
    sampling, stays that of the centred data. The 1,437 training digits are few enough to be memorised.
    """
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"shift probability must be in [0, 1], got {probability}")
    batch, height, width = x0.shape[0], x0.shape[-2], x0.shape[-1]
    apply = torch.rand(batch, generator=generator) < probability
    offsets = torch.randint(-1, 2, (batch, 2), generator=generator) * apply[:, None]
    padded = torch.nn.functional.pad(x0, (1, 1, 1, 1), value=background)
    shifted = x0.clone()
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            rows = (offsets[:, 0] == dx) & (offsets[:, 1] == dy)
            if (dx or dy) and rows.any():  # out[y, x] = in[y − dy, x − dx]
                shifted[rows] = padded[rows][..., 1 - dy : 1 - dy + height, 1 - dx : 1 - dx + width]
    return shifted, offsets.to(x0.dtype)


def dequantise(x0: Tensor, generator: torch.Generator, kind: str = "uniform",
               std: float = GAUSSIAN_DEQUANTISATION_STD) -> Tensor:
    """Spread each pixel around its grey level: `uniform` adds U(−s/2, s/2) with s = 2/16, the level's bin
    (dequantisation as in likelihood training on 8-bit data, centred on the level so that each pixel's mean
    is unchanged); `gaussian` adds N(0, (s/4)²), about the same spread (std s/4 against s/√12) with no edge; `std` sets another Gaussian spread.
    (`gaussian-conditional` is the same data, but the spread is folded into the training noise instead of
    drawn here: see `simple_loss`; this function returns the levels for it.)

    Why: with only 17 levels the data are point masses per pixel; below σ ≈ s/2 the ideal denoiser snaps
    to the nearest level, so ε changes sharply and the learned ODE becomes stiff in its last, low-noise
    stretch — a stiffness real 8-bit image models (spacing 2/255) do not have at that σ. Uniform bins keep
    a hard wall at the ends (−1 − s/2 and 1 + s/2), and 49 % of all digit pixels are background (level 0),
    9 % full ink (level 16); the Gaussian spread has none (a pixel at −1 or 1 leaves [−1.1, 1.1] with
    probability Φ(−3.2) ≈ 0.07 %).
    """
    if kind == "uniform":
        return x0 + (torch.rand(x0.shape, generator=generator, dtype=x0.dtype) - 0.5) * GREY_LEVEL_SPACING
    if kind == "gaussian":
        return x0 + torch.randn(x0.shape, generator=generator, dtype=x0.dtype) * std
    if kind in ("none", "gaussian-conditional"):
        return x0
    raise ValueError(f"dequantisation must be one of {', '.join(DEQUANTISATIONS)}, got {kind!r}")
