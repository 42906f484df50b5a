"""The networks of NVIDIA's EDM checkpoints (Karras et al. 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models", arXiv 2206.00364), weight-compatible with NVlabs/edm.

Written for dpms from the paper and the published architecture (EDM's own code is CC BY-NC-SA and is not
copied here); module names, parameter names and shapes follow EDM's `training/networks.py` so its
state_dicts load with `strict=True`, and the arithmetic follows it operation for operation so the outputs
agree to float rounding (tests/test_edm.py checks both against outputs of EDM's own code).

* `SongUNet`: the DDPM++ / NCSN++ U-Nets of score_sde as EDM re-implemented them (positional or Fourier
  noise embedding, standard / skip / residual encoder, standard / skip decoder, FIR resampling filters).
* `DhariwalUNet`: the ADM U-Net (Dhariwal & Nichol 2021) as EDM re-implemented it.
* Preconditioners (paper Table 1), D(x; σ) = c_skip(σ) x + c_out(σ) F(c_in(σ) x; c_noise(σ)):
  `EDMPrecond` (σ_data = 0.5), `VPPrecond`, `VEPrecond`.

`build_edm(network_kwargs)` takes EDM's own network-kwargs dict (`class_name`, `model_type`, the U-Net's
keyword arguments, `img_resolution`, `img_channels`, `label_dim`, `use_fp16`). The result is called as
EDM calls it: `net(x, sigma, class_labels=None, force_fp32=False, augment_labels=None)` -> D(x; σ), with
one-hot `class_labels`. `LabelIndexAdapter` is what dpms's samplers call: `(x, sigma, y=indices)`.

Half precision (`use_fp16`, the ADM preset's setting): on CUDA the U-Net runs in float16 while the noise
embedding, the preconditioning and D stay in float32, as EDM does.
"""

from __future__ import annotations

import inspect
import math
from typing import Mapping

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import DpmsError

PRECONDITIONERS = ("EDMPrecond", "VPPrecond", "VEPrecond")
UNETS = ("SongUNet", "DhariwalUNet")


# ------------------------------------------------------------------------------------------ layers
def _initial(shape, mode: str, fan_in: int, fan_out: int, gain: float = 1.0) -> Tensor:
    """Random initial values (EDM trains with these scalings; sampling only needs them to be finite)."""
    uniform = mode.endswith("uniform")
    variance = {"xavier": 2.0 / (fan_in + fan_out), "kaiming": 1.0 / fan_in}[mode.split("_")[0]]
    values = (torch.rand(*shape) * 2 - 1) * math.sqrt(3 * variance) if uniform else torch.randn(*shape) * math.sqrt(variance)
    return values * gain


class Linear(nn.Module):
    """y = x Wᵀ + b, computed in the dtype of x (float32 embeddings stay float32 in an fp16 network)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init_mode: str = "kaiming_normal",
                 init_weight: float = 1.0, init_bias: float = 0.0):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        fans = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = nn.Parameter(_initial([out_features, in_features], **fans, gain=init_weight))
        self.bias = nn.Parameter(_initial([out_features], **fans, gain=init_bias)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        x = x @ self.weight.to(x.dtype).t()
        return x if self.bias is None else x.add_(self.bias.to(x.dtype))


class Conv2d(nn.Module):
    """A k×k convolution (k = 0: none) with optional 2× up- or down-sampling by a separable FIR filter.

    The filter f (outer product of `resample_filter`, normalised to sum 1) is a buffer, present only
    when the layer resamples. Down: depthwise f with stride 2, then the convolution; up: depthwise
    transposed 4f with stride 2, then the convolution. `fused_resample` applies the convolution first
    when down-sampling (NCSN++'s residual encoder) and pads so the two operations compose in one pass.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True, up: bool = False,
                 down: bool = False, resample_filter=(1, 1), fused_resample: bool = False,
                 init_mode: str = "kaiming_normal", init_weight: float = 1.0, init_bias: float = 0.0):
        if up and down:
            raise DpmsError("an EDM Conv2d resamples up or down, not both")
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down, self.fused_resample = up, down, fused_resample
        fans = dict(mode=init_mode, fan_in=in_channels * kernel * kernel, fan_out=out_channels * kernel * kernel)
        self.weight = nn.Parameter(_initial([out_channels, in_channels, kernel, kernel], **fans, gain=init_weight)) if kernel else None
        self.bias = nn.Parameter(_initial([out_channels], **fans, gain=init_bias)) if kernel and bias else None
        taps = torch.as_tensor(list(resample_filter), dtype=torch.float32)
        fir = torch.outer(taps, taps)[None, None] / taps.sum() ** 2
        self.register_buffer("resample_filter", fir if (up or down) else None)

    def forward(self, x: Tensor) -> Tensor:
        w = None if self.weight is None else self.weight.to(x.dtype)
        f = None if self.resample_filter is None else self.resample_filter.to(x.dtype)
        w_pad = 0 if w is None else w.shape[-1] // 2
        f_pad = 0 if f is None else (f.shape[-1] - 1) // 2
        fused = self.fused_resample and w is not None
        if fused and self.up:
            x = F.conv_transpose2d(x, (4 * f).tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2,
                                   padding=max(f_pad - w_pad, 0))
            x = F.conv2d(x, w, padding=max(w_pad - f_pad, 0))
        elif fused and self.down:
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = F.conv2d(x, f.tile([self.out_channels, 1, 1, 1]), groups=self.out_channels, stride=2)
        else:
            if self.up:
                x = F.conv_transpose2d(x, (4 * f).tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2, padding=f_pad)
            if self.down:
                x = F.conv2d(x, f.tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2, padding=f_pad)
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        return x if self.bias is None else x.add_(self.bias.to(x.dtype).reshape(1, -1, 1, 1))


