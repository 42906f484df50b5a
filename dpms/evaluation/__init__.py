"""Evaluation: feature statistics and Fréchet distances (FID) of samples. It consumes samples only.

- `frechet_distance(mu1, sigma1, mu2, sigma2)`: pytorch-fid's arithmetic, same float.
- `FeatureStats`: streaming float64 μ/Σ, mergeable across ranks, resumable; `load_stats` reads
  `.npz` files with `mu` and `sigma` (dpms's, pytorch-fid's, published reference files).
- Feature extractors (`name`, `dims`, `__call__` on [−1, 1] NCHW floats, `from_uint8` on NHWC uint8):
  `InceptionFeatures` (FID), `IdentityFeatures` (exact model), `ModuleFeatures` (any network).
- `FeatureKind`, `FEATURE_KINDS`: each kind of features declared once (`kinds`).
- `compute_stats`, `fid_between`: over folders of images, samples `.npz` files or tensors.
"""

from .features import FeatureExtractor, IdentityFeatures, ModuleFeatures
from .fid import compute_stats, feature_extractor, fid_between, fid_of_paths, gaussian_of, write_stats
from .frechet import frechet_distance
from .inception import InceptionFeatures
from .kinds import FEATURE_KINDS, FeatureKind, default_feature_kind, get_feature_kind, register_feature_kind
from .stats import FeatureStats, GaussianStats, load_stats

__all__ = [
    "FEATURE_KINDS",
    "FeatureExtractor",
    "FeatureKind",
    "FeatureStats",
    "GaussianStats",
    "IdentityFeatures",
    "InceptionFeatures",
    "ModuleFeatures",
    "compute_stats",
    "default_feature_kind",
    "feature_extractor",
    "fid_between",
    "fid_of_paths",
    "frechet_distance",
    "gaussian_of",
    "get_feature_kind",
    "load_stats",
    "register_feature_kind",
    "write_stats",
]

