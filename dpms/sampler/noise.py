"""Deterministic per-sample noise: sample i of a run with seed s always gets the same x_T and the same
step noise, whatever the batch it falls in and however many processes share the work."""

from __future__ import annotations

import torch
from torch import Tensor

_STRIDE = 1_000_003  # a prime larger than any sample count, so (seed, i) pairs never collide


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample `index` in a run seeded with `seed`."""
    return (int(seed) * _STRIDE + int(index)) * 2


def initial_noise(shape, indices, seed: int, device="cpu", dtype=torch.float32) -> Tensor:
    """x_T ~ N(0, I) for the samples `indices`: one generator per sample (shape excludes the batch)."""
    z = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(sample_seed(seed, i)), dtype=torch.float64) for i in indices]
    return torch.stack(z).to(device=device, dtype=dtype)


def step_noise_seeds(indices, seed: int) -> list[int]:
    """Seeds of the stochastic solvers' per-step noise for these samples (a stream apart from x_T's)."""
    return [sample_seed(seed, i) + 1 for i in indices]


def labels(num_classes: int, indices, seed: int) -> Tensor:
    """Class labels for class-conditional sampling, also derived from (seed, i) alone."""
    out = [int(torch.randint(num_classes, (1,), generator=torch.Generator().manual_seed(sample_seed(seed, i) + 7))) for i in indices]
    return torch.tensor(out, dtype=torch.long)
