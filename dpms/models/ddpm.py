"""The DDPM U-Net (Ho et al. 2020), weight-compatible with ermongroup/ddim `models/diffusion.py`.

The same network (and the same state_dict keys) is used by pesser/pytorch_diffusion's conversions of the
original TensorFlow CIFAR-10 / LSUN checkpoints and by the DDIM repository's own CelebA checkpoint, so one
class loads them all. Layout, in upstream registration order:

    temb.dense.{0,1}  conv_in  down.{i}.block.{j} / down.{i}.attn.{j} / down.{i}.downsample
    mid.block_1  mid.attn_1  mid.block_2  up.{i}.block.{j} / up.{i}.attn.{j} / up.{i}.upsample  norm_out  conv_out

`up.{i}` is the level with the same resolution as `down.{i}` (so `up.0` is full resolution and is run
last). All normalisations are GroupNorm(32 groups, eps 1e-6); the nonlinearity is swish; attention
projections and channel-changing shortcuts are 1×1 convolutions.

Time input: the discrete step index n ∈ [0, N−1] (floats accepted), embedded as [sin, cos] halves
(`get_timestep_embedding` of the DDPM code, Vaswani et al. 2017 frequencies).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import DpmsError


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of t (B,) as [sin | cos] halves, frequencies 10000^(−k/(dim/2 − 1)).

    This is the DDPM convention (`get_timestep_embedding`); an odd `dim` is zero-padded by one column.
    """
    half = dim // 2
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - 1))
    angles = t.float()[:, None] * frequencies[None, :]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


