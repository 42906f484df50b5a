"""The ADM U-Net and noisy classifier (Dhariwal & Nichol 2021; Nichol & Dhariwal 2021), weight-compatible
with openai/guided-diffusion `guided_diffusion/unet.py` (`UNetModel`, `EncoderUNetModel`).

improved-diffusion checkpoints load into the same class with `use_new_attention_order=False` and
`resblock_updown=False` (its network is the guided one without those two options). Constructor arguments
are upstream's names and meanings:

* `attention_resolutions` are *downsample factors* (4 means "at 1/4 of the input size"), not pixel sizes.
* `num_head_channels` (when not −1) fixes the width per head and overrides `num_heads`.
* `use_new_attention_order` selects how the fused qkv projection is split: the legacy order splits heads
  first (per head: q, k, v stacked), the new order splits q/k/v first (each holding all heads).
* `use_fp16` / `use_checkpoint` are accepted so upstream configs load unchanged, but weights stay fp32
  (run under autocast for half precision) and gradient checkpointing is a training-memory option with no
  effect on outputs; neither changes a state_dict key.

Time input: the (possibly fractional) step index, embedded as [cos, sin] halves with frequencies
10000^(−k/half). All GroupNorms (32 groups, eps 1e-5) compute in fp32, as upstream's `GroupNorm32`.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import DpmsError


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of t (B,) as [cos | sin] halves, frequencies max_period^(−k/(dim/2)).

    The ADM convention (guided_diffusion/nn.py); note the order and the divisor differ from DDPM's.
    An odd `dim` is zero-padded by one column.
    """
    half = dim // 2
    frequencies = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * frequencies[None, :]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


def _batch_times(t, x: Tensor) -> Tensor:
    """Time input as a (B,) tensor on x's device; a scalar is shared by the whole batch."""
    t = torch.as_tensor(t, device=x.device)
    return t.expand(x.shape[0]) if t.dim() == 0 else t


def _embedding(t, x: Tensor, dim: int) -> Tensor:
    """Timestep embedding computed in float32 (accurate angles), then in x's dtype: a network cast to
    fp16/bf16 takes half-precision input and its time_embed layers have half-precision weights."""
    return timestep_embedding(_batch_times(t, x), dim).to(x.dtype)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm(32 groups) evaluated in fp32 whatever the input dtype (stable under fp16 autocast)."""

    def __init__(self, channels: int):
        super().__init__(num_groups=32, num_channels=channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps).to(x.dtype)


class Downsample(nn.Module):
    """Halve the resolution with a stride-2 3×3 conv (`op`), or 2×2 average pooling when use_conv is False."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double the resolution by nearest-neighbour interpolation, then an optional 3×3 conv (`conv`)."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        if use_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if hasattr(self, "conv") else x


class ResBlock(nn.Module):
    """Residual block conditioned on the embedding, optionally resampling (BigGAN-style, `resblock_updown`).

    With `use_scale_shift_norm` the embedding gives a FiLM scale and shift applied after the second
    GroupNorm: h = norm(h)·(1 + scale) + shift; otherwise it is added before that norm.
    When resampling, both the residual branch (after its first norm + SiLU) and the skip are resampled
    without learned weights.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: Optional[int] = None,
        use_scale_shift_norm: bool = False,
        up: bool = False,
        down: bool = False,
    ):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        if up:
            self.resample = Upsample(channels, use_conv=False)
        elif down:
            self.resample = Downsample(channels, use_conv=False)
        else:
            self.resample = None
        emb_out = 2 * out_channels if use_scale_shift_norm else out_channels
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, emb_out))
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        )
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if self.resample is not None:
            h = self.in_layers[:-1](x)
            h = self.in_layers[-1](self.resample(h))
            x = self.resample(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


def qkv_attention(qkv: Tensor, num_heads: int, legacy_order: bool) -> Tensor:
    """Multi-head attention on a fused projection qkv (B, 3·H·D, T); returns (B, H·D, T).

    legacy_order: channels are grouped per head as [q_h, k_h, v_h] (upstream `QKVAttentionLegacy`);
    otherwise as [q (all heads), k, v] (`QKVAttention`). Scores use 1/√D, applied as D^(−1/4) on each of
    q and k (upstream does so for fp16 range); the softmax runs in fp32.
    """
    b, width, length = qkv.shape
    d = width // (3 * num_heads)
    if legacy_order:
        q, k, v = qkv.reshape(b * num_heads, 3 * d, length).split(d, dim=1)
    else:
        q, k, v = (part.reshape(b * num_heads, d, length) for part in qkv.chunk(3, dim=1))
    scale = d**-0.25
    scores = torch.einsum("bdt,bds->bts", q * scale, k * scale)
    weights = torch.softmax(scores.float(), dim=-1).to(scores.dtype)
    return torch.einsum("bts,bds->bdt", weights, v).reshape(b, num_heads * d, length)


def _num_heads(channels: int, num_heads: int, num_head_channels: int) -> int:
    """Heads of an attention layer: channels / num_head_channels when that is set (≠ −1), else num_heads."""
    if num_head_channels == -1:
        return num_heads
    if channels % num_head_channels != 0:
        raise DpmsError(
            f"attention width {channels} is not divisible by num_head_channels={num_head_channels}; choose a divisor"
        )
    return channels // num_head_channels


class AttentionBlock(nn.Module):
    """Self-attention over all positions: GroupNorm, fused 1×1 (Conv1d) qkv, attention, 1×1 proj_out, residual."""

    def __init__(
        self, channels: int, num_heads: int = 1, num_head_channels: int = -1, use_new_attention_order: bool = False
    ):
        super().__init__()
        self.num_heads = _num_heads(channels, num_heads, num_head_channels)
        self.legacy_order = not use_new_attention_order
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        h = qkv_attention(self.qkv(self.norm(x)), self.num_heads, self.legacy_order)
        return (x + self.proj_out(h)).reshape(b, c, *spatial)


class AttentionPool2d(nn.Module):
    """CLIP-style attention pooling: the spatial mean attends to all positions (+ learned positional
    embedding); returns the projected mean token (B, output_dim). Uses the new q/k/v order."""

    def __init__(self, spatial_dim: int, embed_dim: int, num_head_channels: int, output_dim: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(embed_dim, spatial_dim**2 + 1) / embed_dim**0.5)
        self.qkv_proj = nn.Conv1d(embed_dim, 3 * embed_dim, 1)
        self.c_proj = nn.Conv1d(embed_dim, output_dim, 1)
        self.num_heads = _num_heads(embed_dim, 1, num_head_channels)

    def forward(self, x: Tensor) -> Tensor:
        b, c = x.shape[:2]
        x = x.reshape(b, c, -1)
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1) + self.positional_embedding[None].to(x.dtype)
        h = qkv_attention(self.qkv_proj(x), self.num_heads, legacy_order=False)
        return self.c_proj(h)[:, :, 0]


class EmbedSequential(nn.Sequential):
    """A sequence of layers where residual blocks also receive the embedding (upstream `TimestepEmbedSequential`)."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


