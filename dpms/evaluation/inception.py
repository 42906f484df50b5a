"""The FID Inception network, built offline from pytorch-fid's weight file.

pytorch-fid (the FID tool behind the DPM-Solver, PNDM and DDIM numbers) uses the TensorFlow
Inception graph of TTUR ported to PyTorch: torchvision's Inception-v3 with 1008 classes, no
auxiliary head, and the Mixed_5b–5d, 6b–6e, 7b, 7c blocks replaced by its FIDInception* variants
(average pools that ignore padding, a max pool in the last block). Features are the 2048-d output
of the final average pool ("pool3"). pytorch-fid downloads the weights on first use; dpms never
downloads — it looks for the file and checks its sha256.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import DpmsError, MissingFileError
from .features import FeatureExtractor, check_uint8_nhwc

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
FID_WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + FID_WEIGHTS_FILE
WEIGHTS_ENV = "DPMS_INCEPTION"
INCEPTION_SIZE = 299


def hub_checkpoints_dir() -> Path:
    """Where torch.hub (and so pytorch-fid) keeps downloads: $TORCH_HOME/hub/checkpoints, with
    TORCH_HOME defaulting to ~/.cache/torch."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_inception_weights(weights: str | Path | None = None) -> Path:
    """The weight file: `weights` if given, else $DPMS_INCEPTION if set, else the torch.hub checkpoints
    folder. The first of these that is set is the only place looked (a path given on purpose that does
    not exist is an error, not a reason to fall back). A folder means the file of that name inside it."""
    if weights is not None:
        where, candidate = "--inception-weights", Path(weights)
    elif os.environ.get(WEIGHTS_ENV):
        where, candidate = f"${WEIGHTS_ENV}", Path(os.environ[WEIGHTS_ENV])
    else:
        where, candidate = "the torch hub folder", hub_checkpoints_dir() / FID_WEIGHTS_FILE
    candidate = candidate.expanduser()
    if candidate.is_dir():
        candidate = candidate / FID_WEIGHTS_FILE
    if not candidate.is_file():
        raise MissingFileError(
            f"FID Inception weights {FID_WEIGHTS_FILE} not found at {candidate} ({where}); download {FID_WEIGHTS_URL} "
            f"into {hub_checkpoints_dir()}/, or pass --inception-weights PATH or set ${WEIGHTS_ENV}")
    return candidate


_sha256_by_file: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) so repeated extractors hash the 91 MB once."""
    info = path.stat()
    key = (str(path.resolve()), info.st_size, info.st_mtime_ns)
    if key not in _sha256_by_file:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _sha256_by_file[key] = digest.hexdigest()
    return _sha256_by_file[key]


def check_inception_weights(path: Path) -> None:
    digest = file_sha256(path)
    if digest != FID_WEIGHTS_SHA256:
        raise DpmsError(f"{path} has sha256 {digest[:16]}…, not that of the FID Inception weights "
                        f"({FID_WEIGHTS_SHA256[:16]}…); replace it with {FID_WEIGHTS_URL}")


def build_fid_inception() -> nn.Module:
    """The architecture pytorch-fid's `fid_inception_v3()` builds, without its download: torchvision's
    Inception3(num_classes=1008, aux_logits=False) with the FID blocks swapped in. Parameters are
    PyTorch's default initialisation (build under torch.device("meta") before loading weights)."""
    import torchvision
    from pytorch_fid.inception import FIDInceptionA, FIDInceptionC, FIDInceptionE_1, FIDInceptionE_2

    net = torchvision.models.inception_v3(weights=None, num_classes=1008, aux_logits=False, init_weights=False)
    net.Mixed_5b = FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = FIDInceptionE_1(1280)
    net.Mixed_7c = FIDInceptionE_2(2048)
    return net


class InceptionPool3(nn.Module):
    """Images in [0, 1] (B, 3, H, W) → 2048-d pool3 features, the computation of pytorch-fid's
    InceptionV3(output_blocks=[3]): bilinear resize to 299×299 (align_corners=False), then 2x − 1,
    then the network up to its final average pool."""

    def __init__(self, inception: nn.Module):
        super().__init__()
        n = inception
        self.layers = nn.Sequential(
            n.Conv2d_1a_3x3, n.Conv2d_2a_3x3, n.Conv2d_2b_3x3, n.maxpool1,
            n.Conv2d_3b_1x1, n.Conv2d_4a_3x3, n.maxpool2,
            n.Mixed_5b, n.Mixed_5c, n.Mixed_5d, n.Mixed_6a, n.Mixed_6b, n.Mixed_6c, n.Mixed_6d, n.Mixed_6e,
            n.Mixed_7a, n.Mixed_7b, n.Mixed_7c, n.avgpool,
        )

    def forward(self, images01: Tensor) -> Tensor:
        x = F.interpolate(images01, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
        return self.layers(2 * x - 1).flatten(1)


def load_fid_inception(path: Path) -> InceptionPool3:
    """The pool3 network with the weights in `path` (a state_dict of `build_fid_inception()`)."""
    with torch.device("meta"):
        inception = build_fid_inception()
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    inception.load_state_dict(state_dict, strict=True, assign=True)
    return InceptionPool3(inception).eval()


class InceptionFeatures(FeatureExtractor):
    """pool3 features of the FID Inception network: "FID (Inception)".

    `from_uint8` feeds 8-bit images exactly as pytorch-fid does after reading a PNG (ToTensor's
    x / 255), so statistics of the same images match pytorch-fid's. Float images in [−1, 1] are
    mapped to (x + 1) / 2 without quantisation; the papers quantise samples to 8 bits first, so pass
    uint8 images (what `dpms sample` writes) to follow their protocol. One-channel images are
    repeated to RGB, as PIL's convert("RGB") does for grayscale files.
    """

    name = "FID (Inception)"
    dims = 2048
    image_mode = "RGB"

    def __init__(self, weights: str | Path | None = None, device: str | torch.device = "cpu"):
        self.weights_path = find_inception_weights(weights)
        check_inception_weights(self.weights_path)
        self.device = torch.device(device)
        self.network = load_fid_inception(self.weights_path).to(self.device)

    @classmethod
    def random_weights(cls, device: str | torch.device = "cpu") -> "InceptionFeatures":
        """The same network with random weights and no weight file: what timing the FID pipeline needs
        (its cost does not depend on the weights), never a metric."""
        extractor = cls.__new__(cls)
        extractor.weights_path, extractor.device = None, torch.device(device)
        extractor.network = InceptionPool3(build_fid_inception()).to(extractor.device).eval().requires_grad_(False)
        return extractor

    def __call__(self, images: Tensor) -> Tensor:
        return self.features_of_unit_images((images.to(self.device, torch.float32) + 1) / 2)

    def from_uint8(self, images: Tensor) -> Tensor:
        check_uint8_nhwc(images)
        images = images.to(self.device).permute(0, 3, 1, 2).contiguous()
        return self.features_of_unit_images(images.float().div(255))

    @torch.no_grad()
    def features_of_unit_images(self, images01: Tensor) -> Tensor:
        """Images in [0, 1], (B, 1 or 3, H, W) → (B, 2048)."""
        if images01.ndim != 4 or images01.shape[1] not in (1, 3):
            raise DpmsError(f"{self.name} needs images of shape (N, 1 or 3, H, W), got {tuple(images01.shape)}")
        if images01.shape[1] == 1:
            images01 = images01.expand(-1, 3, -1, -1)
        return self.network(images01)