class GroupNorm(nn.Module):
    """Group normalisation with min(32, C/4) groups (at least 4 channels per group)."""

    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4, eps: float = 1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


def _attention_weights(q: Tensor, k: Tensor) -> Tensor:
    """softmax over keys of qᵀk/√c, computed in float32 whatever the network's dtype."""
    scores = torch.einsum("ncq,nck->nqk", q.to(torch.float32), (k / math.sqrt(k.shape[1])).to(torch.float32))
    return scores.softmax(dim=2).to(q.dtype)


class UNetBlock(nn.Module):
    """Residual block (GroupNorm, SiLU, 3×3 conv; the embedding as a shift, or scale and shift when
    `adaptive_scale`), optional 2× resampling on the main and skip paths, optional multi-head self-attention."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, up: bool = False, down: bool = False,
                 attention: bool = False, num_heads: int | None = None, channels_per_head: int = 64, dropout: float = 0.0,
                 skip_scale: float = 1.0, eps: float = 1e-5, resample_filter=(1, 1), resample_proj: bool = False,
                 adaptive_scale: bool = True, init: Mapping = {}, init_zero: Mapping = {"init_weight": 0},  # noqa: B006 (read only)
                 init_attn: Mapping | None = None):
        super().__init__()
        self.in_channels, self.out_channels, self.emb_channels = in_channels, out_channels, emb_channels
        self.num_heads = 0 if not attention else (num_heads if num_heads is not None else out_channels // channels_per_head)
        self.dropout, self.skip_scale, self.adaptive_scale = dropout, skip_scale, adaptive_scale
        resample = dict(up=up, down=down, resample_filter=resample_filter)
        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, 3, **resample, **init)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, 3, **init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            # a 1×1 projection where channels change (or always, with resample_proj); else resampling only
            kernel = 1 if (resample_proj or out_channels != in_channels) else 0
            self.skip = Conv2d(in_channels, out_channels, kernel, **resample, **init)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, 1, **(init_attn if init_attn is not None else init))
            self.proj = Conv2d(out_channels, out_channels, 1, **init_zero)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        residual = x
        x = self.conv0(F.silu(self.norm0(x)))
        params = self.affine(emb)[:, :, None, None].to(x.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            x = F.silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        else:
            x = F.silu(self.norm1(x.add_(params)))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = x.add_(residual if self.skip is None else self.skip(residual)) * self.skip_scale
        if self.num_heads:
            batch, channels = x.shape[:2]
            qkv = self.qkv(self.norm2(x)).reshape(batch * self.num_heads, channels // self.num_heads, 3, -1)
            q, k, v = qkv.unbind(2)
            attended = torch.einsum("nqk,nck->ncq", _attention_weights(q, k), v)
            x = self.proj(attended.reshape(x.shape)).add_(x) * self.skip_scale
        return x


class PositionalEmbedding(nn.Module):
    """Transformer sinusoids [cos(x ω_i), sin(x ω_i)], ω_i = (1/max_positions)^(i/(C/2 − endpoint))."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False):
        super().__init__()
        self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint

    def forward(self, x: Tensor) -> Tensor:
        half = self.num_channels // 2
        exponents = torch.arange(half, dtype=torch.float32, device=x.device) / (half - (1 if self.endpoint else 0))
        frequencies = (1 / self.max_positions) ** exponents
        phases = torch.outer(x, frequencies.to(x.dtype))
        return torch.cat([phases.cos(), phases.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features [cos(2π x ω), sin(2π x ω)], ω ~ N(0, scale²) (NCSN++)."""

    def __init__(self, num_channels: int, scale: float = 16):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: Tensor) -> Tensor:
        phases = torch.outer(x, (2 * np.pi * self.freqs).to(x.dtype))
        return torch.cat([phases.cos(), phases.sin()], dim=1)


# ------------------------------------------------------------------------------------------ U-Nets
class SongUNet(nn.Module):
    """DDPM++ (positional embedding, standard encoder, filter [1,1]) and NCSN++ (Fourier embedding,
    residual encoder, filter [1,3,3,1]) of Song et al. 2021, in EDM's module layout.

    Encoder modules are named `{res}x{res}_conv`, `_down`, `_block{i}` and the auxiliary input paths
    `_aux_down`/`_aux_skip` (skip encoder) or `_aux_residual` (residual encoder); the decoder `_in0`, `_in1`,
    `_up`, `_block{i}` and the output heads `_aux_norm`, `_aux_conv` (with `_aux_up` for the skip decoder).
    """

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0, augment_dim: int = 0,
                 model_channels: int = 128, channel_mult=(1, 2, 2, 2), channel_mult_emb: int = 4, num_blocks: int = 4,
                 attn_resolutions=(16,), dropout: float = 0.10, label_dropout: float = 0.0, embedding_type: str = "positional",
                 channel_mult_noise: int = 1, encoder_type: str = "standard", decoder_type: str = "standard",
                 resample_filter=(1, 1)):
        _check_option("embedding_type", embedding_type, ("fourier", "positional"))
        _check_option("encoder_type", encoder_type, ("standard", "skip", "residual"))
        _check_option("decoder_type", decoder_type, ("standard", "skip"))
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        init = dict(init_mode="xavier_uniform")
        init_zero = dict(init_mode="xavier_uniform", init_weight=1e-5)
        init_attn = dict(init_mode="xavier_uniform", init_weight=math.sqrt(0.2))
        block = dict(emb_channels=emb_channels, num_heads=1, dropout=dropout, skip_scale=math.sqrt(0.5), eps=1e-6,
                     resample_filter=resample_filter, resample_proj=True, adaptive_scale=False,
                     init=init, init_zero=init_zero, init_attn=init_attn)

        self.map_noise = (PositionalEmbedding(noise_channels, endpoint=True) if embedding_type == "positional"
                          else FourierEmbedding(noise_channels))
        self.map_label = Linear(label_dim, noise_channels, **init) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False, **init) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)

        self.enc = nn.ModuleDict()
        channels, aux_channels = in_channels, in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(channels, model_channels, 3, **init)
                channels = model_channels
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(channels, channels, down=True, **block)
                if encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(aux_channels, aux_channels, 0, down=True, resample_filter=resample_filter)
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(aux_channels, channels, 1, **init)
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(aux_channels, channels, 3, down=True, resample_filter=resample_filter,
                                                                   fused_resample=True, **init)
                    aux_channels = channels
            for i in range(num_blocks):
                self.enc[f"{res}x{res}_block{i}"] = UNetBlock(channels, model_channels * mult, attention=res in attn_resolutions, **block)
                channels = model_channels * mult
        skips = [module.out_channels for name, module in self.enc.items() if "aux" not in name]

        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            _decoder_entry(self.dec, res, level == len(channel_mult) - 1, channels, block)
            for i in range(num_blocks + 1):
                attention = i == num_blocks and res in attn_resolutions
                self.dec[f"{res}x{res}_block{i}"] = UNetBlock(channels + skips.pop(), model_channels * mult, attention=attention, **block)
                channels = model_channels * mult
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(out_channels, out_channels, 0, up=True, resample_filter=resample_filter)
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(channels, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(channels, out_channels, 3, **init_zero)

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None, augment_labels: Tensor | None = None) -> Tensor:
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(emb.shape)  # score_sde orders [sin, cos]
        if self.map_label is not None:
            emb = emb + self.map_label(_dropped_labels(class_labels, self.label_dropout, self.training) * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))

        skips, aux = [], x
        for name, module in self.enc.items():
            if "aux_down" in name:
                aux = module(aux)
            elif "aux_skip" in name:
                x = skips[-1] = x + module(aux)
            elif "aux_residual" in name:
                x = skips[-1] = aux = (x + module(aux)) / math.sqrt(2)
            else:
                x = module(x, emb) if isinstance(module, UNetBlock) else module(x)
                skips.append(x)

        out, head = None, None
        for name, module in self.dec.items():
            if "aux_up" in name:
                out = module(out)
            elif "aux_norm" in name:
                head = module(x)
            elif "aux_conv" in name:
                head = module(F.silu(head))
                out = head if out is None else head + out
            else:
                if x.shape[1] != module.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = module(x, emb)
        return out


class DhariwalUNet(nn.Module):
    """The ADM U-Net (Dhariwal & Nichol 2021) in EDM's module layout: adaptive group-norm scale and shift,
    attention heads of 64 channels, class labels mapped into the embedding."""

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0, augment_dim: int = 0,
                 model_channels: int = 192, channel_mult=(1, 2, 3, 4), channel_mult_emb: int = 4, num_blocks: int = 3,
                 attn_resolutions=(32, 16, 8), dropout: float = 0.10, label_dropout: float = 0.0):
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        init = dict(init_mode="kaiming_uniform", init_weight=math.sqrt(1 / 3), init_bias=math.sqrt(1 / 3))
        init_zero = dict(init_mode="kaiming_uniform", init_weight=0, init_bias=0)
        block = dict(emb_channels=emb_channels, channels_per_head=64, dropout=dropout, init=init, init_zero=init_zero)

        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = Linear(augment_dim, model_channels, bias=False, **init_zero) if augment_dim else None
        self.map_layer0 = Linear(model_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)
        self.map_label = (Linear(label_dim, emb_channels, bias=False, init_mode="kaiming_normal", init_weight=math.sqrt(label_dim))
                          if label_dim else None)

        self.enc = nn.ModuleDict()
        channels = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(channels, model_channels * mult, 3, **init)
                channels = model_channels * mult
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(channels, channels, down=True, **block)
            for i in range(num_blocks):
                self.enc[f"{res}x{res}_block{i}"] = UNetBlock(channels, model_channels * mult, attention=res in attn_resolutions, **block)
                channels = model_channels * mult
        skips = [module.out_channels for module in self.enc.values()]

        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            _decoder_entry(self.dec, res, level == len(channel_mult) - 1, channels, block)
            for i in range(num_blocks + 1):
                self.dec[f"{res}x{res}_block{i}"] = UNetBlock(channels + skips.pop(), model_channels * mult,
                                                              attention=res in attn_resolutions, **block)
                channels = model_channels * mult
        self.out_norm = GroupNorm(channels)
        self.out_conv = Conv2d(channels, out_channels, 3, **init_zero)

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None, augment_labels: Tensor | None = None) -> Tensor:
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        if self.map_label is not None:
            emb = emb + self.map_label(_dropped_labels(class_labels, self.label_dropout, self.training))
        emb = F.silu(emb)
        skips = []
        for module in self.enc.values():
            x = module(x, emb) if isinstance(module, UNetBlock) else module(x)
            skips.append(x)
        for module in self.dec.values():
            if x.shape[1] != module.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = module(x, emb)
        return self.out_conv(F.silu(self.out_norm(x)))


def _decoder_entry(dec: nn.ModuleDict, res: int, lowest: bool, channels: int, block: Mapping) -> None:
    """The first decoder blocks of a level: at the lowest resolution an attention block and a plain one
    (`_in0`, `_in1`), elsewhere a 2× up-sampling block (`_up`)."""
    if lowest:
        dec[f"{res}x{res}_in0"] = UNetBlock(channels, channels, attention=True, **block)
        dec[f"{res}x{res}_in1"] = UNetBlock(channels, channels, **block)
    else:
        dec[f"{res}x{res}_up"] = UNetBlock(channels, channels, up=True, **block)


def _dropped_labels(labels: Tensor, p: float, training: bool) -> Tensor:
    """Class labels with each sample's label zeroed with probability p while training (classifier-free guidance)."""
    if not (training and p):
        return labels
    keep = torch.rand([labels.shape[0], 1], device=labels.device) >= p
    return labels * keep.to(labels.dtype)


def _check_option(name: str, value, choices) -> None:
    if value not in choices:
        raise DpmsError(f"EDM {name}={value!r} is not one of {', '.join(choices)}")


# ------------------------------------------------------------------------------------------ preconditioning
class _Preconditioned(nn.Module):
    """D(x; σ) = c_skip x + c_out F(c_in x; c_noise) around a U-Net `model` (EDM paper, Eq. 7 and Table 1)."""

    default_unet = "SongUNet"

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 model_type: str | None = None, **model_kwargs):
        super().__init__()
        model_type = model_type or self.default_unet
        _check_option("model_type", model_type, UNETS)
        self.img_resolution, self.img_channels, self.label_dim, self.use_fp16 = img_resolution, img_channels, label_dim, use_fp16
        unet = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}[model_type]
        _check_keywords(f"EDM {model_type}", unet, model_kwargs, exclude=("img_resolution", "in_channels", "out_channels", "label_dim"))
        self.model = unet(img_resolution=img_resolution, in_channels=img_channels, out_channels=img_channels,
                          label_dim=label_dim, **model_kwargs)

    def coefficients(self, sigma: Tensor) -> tuple:
        """(c_skip, c_out, c_in, c_noise) at noise level σ (float32, shaped [B, 1, 1, 1])."""
        raise NotImplementedError

    def forward(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None, force_fp32: bool = False, **model_kwargs) -> Tensor:
        x = x.to(torch.float32)
        sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
        if self.label_dim == 0:
            class_labels = None
        elif class_labels is None:
            class_labels = torch.zeros([1, self.label_dim], device=x.device)
        else:
            class_labels = class_labels.to(torch.float32).reshape(-1, self.label_dim)
        half = self.use_fp16 and not force_fp32 and x.device.type == "cuda"
        dtype = torch.float16 if half else torch.float32
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        F_x = self.model((c_in * x).to(dtype), c_noise.flatten(), class_labels=class_labels, **model_kwargs)
        return c_skip * x + c_out * F_x.to(torch.float32)

    def round_sigma(self, sigma) -> Tensor:
        """The noise levels the network supports: all of them (EDM's samplers call this)."""
        return torch.as_tensor(sigma)


