"""Build an upstream-weight-compatible network from an architecture name and its config.

| arch | class | upstream | config keys |
|---|---|---|---|
| "ddpm" | `ddpm.Model` | ermongroup/ddim `models/diffusion.py` | the DDIM config's `model` section |
| "adm" | `adm.UNetModel` | openai guided-/improved-diffusion `UNetModel` | constructor arguments |
| "adm-classifier" | `adm.EncoderUNetModel` | guided-diffusion `EncoderUNetModel` | constructor arguments |
| "ncsnpp" | `ncsnpp.NCSNpp` | yang-song/score_sde_pytorch NCSN++ / DDPM | the score_sde `model` config |
| "edm" | `edm.EDMPrecond` / `VPPrecond` / `VEPrecond` | NVlabs/edm `training/networks.py` | EDM's network kwargs (`class_name`, ...) |

Each network's state_dict has exactly upstream's keys and shapes for the same config, so published
checkpoints load with `load_state_dict(strict=True)`.

`TABLE` is the one table of what an architecture is: how it is built, the sample shape and number
of classes its config describes, and how the built network is called while sampling. A new architecture
is one `Architecture` row here (and its module).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Mapping

from torch import nn

from ..errors import DpmsError


def _ddpm_class():
    from .ddpm import Model

    return Model


def _adm_class():
    from .adm import UNetModel

    return UNetModel


def _adm_classifier_class():
    from .adm import EncoderUNetModel

    return EncoderUNetModel


def _ncsnpp_class():
    from .ncsnpp import NCSNpp

    return NCSNpp


def _keyword_build(arch: str, cls, config: Mapping) -> nn.Module:
    required, optional = _keyword_arguments(cls)
    unknown = sorted(set(config) - set(required) - set(optional))
    if unknown:
        raise DpmsError(
            f"unknown {arch} config key(s) {', '.join(unknown)}; valid keys: {', '.join(required + optional)}"
        )
    missing = [key for key in required if key not in config]
    if missing:
        raise DpmsError(f"{arch} config is missing required key(s) {', '.join(missing)}; add them to the config")
    return cls(**config)


def _keyword_arguments(cls) -> tuple[tuple[str, ...], tuple[str, ...]]:
    params = inspect.signature(cls.__init__).parameters.values()
    keyword = [p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
    required = tuple(p.name for p in keyword if p.default is inspect.Parameter.empty)
    optional = tuple(p.name for p in keyword if p.default is not inspect.Parameter.empty)
    return required, optional


def _build_edm(config: Mapping) -> nn.Module:
    from .edm import build_edm

    return build_edm(config)


def _edm_for_sampling(net: nn.Module) -> nn.Module:
    from .edm import LabelIndexAdapter

    return LabelIndexAdapter(net)


def _square(channels, resolution) -> tuple[int, int, int]:
    return (int(channels), int(resolution), int(resolution))


@dataclass(frozen=True)
class Architecture:
    """What dpms knows about one architecture family, read from its config alone."""

    name: str
    build: Callable[[Mapping], nn.Module]
    image_shape: Callable[[Mapping], tuple[int, int, int]]
    num_classes: Callable[[Mapping], int | None] | None  # None: the config does not say (the preset does)
    network_class: Callable[[], type] | None = None  # keyword-argument architectures: their constructor
    # the loaded network as the noise function calls it, net(x, t_input, y=labels): identity for most;
    # EDM networks take one-hot `class_labels` instead of label indices
    for_sampling: Callable[[nn.Module], nn.Module] = lambda net: net


def _keyword_architecture(name: str, network_class, image_shape, num_classes=None) -> Architecture:
    return Architecture(name, lambda config: _keyword_build(name, network_class(), config), image_shape, num_classes,
                        network_class=network_class)


TABLE: dict[str, Architecture] = {
    arch.name: arch
    for arch in (
        _keyword_architecture(
            "ddpm", _ddpm_class, lambda c: _square(c.get("in_channels", 3), c["resolution"])),
        _keyword_architecture(
            "adm", _adm_class, lambda c: _square(c["in_channels"], c["image_size"]), lambda c: c.get("num_classes")),
        _keyword_architecture(
            "adm-classifier", _adm_classifier_class, lambda c: _square(c["in_channels"], c["image_size"])),
        # NCSNpp takes the score_sde config dict and validates its keys itself
        Architecture("ncsnpp", lambda config: _ncsnpp_class()(dict(config)),
                     lambda c: _square(c.get("num_channels", 3), c.get("image_size", 32)), None),
        Architecture("edm", _build_edm, lambda c: _square(c["img_channels"], c["img_resolution"]),
                     lambda c: int(c.get("label_dim") or 0) or None, for_sampling=_edm_for_sampling),
    )
}
ARCHITECTURES = tuple(TABLE)  # the names


def architecture(arch: str) -> Architecture:
    """The `TABLE` row of `arch`; an unknown name is a one-line error listing the known ones."""
    if arch not in TABLE:
        raise DpmsError(f"unknown architecture {arch!r}; use one of {', '.join(TABLE)}")
    return TABLE[arch]


def config_keys(arch: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(required, optional) config keys of a keyword-argument architecture (ddpm, adm, adm-classifier)."""
    row = architecture(arch)
    if row.network_class is None:
        raise DpmsError(f"architecture {arch!r} does not take keyword arguments")
    return _keyword_arguments(row.network_class())


def build(arch: str, config: Mapping) -> nn.Module:
    """A freshly initialised network of architecture `arch` configured by `config`.

    Raises `DpmsError` for an unknown architecture, an unknown config key or a missing required key.
    Build under `with torch.device("meta"):` to inspect keys and shapes without allocating weights.
    """
    return architecture(arch).build(config)


def image_shape_of(arch: str, config: Mapping) -> tuple[int, int, int]:
    """[C, H, W] of one sample as the network's config describes it."""
    return architecture(arch).image_shape(config)


def num_classes_of(arch: str, config: Mapping, default: int | None = None) -> int | None:
    """Number of classes the network's config declares (None: unconditional); `default` (the preset's
    `num_classes`) where the architecture's config does not carry it."""
    row = architecture(arch)
    return default if row.num_classes is None else row.num_classes(config)
