"""A small real model that ships with dpms: scikit-learn's 8×8 handwritten digits.

* `data`: the 1,797 images bundled with scikit-learn (`sklearn.datasets.load_digits`, no download),
  grey levels 0..16 mapped to [−1, 1], shape (1797, 1, 8, 8); the fixed train / held-out split.
* `classifier`: a small CNN digit classifier; its penultimate layer (128-d) is the feature map of
  "FD (digits features)", the Fréchet distance (Heusel et al. 2017, Eq. 6) computed in that space instead
  of Inception's. Reference statistics of all 1,797 real digits ship in `digits_stats.npz`.
* `features`: that metric declared as the `digits` feature kind (`dpms.evaluation.kinds`).
* `model`: the diffusion model, dpms's DDPM U-Net with the `digits` entry of checkpoints/registry.yaml
  (the only copy of its configuration), trained with ε-prediction and L_simple on
  `NoiseSchedule.discrete_linear(1000)`; the EMA weights ship in `digits_ddpm.pt`.
* `sampling`: drawing digits with a dpms solver and judging them through the classifier.
* `training`: `dpms train digits-classifier` then `dpms train digits` reproduce everything
  (checkpoints/README.md lists the shipped files; their cards checkpoints/digits/digits_ddpm.json and
  checkpoints/digits/digits_classifier.json record the settings, wall time and the numbers they produced).
"""

import importlib

# Each public name and the module that holds it; a name is imported on first use (PEP 562), so that
# importing dpms (which declares the digits feature kind) does not load the training and sampling code.
_HOMES = {
    "classifier": ("FEATURE_DIM", "DigitsClassifier", "augment", "classifier_accuracy", "feature_statistics", "gaussian",
                   "load_digits_classifier", "load_digits_stats"),
    "data": ("CLASSIFIER_FILE", "DDPM_FILE", "DEQUANTISATIONS", "DIGITS_DIR", "GAUSSIAN_DEQUANTISATION_STD", "GREY_LEVEL_SPACING", "HELD_OUT_SIZE", "SAMPLES_FILE", "SHIFT_AUGMENT_DIM", "SHIPPED_RECIPE", "SPLIT_SEED",
             "STATS_FILE", "TRAIN_STATE_FILE", "dequantise", "digits_split", "load_digits_images", "load_digits_labels", "sha256_of",
             "shift_augment"),
    "features": ("FEATURE_KIND", "FEATURES_NAME", "digits_features"),
    "model": ("DIGITS_DDPM_CONFIG", "DIGITS_SCHEDULE_SPEC", "build_digits_ddpm", "digits_ddpm_config", "digits_ddpm_from_weights", "digits_schedule",
              "load_digits_ddpm"),
    "sampling": ("evaluate_digits_samples", "nearest_neighbour_statistics", "ode_range_statistics", "range_statistics", "sample_digits",
                 "save_sample_grid"),
    "training": ("LOSS_WINDOW", "check_digits_ddpm", "loss_curve", "reproduce_digits_classifier", "reproduce_digits_ddpm", "save_digits_classifier",
                 "save_digits_ddpm", "train_digits_classifier", "train_digits_ddpm"),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}
__all__ = sorted(_HOME_OF)


def __getattr__(name: str):
    if name not in _HOME_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOME_OF[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME_OF))