def _check_dims(dims: int) -> None:
    if dims != 2:
        raise DpmsError(f"dims={dims} is not supported; dpms builds image (dims=2) ADM networks only")


def _encoder(
    *,
    in_channels: int,
    model_channels: int,
    num_res_blocks: int,
    attention_resolutions: Sequence[int],
    dropout: float,
    channel_mult: Sequence[float],
    conv_resample: bool,
    num_heads: int,
    num_head_channels: int,
    use_scale_shift_norm: bool,
    resblock_updown: bool,
    use_new_attention_order: bool,
):
    """The shared down path and middle block of `UNetModel` and `EncoderUNetModel`.

    Returns (input_blocks, middle_block, skip_channels, channels, downsample_factor): skip_channels lists
    the width of every input block's output, the decoder consumes them in reverse.
    """
    widths = [int(mult * model_channels) for mult in channel_mult]
    if any(width % 32 for width in widths):
        raise DpmsError(
            f"ADM widths {widths} (model_channels × channel_mult) must be multiples of 32 (GroupNorm groups); "
            "fix model_channels or channel_mult"
        )
    emb_channels = 4 * model_channels
    attention_resolutions = tuple(attention_resolutions)

    def attention(channels: int) -> AttentionBlock:
        return AttentionBlock(channels, num_heads, num_head_channels, use_new_attention_order)

    ch = int(channel_mult[0] * model_channels)
    input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
    skip_channels = [ch]
    ds = 1
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            out_ch = int(mult * model_channels)
            layers = [ResBlock(ch, emb_channels, dropout, out_ch, use_scale_shift_norm)]
            ch = out_ch
            if ds in attention_resolutions:
                layers.append(attention(ch))
            input_blocks.append(EmbedSequential(*layers))
            skip_channels.append(ch)
        if level != len(channel_mult) - 1:
            if resblock_updown:
                down = ResBlock(ch, emb_channels, dropout, ch, use_scale_shift_norm, down=True)
            else:
                down = Downsample(ch, conv_resample)
            input_blocks.append(EmbedSequential(down))
            skip_channels.append(ch)
            ds *= 2

    middle_block = EmbedSequential(
        ResBlock(ch, emb_channels, dropout, use_scale_shift_norm=use_scale_shift_norm),
        attention(ch),
        ResBlock(ch, emb_channels, dropout, use_scale_shift_norm=use_scale_shift_norm),
    )
    return input_blocks, middle_block, skip_channels, ch, ds


def _time_embed(model_channels: int) -> nn.Sequential:
    emb_channels = 4 * model_channels
    return nn.Sequential(nn.Linear(model_channels, emb_channels), nn.SiLU(), nn.Linear(emb_channels, emb_channels))


