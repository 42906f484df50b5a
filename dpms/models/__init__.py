"""Networks and the exact test model. Architectures here know nothing of solvers.

- `GaussianMixture`: the exact model (closed-form ε for every VP marginal).
- `build(arch, config)`: upstream-weight-compatible networks (ddpm, adm, adm-classifier, ncsnpp).
- `load(preset, checkpoint=PATH)`: a ready noise predictor from a published checkpoint.
- `load_edm_snapshot(path)`: an NVlabs/edm snapshot's network, read without running code from the file.
"""

from .gmm import GaussianMixture

__all__ = ["GaussianMixture", "build", "load", "load_classifier", "presets", "get_preset", "load_edm_snapshot"]


def __getattr__(name):  # lazy: keep `import dpms` light, and architectures out of solver imports
    if name == "build":
        from .architectures import build

        return build
    if name in ("load", "load_classifier", "presets", "get_preset"):
        from . import checkpoints

        return getattr(checkpoints, name)
    if name == "load_edm_snapshot":
        from .edm_snapshot import load_edm_snapshot

        return load_edm_snapshot
    raise AttributeError(name)
