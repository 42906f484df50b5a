"""score_sde's U-Nets (Song et al. 2021, "Score-Based Generative Modeling through SDEs"), weight-compatible
with yang-song/score_sde_pytorch: the NCSN++ / DDPM++ class (`models/ncsnpp.py`, model name "ncsnpp") and its
port of Ho et al.'s DDPM U-Net (`models/ddpm.py`, model name "ddpm").

`NCSNpp(config)` registers exactly upstream's state_dict: a float64 buffer ``sigmas`` first, then
``all_modules.N.<sub>`` in upstream order, with upstream's sub-module names (GroupNorm_0, Conv_0, Dense_0,
NIN_0, Conv2d_0, ...). Its ``parameters()`` order equals upstream's, which matters because score_sde
checkpoints store the EMA weights as an unnamed list (``ema.shadow_params``) in that order.

Config keys are score_sde's ``config.model`` names plus ``image_size``, ``num_channels`` and ``centered`` from
``config.data``. Unset keys take the values of ``configs/vp/cifar10_ddpmpp_continuous.py`` (`DEFAULTS`).

FIR resampling (``fir=True``, StyleGAN2's upfirdn2d, a CUDA extension upstream) is implemented here in plain
PyTorch. The one FIR path not implemented is an upsampling convolution (``progressive='residual'``, or
``resblock_type='ddpm'`` with ``resamp_with_conv``): upstream's PyTorch code cannot run it (it slices a tensor
with a negative step) and no released config uses it, so it raises `DpmsError`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import DpmsError

# configs/vp/cifar10_ddpmpp_continuous.py (model section, with its defaults from default_cifar10_configs.py),
# plus the data keys the network reads.
DEFAULTS: dict = {
    "name": "ncsnpp",
    "image_size": 32,
    "num_channels": 3,
    "centered": True,
    "sigma_min": 0.01,
    "sigma_max": 50.0,
    "num_scales": 1000,
    "beta_min": 0.1,
    "beta_max": 20.0,
    "dropout": 0.1,
    "embedding_type": "positional",
    "scale_by_sigma": False,
    "ema_rate": 0.9999,
    "normalization": "GroupNorm",
    "nonlinearity": "swish",
    "nf": 128,
    "ch_mult": (1, 2, 2, 2),
    "num_res_blocks": 4,
    "attn_resolutions": (16,),
    "resamp_with_conv": True,
    "conditional": True,
    "fir": False,
    "fir_kernel": (1, 3, 3, 1),
    "skip_rescale": True,
    "resblock_type": "biggan",
    "progressive": "none",
    "progressive_input": "none",
    "progressive_combine": "sum",
    "attention_type": "ddpm",
    "init_scale": 0.0,
    "fourier_scale": 16.0,
    "conv_size": 3,
}

# Allowed values of the string-valued keys (compared lower-case, as upstream does). normalization,
# attention_type and conv_size are read by neither upstream class; only the values the networks really
# implement are accepted so a config cannot claim an architecture it does not get.
_CHOICES: dict = {
    "name": ("ncsnpp", "ddpm"),
    "embedding_type": ("positional", "fourier"),
    "nonlinearity": ("swish", "elu", "relu", "lrelu"),
    "normalization": ("groupnorm",),
    "resblock_type": ("biggan", "ddpm"),
    "progressive": ("none", "output_skip", "residual"),
    "progressive_input": ("none", "input_skip", "residual"),
    "progressive_combine": ("sum", "cat"),
    "attention_type": ("ddpm",),
}

# score_sde's DDPM class hard-codes these (it reads none of the NCSN++ keys): plain DDPM ResNet blocks,
# sum skips, near-zero init of every block's last layer, sinusoidal time embedding, no FIR, no pyramids.
_DDPM_FIXED: dict = {
    "resblock_type": "ddpm",
    "skip_rescale": False,
    "init_scale": 0.0,
    "embedding_type": "positional",
    "progressive": "none",
    "progressive_input": "none",
    "fir": False,
}

_ACTIVATIONS = {
    "swish": F.silu,
    "elu": F.elu,
    "relu": F.relu,
    "lrelu": partial(F.leaky_relu, negative_slope=0.2),
}


def resolve_config(config: Mapping) -> dict:
    """`DEFAULTS` updated with `config`, validated; strings lower-cased. Raises `DpmsError` (one line)."""
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise DpmsError(
            f"unknown score_sde model config key(s) {', '.join(unknown)}; known keys: {', '.join(DEFAULTS)}"
        )
    cfg = {**DEFAULTS, **config}
    for key, allowed in _CHOICES.items():
        value = str(cfg[key]).lower()
        if value not in allowed:
            raise DpmsError(f"score_sde model config {key}={cfg[key]!r} is not supported; use one of {allowed}")
        cfg[key] = value
    if cfg["conv_size"] != 3:
        raise DpmsError(f"score_sde model config conv_size={cfg['conv_size']!r} is not supported; use 3")
    if cfg["name"] == "ddpm":
        cfg.update(_DDPM_FIXED)
    cfg["ch_mult"] = tuple(int(m) for m in cfg["ch_mult"])
    cfg["attn_resolutions"] = tuple(int(r) for r in cfg["attn_resolutions"])
    cfg["fir_kernel"] = tuple(float(k) for k in cfg["fir_kernel"])
    if not cfg["ch_mult"]:
        raise DpmsError("score_sde model config ch_mult=() is empty; give one multiplier per resolution")
    factor = 2 ** (len(cfg["ch_mult"]) - 1)
    if cfg["image_size"] % factor:
        raise DpmsError(
            f"score_sde model config image_size={cfg['image_size']} must be divisible by 2**(len(ch_mult)-1)"
            f"={factor} (ch_mult={cfg['ch_mult']}); fix image_size or ch_mult"
        )
    ddpm_upsample_conv = cfg["resblock_type"] == "ddpm" and cfg["resamp_with_conv"]
    if cfg["fir"] and (cfg["progressive"] == "residual" or ddpm_upsample_conv):
        raise DpmsError(
            "score_sde model config fir=True with an upsampling convolution (progressive='residual', or "
            "resblock_type='ddpm' with resamp_with_conv) is not supported: score_sde_pytorch cannot run it "
            "and no released config uses it; set fir=False"
        )
    return cfg


# ----------------------------------------------------------------------------------------------------------
# Initialisation and basic layers (upstream models/layers.py conventions)
# ----------------------------------------------------------------------------------------------------------


@torch.no_grad()
def _default_init_(weight: Tensor, scale: float = 1.0) -> Tensor:
    """DDPM's initialiser as score_sde writes it (`layers.default_init`): uniform with variance
    scale / fan_avg, fan_avg = (fan_in + fan_out) / 2 times the receptive-field size. A scale of 0 is
    replaced by 1e-10, so "zero-initialised" layers are tiny but not exactly zero, as upstream."""
    scale = 1e-10 if scale == 0 else scale
    receptive_field = math.prod(weight.shape[2:])
    fan_avg = (weight.shape[0] + weight.shape[1]) / 2 * receptive_field
    bound = math.sqrt(3.0 * scale / fan_avg)
    return weight.uniform_(-bound, bound)


def _conv(in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int | None = None,
          init_scale: float = 1.0) -> nn.Conv2d:
    """`ddpm_conv3x3` / `ddpm_conv1x1`: DDPM-initialised weight, zero bias."""
    padding = kernel_size // 2 if padding is None else padding
    conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding)
    _default_init_(conv.weight, init_scale)
    nn.init.zeros_(conv.bias)
    return conv


def _linear(in_features: int, out_features: int) -> nn.Linear:
    dense = nn.Linear(in_features, out_features)
    _default_init_(dense.weight)
    nn.init.zeros_(dense.bias)
    return dense


def _group_norm(channels: int, name: str) -> nn.GroupNorm:
    # DDPM always uses 32 groups; NCSN++ uses min(C/4, 32) so narrow layers still divide.
    groups = 32 if name == "ddpm" else min(channels // 4, 32)
    return nn.GroupNorm(groups, channels, eps=1e-6)


class NIN(nn.Module):
    """Per-pixel dense layer ("network in network"), weight stored (in, out) as upstream's `W`, bias `b`."""

    def __init__(self, in_ch: int, out_ch: int, init_scale: float = 0.1):
        super().__init__()
        self.W = nn.Parameter(torch.empty(in_ch, out_ch))
        self.b = nn.Parameter(torch.zeros(out_ch))
        _default_init_(self.W, init_scale)

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("bchw,cd->bdhw", x, self.W) + self.b[:, None, None]


