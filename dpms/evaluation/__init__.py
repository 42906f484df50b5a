"""Evaluation: feature statistics and Fréchet distances (FID) of samples. It consumes samples only.

- `frechet_distance(mu1, sigma1, mu2, sigma2)`: pytorch-fid's arithmetic, same float.
- `FeatureStats`: streaming float64 μ/Σ, mergeable across ranks, resumable; `load_stats` reads
  `.npz` files with `mu` and `sigma` (dpms's, pytorch-fid's, published reference files).
- Feature extractors (`name`, `dims`, `__call__` on [−1, 1] NCHW floats, `from_uint8` on NHWC uint8):
  `InceptionFeatures` (FID), `IdentityFeatures` (exact model), `ModuleFeatures` (any network).
- `compute_stats`, `fid_between`: over folders of images, samples `.npz` files or tensors.
"""

from .features import FeatureExtractor, IdentityFeatures, ModuleFeatures
from .fid import FEATURE_KINDS, compute_stats, feature_extractor, fid_between, fid_of_paths, gaussian_of, write_stats
from .frechet import frechet_distance
from .inception import InceptionFeatures
from .stats import FeatureStats, GaussianStats, load_stats

__all__ = [
    "FEATURE_KINDS",
    "FeatureExtractor",
    "FeatureStats",
    "GaussianStats",
    "IdentityFeatures",
    "InceptionFeatures",
    "ModuleFeatures",
    "compute_stats",
    "feature_extractor",
    "fid_between",
    "fid_of_paths",
    "frechet_distance",
    "gaussian_of",
    "load_stats",
    "write_stats",
]

