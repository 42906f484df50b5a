"""Feature extractors: what a Fréchet distance is measured in.

Every extractor has `name` (the metric's label in reports), `dims` (the feature size, None when it is
taken from the data), `device`, `image_mode` (how image files are read for it: "RGB" forces three
channels as pytorch-fid does; None keeps grayscale files one-channel), and two ways in:

- `extractor(images)`: float tensors in [−1, 1], NCHW (the sampler's output convention) → (B, dims);
- `extractor.from_uint8(images)`: uint8 NHWC (what `dpms sample` writes and image files hold) → (B, dims).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

from ..errors import DpmsError


class FeatureExtractor(ABC):
    name: str
    dims: int | None
    device: torch.device
    image_mode: str | None = None

    @abstractmethod
    def __call__(self, images: Tensor) -> Tensor:
        """Float images in [−1, 1], NCHW → (B, dims) features."""

    def from_uint8(self, images: Tensor) -> Tensor:
        """uint8 NHWC → x / 127.5 − 1 in NCHW (the data scaling of DDPM and its successors) → features."""
        check_uint8_nhwc(images)
        return self(images.permute(0, 3, 1, 2).float().div(127.5).sub(1.0))


def check_uint8_nhwc(images: Tensor) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[3] not in (1, 3):
        raise DpmsError(f"expected uint8 images of shape (N, H, W, 1 or 3), got {images.dtype} {tuple(images.shape)}")


class IdentityFeatures(FeatureExtractor):
    """The samples themselves, flattened, in float64: for the exact Gaussian-mixture model, whose
    samples are low-dimensional vectors, the Fréchet distance is taken in data space."""

    name = "FD (exact features)"

    def __init__(self, dims: int | None = None, device: str | torch.device = "cpu"):
        self.dims = dims
        self.device = torch.device(device)

    def __call__(self, images: Tensor) -> Tensor:
        features = images.flatten(1).to(torch.float64)
        if self.dims is not None and features.shape[1] != self.dims:
            raise DpmsError(f"{self.name} expects samples of {self.dims} numbers, got {features.shape[1]}")
        return features


class ModuleFeatures(FeatureExtractor):
    """Any network's output as features, e.g. a small classifier's penultimate layer.

    The module is put in eval mode; `dims` defaults to the `out_features` of its last linear layer.
    """

    def __init__(self, module: nn.Module, name: str, dims: int | None = None):
        self.module = module.eval()
        self.name = name
        self.dims = dims if dims is not None else _last_linear_width(module)
        parameter = next(module.parameters(), None)
        self.device = parameter.device if parameter is not None else torch.device("cpu")

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        channels = _first_conv_channels(self.module)
        if channels is not None and images.ndim == 4 and images.shape[1] != channels:
            kind = {1: "grayscale", 3: "RGB"}
            raise DpmsError(f"{self.name} takes {kind.get(channels, channels)} images ({channels} channel{'s' * (channels > 1)}) "
                            f"but got {images.shape[1]}-channel ones; convert them, or use features that fit (inception for RGB)")
        features = self.module(images.to(self.device)).flatten(1)
        if self.dims is not None and features.shape[1] != self.dims:
            raise DpmsError(f"{self.name}: the network gives {features.shape[1]} features, expected {self.dims}")
        return features


def _first_conv_channels(module: nn.Module) -> int | None:
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    return convs[0].in_channels if convs else None


def _last_linear_width(module: nn.Module) -> int | None:
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None