def timestep_embedding(timesteps: Tensor, dim: int, max_positions: int = 10000) -> Tensor:
    """DDPM's sinusoidal embedding [sin(t ω_k), cos(t ω_k)], ω_k = max_positions^(-k/(dim/2 - 1)),
    computed in float32 as upstream `layers.get_timestep_embedding` (note the `- 1`, unlike ADM)."""
    half = dim // 2
    step = math.log(max_positions) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=timesteps.device) * -step)
    args = timesteps.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


class GaussianFourierProjection(nn.Module):
    """Random Fourier features of log σ (score_sde, App. H); `W` is a frozen parameter, so upstream's EMA
    (which keeps only parameters with requires_grad) has no shadow for it."""

    def __init__(self, embedding_size: int, scale: float):
        super().__init__()
        self.W = nn.Parameter(torch.randn(embedding_size) * scale, requires_grad=False)

    def forward(self, log_sigma: Tensor) -> Tensor:
        proj = log_sigma[:, None] * self.W[None, :] * 2 * math.pi
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


# ----------------------------------------------------------------------------------------------------------
# Resampling: naive (nearest / 2x2 mean) and FIR (StyleGAN2 upfirdn2d, upstream up_or_down_sampling.py)
# ----------------------------------------------------------------------------------------------------------


