"""Turning samples into images exactly as the papers' FID pipelines do, and writing them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .atomic import atomic_write
from .errors import DpmsError


UINT8_CONVENTIONS = ("floor", "round")


def to_uint8(x: Tensor, convention: str = "floor") -> Tensor:
    """[-1, 1] NCHW floats → uint8 NHWC, quantised the way the pipeline behind a paper's FID saved samples.

    The two conventions differ by up to one grey level in about half of all pixels, which moves FID:
    * "floor": ((x + 1) · 127.5).clamp(0, 255) truncated — guided-diffusion's and improved-diffusion's
      sample scripts, and score_sde's run_lib (np.clip(255 · (x + 1)/2, 0, 255).astype(uint8)).
    * "round": torchvision's save_image of ((x + 1)/2).clamp(0, 1), i.e. 255 · v + 0.5 clamped and
      truncated (round half up) — the runners of ermongroup/ddim, PNDM and DPM-Solver's
      examples/ddpm_and_guided-diffusion; diffusers' numpy_to_pil rounds the same values.
    """
    if convention == "floor":
        u8 = ((x.float() + 1.0) * 127.5).clamp(0, 255).to(torch.uint8)
    elif convention == "round":
        # The same float32 operations in the same order as the runners, so ties land where theirs do.
        u8 = ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0).mul(255).add(0.5).clamp(0, 255).to(torch.uint8)
    else:
        raise DpmsError(f"unknown uint8 convention {convention!r}; use one of {', '.join(UINT8_CONVENTIONS)}")
    return u8.permute(0, 2, 3, 1).cpu()


def save_pngs(images_uint8: Tensor, out_dir: Path, first_index: int) -> None:
    """Write NHWC uint8 images as out_dir/000123.png (index = position in the run)."""
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    for k, img in enumerate(images_uint8.numpy()):
        arr = img[:, :, 0] if img.shape[2] == 1 else img
        Image.fromarray(arr).save(out_dir / f"{first_index + k:06d}.png")


def save_grid(images_uint8: Tensor, path: Path, nrow: int | None = None, scale: int = 1) -> None:
    """A PNG grid of NHWC uint8 images (nearest-neighbour upscaled by `scale` for small images)."""
    from PIL import Image

    n, h, w, c = images_uint8.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    ncol = int(np.ceil(n / nrow))
    pad = 2
    grid = np.full((ncol * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for k, img in enumerate(images_uint8.numpy()):
        r, col = divmod(k, nrow)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = img
    image = Image.fromarray(grid[:, :, 0] if c == 1 else grid)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def atomic_save_npz(path: Path, **arrays) -> None:
    """np.savez, written atomically (dpms.atomic): readers never see half a file."""
    atomic_write(path, lambda f: np.savez(f, **arrays))
