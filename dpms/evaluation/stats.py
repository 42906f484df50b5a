"""Feature statistics: a streaming float64 accumulator, and the (μ, Σ) `.npz` files FID compares.

A statistics file is an `.npz` with `mu` (D,) and `sigma` (D, D): the format of pytorch-fid's
`--save-stats` and of the published reference files (e.g. TTUR's fid_stats_cifar10_train.npz).
dpms also stores `num`, the number of samples; readers that only know `mu` and `sigma` ignore it.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DpmsError, MissingFileError
from ..images import atomic_save_npz


@dataclass(frozen=True)
class GaussianStats:
    """The mean and covariance of a set of features; `num` is None for files that do not record it."""

    mu: np.ndarray
    sigma: np.ndarray
    num: int | None = None

    def save(self, path: str | Path) -> None:
        arrays = {"mu": self.mu, "sigma": self.sigma}
        if self.num is not None:
            arrays["num"] = np.int64(self.num)
        atomic_save_npz(Path(path), **arrays)


class FeatureStats:
    """Running n, Σx and Σxxᵀ of features in float64.

    Batches can be added in any order and partial accumulators merged (one per distributed rank, or
    one per resumed chunk); the result is the same as np.mean / np.cov(rowvar=False) of all features
    stacked, up to float64 rounding:  μ = Σx / n,  Σ = (Σxxᵀ − n μμᵀ) / (n − 1).
    """

    def __init__(self, dims: int | None = None):
        """dims: the feature size; None takes it from the first batch."""
        self.num = 0
        self._allocate(dims)

    def _allocate(self, dims: int | None) -> None:
        self.dims = dims
        self.sum = None if dims is None else np.zeros(dims)
        self.outer_sum = None if dims is None else np.zeros((dims, dims))

    def update(self, features: torch.Tensor | np.ndarray) -> FeatureStats:
        """Add a (B, dims) batch of features."""
        if isinstance(features, torch.Tensor):
            features = features.detach().to("cpu", torch.float64).numpy()
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2:
            raise DpmsError(f"features must be a (batch, dims) array, got shape {features.shape}")
        if self.dims is None:
            self._allocate(features.shape[1])
        if features.shape[1] != self.dims:
            raise DpmsError(f"features have {features.shape[1]} dimensions but these statistics hold {self.dims}")
        self.num += features.shape[0]
        self.sum += features.sum(axis=0)
        self.outer_sum += features.T @ features
        return self

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Fold another accumulator (e.g. another rank's) into this one."""
        if other.num == 0:
            return self
        if self.dims is None:
            self._allocate(other.dims)
        if other.dims != self.dims:
            raise DpmsError(f"cannot merge feature statistics of {other.dims} and {self.dims} dimensions")
        self.num += other.num
        self.sum += other.sum
        self.outer_sum += other.outer_sum
        return self

    @property
    def mu(self) -> np.ndarray:
        if self.num < 1:
            raise DpmsError("no features were accumulated; the mean needs at least one sample")
        return self.sum / self.num

    @property
    def sigma(self) -> np.ndarray:
        """Unbiased covariance (divisor n − 1), as np.cov(rowvar=False)."""
        if self.num < 2:
            raise DpmsError(f"the covariance needs at least 2 samples, got {self.num}")
        mu = self.mu
        return (self.outer_sum - self.num * np.outer(mu, mu)) / (self.num - 1)

    def gaussian(self) -> GaussianStats:
        return GaussianStats(self.mu, self.sigma, self.num)

    def save(self, path: str | Path) -> None:
        """Write `mu`, `sigma` and `num` to an `.npz` (see the module docstring)."""
        self.gaussian().save(path)

    def state_dict(self) -> dict:
        """The raw sums, to save partial statistics and resume or merge them later."""
        return {"dims": self.dims, "num": self.num, "sum": self.sum, "outer_sum": self.outer_sum}

    @classmethod
    def from_state_dict(cls, state: dict) -> FeatureStats:
        stats = cls(state["dims"])
        if state["num"]:
            stats.num = int(state["num"])
            stats.sum = np.array(state["sum"], dtype=np.float64)
            stats.outer_sum = np.array(state["outer_sum"], dtype=np.float64)
        return stats


# What np.load raises on a truncated, non-zip or pickled file.
NPZ_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile)


def unreadable_npz(path: Path, error: Exception, fix: str) -> DpmsError:
    """The one-line error for an `.npz` that np.load cannot read."""
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return DpmsError(f"{path} is not a readable .npz file ({reason}); {fix}")


def open_npz(path: Path, fix: str) -> np.lib.npyio.NpzFile:
    """np.load that insists on an `.npz` archive; wrap reads in `except NPZ_READ_ERRORS` too, since a
    damaged member only fails when it is read."""
    try:
        archive = np.load(path)
    except NPZ_READ_ERRORS as e:
        raise unreadable_npz(path, e, fix) from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DpmsError(f"{path} holds a single array, not an .npz archive; {fix}")
    return archive


def load_stats(path: str | Path) -> GaussianStats:
    """Read a statistics `.npz` (dpms's, pytorch-fid's or a published reference file).

    The arrays are returned in their stored dtype so the Fréchet distance matches pytorch-fid's on
    the same file. Any problem is a one-line DpmsError.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"statistics file {path} not found; create it with `dpms stats IMAGES_DIR --out {path.name}`")
    fix = "recreate it with `dpms stats`"
    try:
        with open_npz(path, fix) as f:
            missing = [key for key in ("mu", "sigma") if key not in f.files]
            if missing:
                raise DpmsError(f"{path} has no {' or '.join(repr(k) for k in missing)} array (found: {', '.join(f.files) or 'none'}); "
                                "expected a statistics file from `dpms stats` or `pytorch_fid --save-stats`")
            mu, sigma = f["mu"], f["sigma"]
            num = int(f["num"]) if "num" in f.files else None
    except NPZ_READ_ERRORS as e:
        raise unreadable_npz(path, e, fix) from None
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise DpmsError(f"{path}: 'mu' has shape {mu.shape} and 'sigma' {sigma.shape}; expected (D,) and (D, D)")
    return GaussianStats(mu, sigma, num)