def _fir_kernel(taps) -> Tensor:
    """Separable taps -> normalised 2-D kernel (sums to 1), as StyleGAN2's `_setup_kernel`."""
    k = torch.tensor(taps, dtype=torch.float32)
    k = torch.outer(k, k) if k.ndim == 1 else k
    return k / k.sum()


def upfirdn2d(x: Tensor, kernel: Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)) -> Tensor:
    """StyleGAN2's upfirdn2d on each channel: insert up-1 zeros after every sample, zero-pad pad[0] before
    and pad[1] after (negative values crop) in both axes, convolve with `kernel` (a true convolution, so
    the kernel is flipped), keep every down-th sample."""
    n, c, h, w = x.shape
    if up > 1:
        x = F.pad(x.reshape(n, c, h, 1, w, 1), (0, up - 1, 0, 0, 0, up - 1)).reshape(n, c, h * up, w * up)
    before, after = pad
    x = F.pad(x, (max(before, 0), max(after, 0)) * 2)
    x = x[..., max(-before, 0): x.shape[-2] - max(-after, 0), max(-before, 0): x.shape[-1] - max(-after, 0)]
    kernel = torch.flip(kernel, (0, 1)).to(x)
    weight = kernel[None, None].expand(c, 1, *kernel.shape)
    return F.conv2d(x, weight, stride=down, groups=c)


