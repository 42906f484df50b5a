"""Networks and the exact test model. Architectures here know nothing of solvers.

- `GaussianMixture`: the exact model (closed-form ε for every VP marginal).
- `build(arch, config)`: upstream-weight-compatible networks (ddpm, adm, adm-classifier, ncsnpp).
- `load(preset, checkpoint=PATH)`: a ready noise predictor from a published checkpoint.
"""

from .gmm import GaussianMixture

__all__ = ["GaussianMixture", "build", "load", "load_classifier", "presets", "get_preset"]


def __getattr__(name):  # lazy: keep `import dpms` light, and architectures out of solver imports
    if name == "build":
        from .architectures import build

        return build
    if name in ("load", "load_classifier", "presets", "get_preset"):
        from . import checkpoints

        return getattr(checkpoints, name)
    raise AttributeError(name)