class UNetModel(nn.Module):
    """ADM U-Net; `forward(x, t, y=None)` returns the raw output (ε, then the variance interpolation
    v when out_channels = 2·in_channels, i.e. learned Σ). Class-conditional when num_classes is set:
    the label embedding is added to the time embedding."""

    def __init__(
        self,
        *,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        image_size: Optional[int] = None,
        dropout: float = 0.0,
        channel_mult: Sequence[float] = (1, 2, 4, 8),
        conv_resample: bool = True,
        dims: int = 2,
        num_classes: Optional[int] = None,
        use_checkpoint: bool = False,
        use_fp16: bool = False,
        num_heads: int = 1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
    ):
        super().__init__()
        _check_dims(dims)
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        self.image_size = image_size
        self.model_channels = model_channels
        self.num_classes = num_classes
        emb_channels = 4 * model_channels
        attention_resolutions = tuple(attention_resolutions)

        self.time_embed = _time_embed(model_channels)
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, emb_channels)

        self.input_blocks, self.middle_block, skip_channels, ch, ds = _encoder(
            in_channels=in_channels,
            model_channels=model_channels,
            num_res_blocks=num_res_blocks,
            attention_resolutions=attention_resolutions,
            dropout=dropout,
            channel_mult=channel_mult,
            conv_resample=conv_resample,
            num_heads=num_heads,
            num_head_channels=num_head_channels,
            use_scale_shift_norm=use_scale_shift_norm,
            resblock_updown=resblock_updown,
            use_new_attention_order=use_new_attention_order,
        )

        # Decoder: num_res_blocks + 1 blocks per level, each concatenating one saved skip; the last block
        # of every level but the first also resamples up.
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                out_ch = int(mult * model_channels)
                layers = [ResBlock(ch + skip_channels.pop(), emb_channels, dropout, out_ch, use_scale_shift_norm)]
                ch = out_ch
                if ds in attention_resolutions:
                    layers.append(AttentionBlock(ch, num_heads_upsample, num_head_channels, use_new_attention_order))
                if level > 0 and i == num_res_blocks:
                    if resblock_updown:
                        layers.append(ResBlock(ch, emb_channels, dropout, ch, use_scale_shift_norm, up=True))
                    else:
                        layers.append(Upsample(ch, conv_resample))
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))

        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), nn.Conv2d(ch, out_channels, 3, padding=1))

    def forward(self, x: Tensor, t: Tensor, y: Optional[Tensor] = None) -> Tensor:
        if (y is not None) != (self.num_classes is not None):
            if y is None:
                raise DpmsError("this ADM model is class-conditional; pass class labels y (one per sample)")
            raise DpmsError("this ADM model is unconditional; do not pass class labels y")
        emb = self.time_embed(_embedding(t, x, self.model_channels))
        if y is not None:
            emb = emb + self.label_emb(y)

        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)


class EncoderUNetModel(nn.Module):
    """ADM noisy classifier: the U-Net's down path and middle block, then a pooling head;
    `forward(x, t)` returns logits (B, out_channels).

    pool "attention" (the released classifiers) needs `image_size` and `num_head_channels`; "adaptive"
    is global average pooling followed by a 1×1 conv.
    """

    POOLS = ("attention", "adaptive")

    def __init__(
        self,
        *,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        image_size: Optional[int] = None,
        dropout: float = 0.0,
        channel_mult: Sequence[float] = (1, 2, 4, 8),
        conv_resample: bool = True,
        dims: int = 2,
        use_checkpoint: bool = False,
        use_fp16: bool = False,
        num_heads: int = 1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
        pool: str = "adaptive",
    ):
        super().__init__()
        _check_dims(dims)
        if pool not in self.POOLS:
            raise DpmsError(f"unknown classifier pool {pool!r}; use one of {', '.join(self.POOLS)}")
        if pool == "attention" and (image_size is None or num_head_channels == -1):
            raise DpmsError("pool 'attention' needs image_size and num_head_channels; set both in the classifier config")
        self.model_channels = model_channels
        self.out_channels = out_channels  # number of classes

        self.time_embed = _time_embed(model_channels)
        self.input_blocks, self.middle_block, _, ch, ds = _encoder(
            in_channels=in_channels,
            model_channels=model_channels,
            num_res_blocks=num_res_blocks,
            attention_resolutions=attention_resolutions,
            dropout=dropout,
            channel_mult=channel_mult,
            conv_resample=conv_resample,
            num_heads=num_heads,
            num_head_channels=num_head_channels,
            use_scale_shift_norm=use_scale_shift_norm,
            resblock_updown=resblock_updown,
            use_new_attention_order=use_new_attention_order,
        )
        if pool == "attention":
            head = AttentionPool2d(image_size // ds, ch, num_head_channels, out_channels)
            self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), head)
        else:
            self.out = nn.Sequential(
                GroupNorm32(ch), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Conv2d(ch, out_channels, 1), nn.Flatten()
            )

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        emb = self.time_embed(_embedding(t, x, self.model_channels))
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
        return self.out(self.middle_block(h, emb))