def fir_upsample(x: Tensor, taps, factor: int = 2) -> Tensor:
    """`upsample_2d`: ×factor with the FIR filter, gain factor² so a constant image stays constant."""
    kernel = _fir_kernel(taps) * factor**2
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def fir_downsample(x: Tensor, taps, factor: int = 2) -> Tensor:
    """`downsample_2d`: filter with the FIR kernel, keep every factor-th pixel."""
    kernel = _fir_kernel(taps)
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel, down=factor, pad=((p + 1) // 2, p // 2))


def fir_conv_downsample(x: Tensor, weight: Tensor, taps, factor: int = 2) -> Tensor:
    """`conv_downsample_2d`: FIR filter, then the convolution with stride factor, padding done once."""
    kernel = _fir_kernel(taps)
    p = (kernel.shape[0] - factor) + (weight.shape[-1] - 1)
    return F.conv2d(upfirdn2d(x, kernel, pad=((p + 1) // 2, p // 2)), weight, stride=factor)


def upsample(x: Tensor, fir: bool, taps) -> Tensor:
    """×2 without weights: FIR, or nearest neighbour (upstream `naive_upsample_2d` / `F.interpolate`)."""
    return fir_upsample(x, taps) if fir else F.interpolate(x, scale_factor=2.0, mode="nearest")


def downsample(x: Tensor, fir: bool, taps) -> Tensor:
    """/2 without weights (`Downsample(with_conv=False)`, the input pyramid): FIR, or 2x2 average pooling."""
    return fir_downsample(x, taps) if fir else F.avg_pool2d(x, 2)


def block_downsample(x: Tensor, fir: bool, taps) -> Tensor:
    """/2 inside a BigGAN block: FIR, or the mean of each 2x2 block. Same maths as `downsample`, but
    reduced as upstream's `naive_downsample_2d` does, so outputs match upstream bit for bit."""
    if fir:
        return fir_downsample(x, taps)
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).mean(dim=(3, 5))


class FirDownConv2d(nn.Module):
    """Upstream `up_or_down_sampling.Conv2d(kernel=3, down=True)`: weight (out, in, 3, 3) and bias."""

    def __init__(self, in_ch: int, out_ch: int, taps):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_ch, in_ch, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        _default_init_(self.weight)
        self.taps = taps

    def forward(self, x: Tensor) -> Tensor:
        return fir_conv_downsample(x, self.weight, self.taps) + self.bias[None, :, None, None]


class Upsample(nn.Module):
    """×2 (nearest neighbour, or FIR), optionally followed by a 3x3 conv `Conv_0` (layerspp / layers
    `Upsample`). Upstream's layerspp version passes 'nearest' positionally as `scale_factor` to
    F.interpolate, which current PyTorch rejects; nearest neighbour is what it means."""

    def __init__(self, in_ch: int, out_ch: int | None = None, with_conv: bool = False, fir: bool = False,
                 taps=(1, 3, 3, 1)):
        super().__init__()
        if with_conv:  # resolve_config rejects fir=True here
            self.Conv_0 = _conv(in_ch, out_ch or in_ch, 3)
        self.with_conv, self.fir, self.taps = with_conv, fir, taps

    def forward(self, x: Tensor) -> Tensor:
        h = upsample(x, self.fir, self.taps)
        return self.Conv_0(h) if self.with_conv else h


class Downsample(nn.Module):
    """/2: strided 3x3 conv `Conv_0` with TF 'SAME' padding (pad right/bottom by one), the FIR-fused conv
    `Conv2d_0`, or without weights (2x2 mean / FIR)."""

    def __init__(self, in_ch: int, out_ch: int | None = None, with_conv: bool = False, fir: bool = False,
                 taps=(1, 3, 3, 1)):
        super().__init__()
        out_ch = out_ch or in_ch
        if with_conv and fir:
            self.Conv2d_0 = FirDownConv2d(in_ch, out_ch, taps)
        elif with_conv:
            self.Conv_0 = _conv(in_ch, out_ch, 3, stride=2, padding=0)
        self.with_conv, self.fir, self.taps = with_conv, fir, taps

    def forward(self, x: Tensor) -> Tensor:
        if not self.with_conv:
            return downsample(x, self.fir, self.taps)
        if self.fir:
            return self.Conv2d_0(x)
        return self.Conv_0(F.pad(x, (0, 1, 0, 1)))


# ----------------------------------------------------------------------------------------------------------
# Blocks (upstream layerspp.py / layers.py)
# ----------------------------------------------------------------------------------------------------------


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels: q, k, v = NIN_0..2(GroupNorm(x)), out = NIN_3(softmax(
    qᵀk/√C) v); returns x + out, divided by √2 with skip_rescale. NIN_3 starts near zero (init_scale)."""

    def __init__(self, channels: int, name: str, skip_rescale: bool, init_scale: float):
        super().__init__()
        self.GroupNorm_0 = _group_norm(channels, name)
        self.NIN_0 = NIN(channels, channels)
        self.NIN_1 = NIN(channels, channels)
        self.NIN_2 = NIN(channels, channels)
        self.NIN_3 = NIN(channels, channels, init_scale=init_scale)
        self.skip_rescale = skip_rescale

    def forward(self, x: Tensor) -> Tensor:
        b, c, height, width = x.shape
        h = self.GroupNorm_0(x)
        q, k, v = (nin(h).reshape(b, c, height * width) for nin in (self.NIN_0, self.NIN_1, self.NIN_2))
        weights = torch.softmax(torch.einsum("bci,bcj->bij", q, k) * c**-0.5, dim=-1)
        h = self.NIN_3(torch.einsum("bij,bcj->bci", weights, v).reshape(b, c, height, width))
        return _merge(x, h, self.skip_rescale)


def _merge(skip: Tensor, h: Tensor, skip_rescale: bool) -> Tensor:
    """Residual sum; skip_rescale divides by √2 so the sum of two unit-variance paths stays unit-variance."""
    return (skip + h) / math.sqrt(2.0) if skip_rescale else skip + h


class _ResnetBlock(nn.Module):
    """The residual branch shared by both block types:
    Conv_1(Dropout(act(GroupNorm_1(Conv_0(h) + Dense_0(act(temb)))))), h = act(GroupNorm_0(x)).
    Dense_0 exists even for unconditional models (upstream always passes temb_dim = 4 nf)."""

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, act, dropout: float, name: str,
                 skip_rescale: bool, init_scale: float):
        super().__init__()
        self.GroupNorm_0 = _group_norm(in_ch, name)
        self.Conv_0 = _conv(in_ch, out_ch, 3)
        self.Dense_0 = _linear(temb_dim, out_ch)
        self.GroupNorm_1 = _group_norm(out_ch, name)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = _conv(out_ch, out_ch, 3, init_scale=init_scale)
        self.act, self.skip_rescale = act, skip_rescale

    def _branch(self, h: Tensor, temb: Tensor | None) -> Tensor:
        h = self.Conv_0(h)
        if temb is not None:
            h = h + self.Dense_0(self.act(temb))[:, :, None, None]
        return self.Conv_1(self.Dropout_0(self.act(self.GroupNorm_1(h))))


class ResnetBlockDDPM(_ResnetBlock):
    """DDPM's block (`ResnetBlockDDPMpp`, and `ResnetBlockDDPM` of the DDPM class): a channel change goes
    through the per-pixel dense `NIN_0` on the skip path."""

    def __init__(self, in_ch: int, out_ch: int | None = None, **kwargs):
        out_ch = out_ch or in_ch
        super().__init__(in_ch, out_ch, **kwargs)
        if in_ch != out_ch:
            self.NIN_0 = NIN(in_ch, out_ch)

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        h = self._branch(self.act(self.GroupNorm_0(x)), temb)
        skip = self.NIN_0(x) if hasattr(self, "NIN_0") else x
        return _merge(skip, h, self.skip_rescale)


class ResnetBlockBigGAN(_ResnetBlock):
    """BigGAN-style block (`ResnetBlockBigGANpp`): it can resample (both paths, after the first
    normalisation), and a channel change or resampling puts the 1x1 conv `Conv_2` on the skip path."""

    def __init__(self, in_ch: int, out_ch: int | None = None, up: bool = False, down: bool = False,
                 fir: bool = False, taps=(1, 3, 3, 1), **kwargs):
        out_ch = out_ch or in_ch
        super().__init__(in_ch, out_ch, **kwargs)
        if in_ch != out_ch or up or down:
            self.Conv_2 = _conv(in_ch, out_ch, 1)
        self.up, self.down, self.fir, self.taps = up, down, fir, taps

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        h = self.act(self.GroupNorm_0(x))
        if self.up:
            h, x = upsample(h, self.fir, self.taps), upsample(x, self.fir, self.taps)
        elif self.down:
            h, x = block_downsample(h, self.fir, self.taps), block_downsample(x, self.fir, self.taps)
        h = self._branch(h, temb)
        skip = self.Conv_2(x) if hasattr(self, "Conv_2") else x
        return _merge(skip, h, self.skip_rescale)


class Combine(nn.Module):
    """Joins the input pyramid into the encoder (progressive_input='input_skip'): 1x1 `Conv_0` of the
    pyramid image, then summed with or concatenated before the features."""

    def __init__(self, pyramid_ch: int, features_ch: int, method: str):
        super().__init__()
        self.Conv_0 = _conv(pyramid_ch, features_ch, 1)
        self.method = method

    def forward(self, pyramid: Tensor, h: Tensor) -> Tensor:
        p = self.Conv_0(pyramid)
        return torch.cat([p, h], dim=1) if self.method == "cat" else p + h


# ----------------------------------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------------------------------


class NCSNpp(nn.Module):
    """score_sde's NCSN++ / DDPM++ (config name "ncsnpp") or DDPM (config name "ddpm") U-Net.

    ``forward(x, time_cond)`` returns the raw network output exactly as upstream: ``time_cond`` is the
    time label per sample (B,). For continuous VP models (e.g. vp/cifar10_ddpmpp_deep_continuous) upstream's
    ``score_fn`` passes ``time_cond = 999 t`` and computes ``score = -model(x, 999 t) / σ_t``, so with
    ``scale_by_sigma=False`` the output is the noise prediction ε̂(x_t, t). With the Fourier embedding
    (VE models) ``time_cond`` is σ itself. With ``centered=False`` the input is taken in [0, 1] and mapped to
    [-1, 1] first. ``scale_by_sigma=True`` divides the output by σ (``sigmas[time_cond]`` with the positional
    embedding, ``time_cond`` with Fourier).

    ``sigmas`` (float64, num_scales geometric levels from sigma_max to sigma_min, upstream
    ``utils.get_sigmas``) is a buffer only read when scale_by_sigma is set.
    """

    def __init__(self, config: Mapping):
        super().__init__()
        cfg = resolve_config(config)
        self.config = cfg
        sigmas = np.exp(np.linspace(np.log(cfg["sigma_max"]), np.log(cfg["sigma_min"]), cfg["num_scales"]))
        self.register_buffer("sigmas", torch.tensor(sigmas))
        self.act = _ACTIVATIONS[cfg["nonlinearity"]]
        num_levels = len(cfg["ch_mult"])
        resolutions = [cfg["image_size"] // 2**level for level in range(num_levels)]
        self.attention_at_level = [r in cfg["attn_resolutions"] for r in resolutions]
        self.all_modules = nn.ModuleList(self._build_modules(cfg))

    # -- construction: the order below is upstream's registration order, mirrored by forward --------------

    def _block_factories(self, cfg: dict):
        temb_dim = 4 * cfg["nf"]
        common = dict(temb_dim=temb_dim, act=self.act, dropout=cfg["dropout"], name=cfg["name"],
                      skip_rescale=cfg["skip_rescale"], init_scale=cfg["init_scale"])
        if cfg["resblock_type"] == "biggan":
            resnet = partial(ResnetBlockBigGAN, fir=cfg["fir"], taps=cfg["fir_kernel"], **common)
        else:
            resnet = partial(ResnetBlockDDPM, **common)
        attention = partial(AttnBlock, name=cfg["name"], skip_rescale=cfg["skip_rescale"],
                            init_scale=cfg["init_scale"])
        return resnet, attention

    def _build_modules(self, cfg: dict) -> list[nn.Module]:
        nf, image_ch, name = cfg["nf"], cfg["num_channels"], cfg["name"]
        fir, taps = cfg["fir"], cfg["fir_kernel"]
        resnet, attention = self._block_factories(cfg)
        biggan = cfg["resblock_type"] == "biggan"
        num_levels = len(cfg["ch_mult"])
        modules: list[nn.Module] = []

        if cfg["embedding_type"] == "fourier":
            modules.append(GaussianFourierProjection(nf, cfg["fourier_scale"]))
        if cfg["conditional"]:
            embed_dim = 2 * nf if cfg["embedding_type"] == "fourier" else nf
            modules += [_linear(embed_dim, 4 * nf), _linear(4 * nf, 4 * nf)]

        # Encoder. skip_channels records what each saved activation carries, for the decoder's concat.
        modules.append(_conv(image_ch, nf, 3))
        skip_channels = [nf]
        in_ch, pyramid_ch = nf, image_ch
        for level in range(num_levels):
            out_ch = nf * cfg["ch_mult"][level]
            for _ in range(cfg["num_res_blocks"]):
                modules.append(resnet(in_ch, out_ch))
                in_ch = out_ch
                if self.attention_at_level[level]:
                    modules.append(attention(in_ch))
                skip_channels.append(in_ch)
            if level == num_levels - 1:
                continue
            if biggan:
                modules.append(resnet(in_ch, down=True))
            else:
                modules.append(Downsample(in_ch, with_conv=cfg["resamp_with_conv"], fir=fir, taps=taps))
            if cfg["progressive_input"] == "input_skip":
                modules.append(Combine(pyramid_ch, in_ch, cfg["progressive_combine"]))
                in_ch *= 2 if cfg["progressive_combine"] == "cat" else 1
            elif cfg["progressive_input"] == "residual":
                modules.append(Downsample(pyramid_ch, in_ch, with_conv=True, fir=fir, taps=taps))
                pyramid_ch = in_ch
            skip_channels.append(in_ch)

        modules += [resnet(in_ch), attention(in_ch), resnet(in_ch)]

        # Decoder.
        pyramid_ch = 0
        for level in reversed(range(num_levels)):
            out_ch = nf * cfg["ch_mult"][level]
            for _ in range(cfg["num_res_blocks"] + 1):
                modules.append(resnet(in_ch + skip_channels.pop(), out_ch))
                in_ch = out_ch
            if self.attention_at_level[level]:
                modules.append(attention(in_ch))
            if cfg["progressive"] == "output_skip":
                modules += [_group_norm(in_ch, name), _conv(in_ch, image_ch, 3, init_scale=cfg["init_scale"])]
            elif cfg["progressive"] == "residual" and level == num_levels - 1:
                modules += [_group_norm(in_ch, name), _conv(in_ch, in_ch, 3)]
                pyramid_ch = in_ch
            elif cfg["progressive"] == "residual":
                modules.append(Upsample(pyramid_ch, in_ch, with_conv=True))
                pyramid_ch = in_ch
            if level != 0:
                if biggan:
                    modules.append(resnet(in_ch, up=True))
                else:
                    modules.append(Upsample(in_ch, with_conv=cfg["resamp_with_conv"], fir=fir, taps=taps))

        if cfg["progressive"] != "output_skip":
            modules += [_group_norm(in_ch, name), _conv(in_ch, image_ch, 3, init_scale=cfg["init_scale"])]
        return modules

    # -- forward --------------------------------------------------------------------------------------------

    def forward(self, x: Tensor, time_cond: Tensor) -> Tensor:
        cfg = self.config
        modules = iter(self.all_modules)
        temb = self._time_embedding(time_cond, modules).to(x.dtype)
        if cfg["conditional"]:
            temb = next(modules)(temb)
            temb = next(modules)(self.act(temb))
        else:
            temb = None
        if not cfg["centered"]:
            x = 2 * x - 1.0  # data in [0, 1] -> [-1, 1]

        h, skips = self._encode(x, temb, modules)
        h = next(modules)(h, temb)  # middle: resnet, attention, resnet
        h = next(modules)(h)
        h = next(modules)(h, temb)
        h = self._decode(h, skips, temb, modules)

        if cfg["scale_by_sigma"]:
            h = h / self._used_sigmas(time_cond).to(h.dtype)[:, None, None, None]
        return h

    def _time_embedding(self, time_cond: Tensor, modules) -> Tensor:
        if self.config["embedding_type"] == "fourier":
            return next(modules)(torch.log(time_cond))  # time_cond is σ for VE models
        return timestep_embedding(time_cond, self.config["nf"])

    def _used_sigmas(self, time_cond: Tensor) -> Tensor:
        if self.config["embedding_type"] == "fourier":
            return time_cond
        return self.sigmas[time_cond.long()]

    def _encode(self, x: Tensor, temb: Tensor | None, modules) -> tuple[Tensor, list[Tensor]]:
        cfg = self.config
        num_levels = len(cfg["ch_mult"])
        input_pyramid = x
        hs = [next(modules)(x)]
        for level in range(num_levels):
            for _ in range(cfg["num_res_blocks"]):
                h = next(modules)(hs[-1], temb)
                if self.attention_at_level[level]:
                    h = next(modules)(h)
                hs.append(h)
            if level == num_levels - 1:
                continue
            down = next(modules)
            h = down(hs[-1], temb) if isinstance(down, ResnetBlockBigGAN) else down(hs[-1])
            if cfg["progressive_input"] == "input_skip":
                input_pyramid = downsample(input_pyramid, cfg["fir"], cfg["fir_kernel"])
                h = next(modules)(input_pyramid, h)
            elif cfg["progressive_input"] == "residual":
                input_pyramid = _merge(next(modules)(input_pyramid), h, cfg["skip_rescale"])
                h = input_pyramid
            hs.append(h)
        return hs[-1], hs

    def _decode(self, h: Tensor, hs: list[Tensor], temb: Tensor | None, modules) -> Tensor:
        cfg = self.config
        num_levels = len(cfg["ch_mult"])
        pyramid = None
        for level in reversed(range(num_levels)):
            for _ in range(cfg["num_res_blocks"] + 1):
                h = next(modules)(torch.cat([h, hs.pop()], dim=1), temb)
            if self.attention_at_level[level]:
                h = next(modules)(h)
            if cfg["progressive"] == "output_skip":
                # Image-space output pyramid: upsample the coarser prediction, add this level's.
                norm, conv = next(modules), next(modules)
                level_out = conv(self.act(norm(h)))
                if pyramid is not None:
                    level_out = level_out + upsample(pyramid, cfg["fir"], cfg["fir_kernel"])
                pyramid = level_out
            elif cfg["progressive"] == "residual" and level == num_levels - 1:
                norm, conv = next(modules), next(modules)
                pyramid = conv(self.act(norm(h)))
            elif cfg["progressive"] == "residual":
                pyramid = _merge(next(modules)(pyramid), h, cfg["skip_rescale"])
                h = pyramid
            if level != 0:
                up = next(modules)
                h = up(h, temb) if isinstance(up, ResnetBlockBigGAN) else up(h)
        if cfg["progressive"] == "output_skip":
            return pyramid
        norm, conv = next(modules), next(modules)
        return conv(self.act(norm(h)))
