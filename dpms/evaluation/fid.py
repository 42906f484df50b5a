"""Statistics of a set of samples and the Fréchet distance between two sets: the library side of
`dpms stats` and `dpms fid`."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import DpmsError
from .features import FeatureExtractor
from .frechet import frechet_distance
from .kinds import FEATURE_KINDS, get_feature_kind  # noqa: F401 (FEATURE_KINDS: also importable from here, its old home)
from .sources import open_source, source_kind
from .stats import FeatureStats, GaussianStats, load_stats


def feature_extractor(kind: str, inception_weights: str | Path | None = None, device: str = "cpu") -> FeatureExtractor:
    """The extractor of a feature kind (`dpms.evaluation.kinds`): "inception" → InceptionFeatures (FID);
    "digits" → the shipped digit classifier's features; "exact" → the samples themselves, any size."""
    return get_feature_kind(kind).extractor(inception_weights, device=device)


def compute_stats(source, extractor: FeatureExtractor, batch_size: int = 50, device: str | torch.device | None = None,
                  progress: bool = False) -> FeatureStats:
    """Feature statistics of a folder of images, a samples .npz, or samples in memory (see `sources`).

    uint8 images go through `extractor.from_uint8`, float samples through `extractor(...)`. Batches
    are moved to `device` (default: the extractor's)."""
    total, batches = open_source(source, batch_size, extractor.image_mode)
    device = torch.device(device) if device is not None else extractor.device
    stats = FeatureStats(extractor.dims)
    if progress:
        from rich.progress import track

        batches = track(batches, total=-(-total // batch_size), description=extractor.name, transient=True)
    for batch in batches:
        batch = batch.to(device)
        with torch.no_grad():
            stats.update(extractor.from_uint8(batch) if batch.dtype == torch.uint8 else extractor(batch))
    return stats


def gaussian_of(source, extractor: FeatureExtractor | None, batch_size: int = 50, device=None,
                progress: bool = False) -> GaussianStats:
    """(μ, Σ) of a statistics file, of a `GaussianStats`/`FeatureStats`, or of samples (computed)."""
    if isinstance(source, GaussianStats):
        return source
    if isinstance(source, FeatureStats):
        return source.gaussian()
    if isinstance(source, (str, Path)) and source_kind(source) == "stats":
        return load_stats(source)
    if extractor is None:
        raise DpmsError("a feature extractor is needed to compute statistics of samples")
    return compute_stats(source, extractor, batch_size, device, progress).gaussian()


def fid_between(samples, reference, extractor: FeatureExtractor | None = None, batch_size: int = 50,
                device=None) -> float:
    """Fréchet distance between `samples` and `reference`, each a statistics .npz, a folder of images,
    a samples .npz, a tensor/array of samples, or precomputed statistics."""
    first = gaussian_of(samples, extractor, batch_size, device)
    second = gaussian_of(reference, extractor, batch_size, device)
    return frechet_distance(first.mu, first.sigma, second.mu, second.sigma)


def write_stats(source: str | Path, out: str | Path, features: str = "inception",
                inception_weights: str | Path | None = None, batch_size: int = 50, device: str = "cpu",
                progress: bool = False) -> FeatureStats:
    """`dpms stats`: statistics of a folder or samples .npz, written to `out` (mu, sigma, num).
    Inputs, output name and feature weights are checked before any image is read."""
    out = Path(out)
    if out.suffix != ".npz":
        raise DpmsError(f"--out must end in .npz, got {out}")
    if batch_size < 1:
        raise DpmsError(f"--batch must be positive, got {batch_size}")
    if source_kind(source) == "stats":
        raise DpmsError(f"{source} already holds statistics; pass a folder of images or a samples .npz")
    extractor = feature_extractor(features, inception_weights, device)
    stats = compute_stats(source, extractor, batch_size, progress=progress)
    stats.save(out)
    return stats


def fid_of_paths(samples: str | Path, reference: str | Path, features: str = "inception",
                 inception_weights: str | Path | None = None, batch_size: int = 50, device: str = "cpu",
                 progress: bool = False) -> tuple[str, float]:
    """`dpms fid`: (metric name, value). Each side is a folder, a samples .npz or a statistics .npz;
    both are checked, and the feature network loaded only if one side needs it, before any work."""
    kind = get_feature_kind(features)
    if batch_size < 1:
        raise DpmsError(f"--batch must be positive, got {batch_size}")
    sides = [samples, reference]
    stats = [load_stats(side) if source_kind(side) == "stats" else None for side in sides]
    extractor = None
    if None in stats:
        extractor = feature_extractor(features, inception_weights, device)
        for side, side_stats in zip(sides, stats):
            if side_stats is not None and extractor.dims not in (None, side_stats.mu.shape[0]):
                raise DpmsError(f"{side} holds {side_stats.mu.shape[0]}-d statistics but {extractor.name} gives "
                                f"{extractor.dims}-d features; use statistics of the same feature network")
    first, second = (
        side_stats if side_stats is not None else compute_stats(side, extractor, batch_size, progress=progress).gaussian()
        for side, side_stats in zip(sides, stats)
    )
    name = extractor.name if extractor is not None else kind.label
    return name, frechet_distance(first.mu, first.sigma, second.mu, second.sigma)