class EDMPrecond(_Preconditioned):
    """EDM's preconditioning: c_skip = σ_d²/(σ²+σ_d²), c_out = σσ_d/√(σ²+σ_d²), c_in = 1/√(σ²+σ_d²), c_noise = ln(σ)/4."""

    default_unet = "DhariwalUNet"

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 sigma_min: float = 0, sigma_max: float = float("inf"), sigma_data: float = 0.5,
                 model_type: str = "DhariwalUNet", **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, **model_kwargs)
        self.sigma_min, self.sigma_max, self.sigma_data = sigma_min, sigma_max, sigma_data

    def coefficients(self, sigma: Tensor) -> tuple:
        sigma_data = self.sigma_data
        c_skip = sigma_data ** 2 / (sigma ** 2 + sigma_data ** 2)
        c_out = sigma * sigma_data / (sigma ** 2 + sigma_data ** 2).sqrt()
        c_in = 1 / (sigma_data ** 2 + sigma ** 2).sqrt()
        return c_skip, c_out, c_in, sigma.log() / 4


class VPPrecond(_Preconditioned):
    """Variance-preserving (score_sde VP) preconditioning: c_skip = 1, c_out = −σ, c_in = 1/√(σ²+1),
    c_noise = (M−1)·t(σ) with σ(t) = √(exp(½β_d t² + β_min t) − 1)."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 beta_d: float = 19.9, beta_min: float = 0.1, M: int = 1000, epsilon_t: float = 1e-5,
                 model_type: str = "SongUNet", **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, **model_kwargs)
        self.beta_d, self.beta_min, self.M, self.epsilon_t = beta_d, beta_min, M, epsilon_t
        # float32 on the CPU, as EDM computes them (σ_min = 0.0009765625: exp(·) − 1 cancels in float32), also
        # when the network is built on the meta device
        with torch.device("cpu"):
            self.sigma_min, self.sigma_max = float(self.sigma(epsilon_t)), float(self.sigma(1))

    def sigma(self, t) -> Tensor:
        t = torch.as_tensor(t)
        return ((0.5 * self.beta_d * (t ** 2) + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma) -> Tensor:
        sigma = torch.as_tensor(sigma)
        return ((self.beta_min ** 2 + 2 * self.beta_d * (1 + sigma ** 2).log()).sqrt() - self.beta_min) / self.beta_d

    def coefficients(self, sigma: Tensor) -> tuple:
        return 1, -sigma, 1 / (sigma ** 2 + 1).sqrt(), (self.M - 1) * self.sigma_inv(sigma)


class VEPrecond(_Preconditioned):
    """Variance-exploding (score_sde VE) preconditioning: c_skip = 1, c_out = σ, c_in = 1, c_noise = ln(σ/2)."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 sigma_min: float = 0.02, sigma_max: float = 100, model_type: str = "SongUNet", **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, **model_kwargs)
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def coefficients(self, sigma: Tensor) -> tuple:
        return 1, sigma, 1, (0.5 * sigma).log()