def group_norm(channels: int) -> nn.GroupNorm:
    """The DDPM normalisation: 32 groups, eps 1e-6 (TensorFlow's default in the original code)."""
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """Two 3×3 convolutions with the time embedding added between them, plus a skip connection.

    The skip is the identity when channel counts match and a 1×1 `nin_shortcut` otherwise.
    """

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, dropout: float):
        super().__init__()
        # Registration order fixes the state_dict order: norm1, conv1, temb_proj, norm2, conv2, nin_shortcut.
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.temb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels, with 1×1-conv q/k/v/proj_out and a residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, height, width = x.shape
        h = self.norm(x)
        q = self.q(h).reshape(b, c, height * width)
        k = self.k(h).reshape(b, c, height * width)
        v = self.v(h).reshape(b, c, height * width)
        # weights[b, i, j]: how much query pixel i attends to key pixel j.
        weights = torch.softmax(torch.einsum("bci,bcj->bij", q, k) * c**-0.5, dim=2)
        out = torch.einsum("bij,bcj->bci", weights, v).reshape(b, c, height, width)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Halve the resolution: pad right/bottom by one (TF 'SAME'), then a stride-2 3×3 conv; or 2×2 average pooling."""

    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        if hasattr(self, "conv"):
            return self.conv(F.pad(x, (0, 1, 0, 1)))
        return F.avg_pool2d(x, kernel_size=2, stride=2)


class Upsample(nn.Module):
    """Double the resolution by nearest-neighbour interpolation, optionally followed by a 3×3 conv."""

    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if hasattr(self, "conv") else x


def _check_config(ch: int, ch_mult: Sequence[int], resolution: int) -> None:
    """Reject configs the network cannot be built or run with, in one line (GroupNorm needs widths divisible by 32)."""
    bad = [ch * m for m in ch_mult if (ch * m) % 32]
    if ch % 32 or bad:
        raise DpmsError(
            f"ddpm config ch={ch}, ch_mult={tuple(ch_mult)} gives widths not divisible by 32 (GroupNorm groups); "
            "use multiples of 32"
        )
    if resolution % 2 ** (len(ch_mult) - 1):
        raise DpmsError(
            f"ddpm config resolution={resolution} is not divisible by 2**(len(ch_mult)-1); fix resolution or ch_mult"
        )


class Model(nn.Module):
    """The DDPM / DDIM noise-prediction U-Net; `forward(x, t)` returns the raw output (ε for the public models).

    Arguments are the keys of the DDIM configs' `model` section (ch, out_ch, ch_mult, num_res_blocks,
    attn_resolutions, dropout, in_channels, resolution, resamp_with_conv). `attn_resolutions` are
    feature-map sizes in pixels (16 means "at the 16×16 level"). `augment_dim` (dpms's own, 0 in every
    upstream config) adds an input for the labels of a non-leaking training augmentation (the digits model's
    shifts).
    """

    def __init__(
        self,
        *,
        ch: int,
        out_ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        resolution: int,
        dropout: float = 0.0,
        in_channels: int = 3,
        resamp_with_conv: bool = True,
        augment_dim: int = 0,
    ):
        super().__init__()
        _check_config(ch, ch_mult, resolution)
        if augment_dim < 0:
            raise ValueError(f"augment_dim must be 0 or more, got {augment_dim}")
        self.ch = ch
        self.num_levels = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.resolution = resolution
        self.in_channels = in_channels
        temb_ch = 4 * ch
        attn_resolutions = tuple(attn_resolutions)
        # Channel width entering level i is ch·in_ch_mult[i]; level i works at ch·ch_mult[i].
        in_ch_mult = (1,) + tuple(ch_mult)

        self.temb = nn.Module()
        self.temb.dense = nn.ModuleList([nn.Linear(ch, temb_ch), nn.Linear(temb_ch, temb_ch)])
        self.augment_dim = augment_dim
        if augment_dim:
            # Non-leaking augmentation (EDM, Karras et al. 2022, Appendix B.4): the training augmentation's
            # parameters enter beside the time embedding, and label 0 (no augmentation) adds nothing, so the
            # network samples the unaugmented data when it is given no labels.
            self.temb.augment = nn.Linear(augment_dim, ch, bias=False)
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)

        current_res = resolution
        self.down = nn.ModuleList()
        for level, mult in enumerate(ch_mult):
            block_in, block_out = ch * in_ch_mult[level], ch * mult
            down = nn.Module()
            down.block = nn.ModuleList()
            down.attn = nn.ModuleList()
            for _ in range(num_res_blocks):
                down.block.append(ResnetBlock(block_in, block_out, temb_ch, dropout))
                block_in = block_out
                if current_res in attn_resolutions:
                    down.attn.append(AttnBlock(block_in))
            if level != self.num_levels - 1:
                down.downsample = Downsample(block_in, resamp_with_conv)
                current_res //= 2
            self.down.append(down)

        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, temb_ch, dropout)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(block_in, block_in, temb_ch, dropout)

        # Built from the lowest resolution upwards, stored so that up[i] pairs with down[i].
        up_levels = []
        for level in reversed(range(self.num_levels)):
            block_out = ch * ch_mult[level]
            up = nn.Module()
            up.block = nn.ModuleList()
            up.attn = nn.ModuleList()
            for j in range(num_res_blocks + 1):
                # The last block of a level takes the skip saved *before* this level's first block.
                skip_in = ch * (in_ch_mult[level] if j == num_res_blocks else ch_mult[level])
                up.block.append(ResnetBlock(block_in + skip_in, block_out, temb_ch, dropout))
                block_in = block_out
                if current_res in attn_resolutions:
                    up.attn.append(AttnBlock(block_in))
            if level != 0:
                up.upsample = Upsample(block_in, resamp_with_conv)
                current_res *= 2
            up_levels.insert(0, up)
        self.up = nn.ModuleList(up_levels)

        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

    def forward(self, x: Tensor, t: Tensor, augment_labels: Tensor | None = None) -> Tensor:
        """`augment_labels` (B, augment_dim): the augmentation each input was trained with; None at sampling."""
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        # The embedding is computed in float32 (accurate angles); in a half-precision network it then
        # takes the input's dtype, or the first dense layer would meet float32 against fp16/bf16 weights.
        temb = timestep_embedding(t, self.ch).to(x.dtype)
        if augment_labels is not None:
            if not self.augment_dim:
                raise ValueError("augment_labels given to a network built without augment_dim")
            temb = temb + self.temb.augment(augment_labels.to(temb.dtype))
        temb = self.temb.dense[1](F.silu(self.temb.dense[0](temb)))

        skips = [self.conv_in(x)]
        for down in self.down:
            for j, block in enumerate(down.block):
                h = block(skips[-1], temb)
                if len(down.attn) > 0:
                    h = down.attn[j](h)
                skips.append(h)
            if hasattr(down, "downsample"):
                skips.append(down.downsample(skips[-1]))

        h = skips[-1]
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h, temb)), temb)

        for level in reversed(range(self.num_levels)):
            up = self.up[level]
            for j, block in enumerate(up.block):
                h = block(torch.cat([h, skips.pop()], dim=1), temb)
                if len(up.attn) > 0:
                    h = up.attn[j](h)
            if hasattr(up, "upsample"):
                h = up.upsample(h)

        return self.conv_out(F.silu(self.norm_out(h)))
