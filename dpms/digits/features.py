"""The "digits" feature kind: the shipped digit classifier's features, against all 1,797 real digits.

Importing this module registers it (`dpms.evaluation.register_feature_kind`); `dpms/__init__.py` does.
"""

from __future__ import annotations

from ..evaluation.features import ModuleFeatures
from ..evaluation.kinds import FeatureKind, register_feature_kind
from .classifier import DigitsClassifier, load_digits_classifier
from .data import CLASSIFIER_FILE, DIGITS_DIR, STATS_FILE

FEATURES_NAME = "FD (digits features)"


def digits_features(device="cpu", directory=None) -> ModuleFeatures:
    """The feature extractor of "FD (digits features)": images in [−1, 1] (B, 1, 8, 8) → (B, 128)."""
    return ModuleFeatures(load_digits_classifier(device, directory).features, name=FEATURES_NAME)


FEATURE_KIND = register_feature_kind(FeatureKind(
    name="digits",
    label=FEATURES_NAME,
    extractor=lambda weights=None, device="cpu": digits_features(device),
    random_weights=lambda device="cpu": ModuleFeatures(DigitsClassifier().features.to(device), name=FEATURES_NAME),
    timing="digits feature network (random weights), 8-bit images",
    image_shape=(1, 8, 8),
    reference=DIGITS_DIR / STATS_FILE,
    reference_hint="run `dpms train digits-classifier`",
    weights=DIGITS_DIR / CLASSIFIER_FILE,
    help="the shipped digit classifier",
))