_PRECONDITIONERS = {"EDMPrecond": EDMPrecond, "VPPrecond": VPPrecond, "VEPrecond": VEPrecond}


# ------------------------------------------------------------------------------------------ building
def _check_keywords(what: str, cls, kwargs: Mapping, exclude=()) -> None:
    params = inspect.signature(cls.__init__).parameters
    valid = [name for name, p in params.items() if name != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD
             and name not in exclude]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise DpmsError(f"unknown {what} argument(s) {', '.join(unknown)}; valid: {', '.join(valid)}")


def plain_value(value):
    """A kwarg as Python data: EDM's pickled init kwargs hold numpy float64 scalars and (sometimes) tuples."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    if isinstance(value, Mapping):
        return {k: plain_value(v) for k, v in value.items()}
    return value


def preconditioner_name(class_name: str) -> str:
    """'training.networks.EDMPrecond' or 'EDMPrecond' -> 'EDMPrecond' (a one-line error for anything else)."""
    short = str(class_name).rsplit(".", 1)[-1]
    if short not in _PRECONDITIONERS or str(class_name) not in (short, f"training.networks.{short}"):
        raise DpmsError(f"EDM class_name {class_name!r} is not one of training.networks.{{{', '.join(PRECONDITIONERS)}}}")
    return short


def build_edm(network_kwargs: Mapping) -> nn.Module:
    """An EDM network from EDM's network-kwargs dict: `class_name` (the preconditioner), `model_type`,
    the U-Net's keyword arguments, `img_resolution`, `img_channels`, `label_dim`, `use_fp16`."""
    kwargs = plain_value(dict(network_kwargs))
    if "class_name" not in kwargs:
        raise DpmsError("EDM network kwargs need class_name (e.g. training.networks.EDMPrecond)")
    cls = _PRECONDITIONERS[preconditioner_name(kwargs.pop("class_name"))]
    for key in ("img_resolution", "img_channels"):
        if key not in kwargs:
            raise DpmsError(f"EDM network kwargs need {key}")
    return cls(**kwargs)


class LabelIndexAdapter(nn.Module):
    """An EDM network called as dpms's noise functions call networks: `(x, sigma, y=class indices)`.

    EDM networks take one-hot `class_labels`; this module makes them from `y`. It holds the network as
    `edm`, so its own state_dict keys carry that prefix (load weights into `.edm`)."""

    def __init__(self, edm: nn.Module):
        super().__init__()
        self.edm = edm

    def forward(self, x: Tensor, sigma: Tensor, y: Tensor | None = None) -> Tensor:
        labels = None if (y is None or not self.edm.label_dim) else F.one_hot(y.long(), self.edm.label_dim).to(torch.float32)
        return self.edm(x, sigma, class_labels=labels)
