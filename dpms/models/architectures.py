"""Build an upstream-weight-compatible network from an architecture name and its config.

| arch | class | upstream | config keys |
|---|---|---|---|
| "ddpm" | `ddpm.Model` | ermongroup/ddim `models/diffusion.py` | the DDIM config's `model` section |
| "adm" | `adm.UNetModel` | openai guided-/improved-diffusion `UNetModel` | constructor arguments |
| "adm-classifier" | `adm.EncoderUNetModel` | guided-diffusion `EncoderUNetModel` | constructor arguments |
| "ncsnpp" | `ncsnpp.NCSNpp` | yang-song/score_sde_pytorch NCSN++ / DDPM | the score_sde `model` config |

Each network's state_dict has exactly upstream's keys and shapes for the same config, so published
checkpoints load with `load_state_dict(strict=True)`.
"""

from __future__ import annotations

import inspect
from typing import Mapping

from torch import nn

from ..errors import DpmsError

ARCHITECTURES = ("ddpm", "adm", "adm-classifier", "ncsnpp")


def _network_class(arch: str):
    # Imported lazily: building one family should not import the others.
    if arch == "ddpm":
        from .ddpm import Model

        return Model
    if arch == "adm":
        from .adm import UNetModel

        return UNetModel
    if arch == "adm-classifier":
        from .adm import EncoderUNetModel

        return EncoderUNetModel
    from .ncsnpp import NCSNpp

    return NCSNpp


def config_keys(arch: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(required, optional) config keys of a keyword-argument architecture (all but "ncsnpp")."""
    params = inspect.signature(_network_class(arch).__init__).parameters.values()
    keyword = [p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
    required = tuple(p.name for p in keyword if p.default is inspect.Parameter.empty)
    optional = tuple(p.name for p in keyword if p.default is not inspect.Parameter.empty)
    return required, optional


def build(arch: str, config: Mapping) -> nn.Module:
    """A freshly initialised network of architecture `arch` configured by `config`.

    Raises `DpmsError` for an unknown architecture, an unknown config key or a missing required key.
    Build under `with torch.device("meta"):` to inspect keys and shapes without allocating weights.
    """
    if arch not in ARCHITECTURES:
        raise DpmsError(f"unknown architecture {arch!r}; use one of {', '.join(ARCHITECTURES)}")
    if arch == "ncsnpp":
        # NCSNpp takes the score_sde config dict and validates its keys itself.
        return _network_class(arch)(dict(config))
    required, optional = config_keys(arch)
    unknown = sorted(set(config) - set(required) - set(optional))
    if unknown:
        raise DpmsError(
            f"unknown {arch} config key(s) {', '.join(unknown)}; valid keys: {', '.join(required + optional)}"
        )
    missing = [key for key in required if key not in config]
    if missing:
        raise DpmsError(f"{arch} config is missing required key(s) {', '.join(missing)}; add them to the config")
    return _network_class(arch)(**config)
