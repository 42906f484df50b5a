"""Deterministic per-sample noise: sample i of a run with seed s always gets the same x_T, the same
step noise and the same class label, whatever the batch it falls in and however many processes share
the work.

Each sample has three random streams, and no two streams of any two samples share a generator seed:
with k = s·STRIDE + i (unique per (s, i) because i < STRIDE),

    x_T           2k        (even)
    step noise    2k + 1    (odd)
    class label   LABEL_BASE + k

x_T and step-noise seeds stay below 2·K_LIMIT ≤ LABEL_BASE, so the label seeds lie above all of them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import DpmsError

_STRIDE = 1_000_003  # a prime: sample indices stay below it, so (seed, i) ↦ k is one-to-one
MAX_SAMPLES = _STRIDE  # samples per run (indices 0 … MAX_SAMPLES − 1)
MAX_SEED = 2**40 - 1  # keeps k below K_LIMIT, hence every seed below 2**63 (torch takes up to 2**64 − 1)
K_LIMIT = (MAX_SEED + 1) * _STRIDE
LABEL_BASE = 2 * K_LIMIT  # label seeds start above the largest x_T or step-noise seed


def _sample_key(seed: int, index: int) -> int:
    """k = seed·STRIDE + index, after checking the bounds that make the streams disjoint."""
    seed, index = int(seed), int(index)
    if not 0 <= seed <= MAX_SEED:
        raise DpmsError(f"seed must lie in [0, 2**40), got {seed}; choose a smaller seed")
    if not 0 <= index < MAX_SAMPLES:
        raise DpmsError(f"sample index {index} is outside [0, {MAX_SAMPLES}); draw at most {MAX_SAMPLES} samples per run")
    return seed * _STRIDE + index


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample `index`'s x_T in a run seeded with `seed`."""
    return 2 * _sample_key(seed, index)


def initial_noise(shape, indices, seed: int, device="cpu", dtype=torch.float32) -> Tensor:
    """x_T ~ N(0, I) for the samples `indices`: one generator per sample (shape excludes the batch)."""
    z = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(sample_seed(seed, i)), dtype=torch.float64) for i in indices]
    return torch.stack(z).to(device=device, dtype=dtype)


def step_noise_seeds(indices, seed: int) -> list[int]:
    """Seeds of the stochastic solvers' per-step noise for these samples (odd: never an x_T seed)."""
    return [2 * _sample_key(seed, i) + 1 for i in indices]


def label_seeds(indices, seed: int) -> list[int]:
    """Seeds of the class labels of these samples (above every x_T and step-noise seed)."""
    return [LABEL_BASE + _sample_key(seed, i) for i in indices]


def labels(num_classes: int, indices, seed: int) -> Tensor:
    """Class labels for class-conditional sampling, also derived from (seed, i) alone."""
    out = [int(torch.randint(num_classes, (1,), generator=torch.Generator().manual_seed(s))) for s in label_seeds(indices, seed)]
    return torch.tensor(out, dtype=torch.long)
