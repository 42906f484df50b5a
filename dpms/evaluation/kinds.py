"""Feature kinds: what a Fréchet distance can be measured in, each declared once.

A `FeatureKind` names everything dpms needs about one kind of features: its `--features` name, the metric
label of its reports, how to build its extractor (and the same network untrained, to time it), which samples
it accepts, its default reference statistics, and the files that decide its numbers: its weights (their
fingerprint enters a benchmark cell's key) and its source. `inception` and `exact` are declared here; other
packages declare theirs with `register_feature_kind` in a module that `dpms/__init__.py` imports (the
`digits` kind: `dpms.digits.features`); that import registers the kind and, since the numerics fingerprint
of a bench cell follows imports (`dpms.bench.cells.numerics_modules`), puts its source into every cell's key.
Nothing here imports a model family, the benchmark or the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import DpmsError
from .features import FeatureExtractor, IdentityFeatures
from .inception import InceptionFeatures


@dataclass(frozen=True)
class FeatureKind:
    name: str  # the value of --features / `features:` in a bench config
    label: str  # the metric as reports name it, e.g. "FID (Inception)"
    extractor: Callable[..., FeatureExtractor]  # (weights=None, device="cpu") -> the extractor
    random_weights: Callable[..., FeatureExtractor]  # (device) -> the same network untrained: its cost, never a metric
    timing: str = ""  # what `dpms speed` reports as the feature network it timed
    images: bool = True  # False: the samples themselves (vectors), no image quantisation
    image_shape: tuple[int, ...] | None = None  # the only sample shape it accepts; None: any image
    reference: Path | None = None  # default reference statistics; None: the config names them (or exact moments)
    reference_hint: str = ""  # how to make a missing reference statistics file
    weights: Path | None = None  # the feature network's file, fingerprinted into a bench cell's key
    help: str = ""  # one phrase for --help

    def accepts(self, shape: tuple[int, ...], is_image: bool) -> bool:
        """Whether samples of this shape can be measured in these features."""
        if is_image != self.images:
            return False
        return self.image_shape is None or tuple(shape) == self.image_shape


FEATURE_KINDS: dict[str, FeatureKind] = {}


def register_feature_kind(kind: FeatureKind) -> FeatureKind:
    """Declare a feature kind (once; a second declaration of the same name is an error)."""
    if kind.name in FEATURE_KINDS and FEATURE_KINDS[kind.name] != kind:
        raise DpmsError(f"feature kind {kind.name!r} is declared twice")
    FEATURE_KINDS[kind.name] = kind
    return kind


def get_feature_kind(name: str) -> FeatureKind:
    if name not in FEATURE_KINDS:
        raise DpmsError(f"unknown features {name!r}; choose one of {', '.join(FEATURE_KINDS)}")
    return FEATURE_KINDS[name]


def default_feature_kind(shape: tuple[int, ...], is_image: bool) -> FeatureKind:
    """The metric a target is benchmarked (and timed) with: the kind made for exactly its sample shape,
    else the first kind that accepts it (FID's Inception for images, the samples themselves for vectors)."""
    accepting = [kind for kind in FEATURE_KINDS.values() if kind.accepts(shape, is_image)]
    exact = [kind for kind in accepting if kind.image_shape is not None]
    if not accepting:
        raise DpmsError(f"no feature kind measures samples of shape {tuple(shape)}")
    return (exact or accepting)[0]


register_feature_kind(FeatureKind(
    name="inception",
    label=InceptionFeatures.name,
    extractor=lambda weights=None, device="cpu": InceptionFeatures(weights, device=device),
    random_weights=InceptionFeatures.random_weights,
    timing="pytorch-fid InceptionV3 pool3 (random weights), 8-bit images resized to 299×299",
    reference_hint="create it with `dpms stats TRAIN_IMAGES_DIR --out {path}` (pytorch-fid's statistics of the "
                   "training images) or download the published file",
    help="FID",
))

register_feature_kind(FeatureKind(
    name="exact",
    label=IdentityFeatures.name,
    extractor=lambda weights=None, device="cpu": IdentityFeatures(device=device),
    random_weights=lambda device="cpu": IdentityFeatures(device=device),
    timing="the samples themselves (FD in data space)",
    images=False,
    help="the samples themselves",
))
