"""Where features come from: a folder of image files, an `.npz` of samples, or tensors in memory.

Accepted inputs (all yield batches for `FeatureExtractor`):

- a folder of images (bmp, jpg, jpeg, pgm, png, ppm, tif, tiff, webp — pytorch-fid's list, sorted by
  path), read with PIL as uint8. For extractors with `image_mode="RGB"` (Inception) every file is
  converted to RGB exactly as pytorch-fid's ImagePathDataset does; otherwise grayscale files stay
  one-channel. All images must have one size.
- an `.npz` with an array `samples`: uint8 (N, H, W, C) images with C = 1 or 3 (what `dpms sample`
  writes for image models), or floats of any precision — images in [−1, 1] as (N, C, H, W) or (N, H, W, C),
  given to the extractor as float32 NCHW, or (N, D) vectors (the exact model), given as they are.
- a torch tensor or numpy array following the same rules as `samples`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..errors import DpmsError, MissingFileError
from .stats import NPZ_READ_ERRORS, open_npz, unreadable_npz

IMAGE_EXTENSIONS = ("bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp")
NPZ_FIX = "expected samples from `dpms sample` (key 'samples') or guided-diffusion (key 'arr_0'), or statistics (keys 'mu', 'sigma')"
SAMPLE_KEYS = ("samples", "arr_0")  # dpms sample; guided-diffusion's sample scripts and evaluator


def source_kind(path: str | Path) -> str:
    """'images' (a folder), 'samples' (an .npz with `samples`) or 'stats' (an .npz with `mu` and `sigma`).
    Reads only the folder listing or the archive's table of contents, so it is cheap to call first."""
    path = Path(path)
    if path.is_dir():
        image_files(path)
        return "images"
    if not path.exists():
        raise MissingFileError(f"{path} not found; pass a folder of images, a samples .npz or a statistics .npz")
    if path.suffix != ".npz":
        raise DpmsError(f"{path} is neither a folder of images nor an .npz file")
    try:
        with open_npz(path, NPZ_FIX) as f:
            keys = set(f.files)
    except NPZ_READ_ERRORS as e:
        raise unreadable_npz(path, e, NPZ_FIX) from None
    if {"mu", "sigma"} <= keys:
        return "stats"
    if keys & set(SAMPLE_KEYS):
        return "samples"
    raise DpmsError(f"{path} has neither 'samples' ('arr_0') nor 'mu' and 'sigma' (found: {', '.join(sorted(keys)) or 'none'}); {NPZ_FIX}")


def image_files(directory: Path) -> list[Path]:
    files = sorted(f for ext in IMAGE_EXTENSIONS for f in Path(directory).glob(f"*.{ext}"))
    if not files:
        raise DpmsError(f"{directory} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def read_image(path: Path, mode: str | None) -> np.ndarray:
    """uint8 (H, W, C). mode "RGB" converts like pytorch-fid; None keeps L and RGB files as they are."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if mode is None and image.mode not in ("L", "RGB"):
                mode = "RGB"
            array = np.asarray(image.convert(mode) if mode and image.mode != mode else image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        reason = str(e).split(" '")[0] if isinstance(e, UnidentifiedImageError) else str(e)
        raise DpmsError(f"{path} cannot be read as an image ({reason}); remove or replace that file") from None
    return array[:, :, None] if array.ndim == 2 else array


def load_samples(path: Path) -> np.ndarray:
    """The `samples` array of an .npz, checked against the accepted layouts (module docstring)."""
    try:
        with open_npz(path, NPZ_FIX) as f:
            key = next((k for k in SAMPLE_KEYS if k in f.files), None)
            if key is None:
                raise DpmsError(f"{path} has no 'samples' (or 'arr_0') array (found: {', '.join(f.files) or 'none'}); {NPZ_FIX}")
            samples = f[key]
    except NPZ_READ_ERRORS as e:
        raise unreadable_npz(path, e, NPZ_FIX) from None
    check_samples(samples, str(path))
    return samples


def check_samples(samples: np.ndarray | torch.Tensor, where: str) -> None:
    shape, dtype = tuple(samples.shape), str(samples.dtype).replace("torch.", "")
    if dtype == "uint8":
        if len(shape) != 4 or shape[3] not in (1, 3):
            raise DpmsError(f"{where}: uint8 samples must be images (N, H, W, 1 or 3), got shape {shape}")
    elif not dtype.startswith(("float", "bfloat")) or len(shape) < 2:
        raise DpmsError(f"{where}: samples must be uint8 NHWC images or floats (N, ...), got {dtype} {shape}")
    if shape[0] == 0:
        raise DpmsError(f"{where}: there are no samples")


def open_source(source, batch_size: int, image_mode: str | None) -> tuple[int, Iterator[torch.Tensor]]:
    """(number of samples, their batches in order) for a folder, a samples .npz, a tensor or an array
    (module docstring). Everything but reading the images is checked here, before the first batch."""
    if batch_size < 1:
        raise DpmsError(f"the batch size must be positive, got {batch_size}")
    if isinstance(source, (str, Path)):
        path = Path(source)
        kind = source_kind(path)
        if kind == "stats":
            raise DpmsError(f"{path} holds statistics, not samples; features need images or samples")
        if kind == "images":
            files = image_files(path)
            return len(files), _image_batches(files, batch_size, image_mode)
        source = load_samples(path)
    check_samples(source, "samples")
    samples = as_nchw_float_images(torch.as_tensor(source))
    return len(samples), iter(samples.split(batch_size))


def as_nchw_float_images(samples: torch.Tensor) -> torch.Tensor:
    """Float image samples as the extractors take them: float32 NCHW. Images may come as NHWC or NCHW, in
    any float dtype (what the module docstring promises); vectors and uint8 images are returned as they are."""
    if samples.dtype == torch.uint8 or samples.ndim != 4:
        return samples
    if samples.shape[1] not in (1, 3) and samples.shape[3] in (1, 3):
        samples = samples.permute(0, 3, 1, 2)
    if samples.shape[1] not in (1, 3):
        raise DpmsError(f"float image samples must have 1 or 3 channels (NCHW or NHWC), got shape {tuple(samples.shape)}")
    low, high = float(samples.min()), float(samples.max())
    if low < -1.0 - 1e-3 or high > 1.0 + 1e-3:
        raise DpmsError(f"float image samples must lie in [-1, 1], these span [{low:.4g}, {high:.4g}]; "
                        "scale them (x / 127.5 - 1 for 0..255) or pass uint8 images")
    return samples.float().contiguous()


def _image_batches(files: list[Path], batch_size: int, mode: str | None) -> Iterator[torch.Tensor]:
    first_shape = None
    for start in range(0, len(files), batch_size):
        arrays = [read_image(f, mode) for f in files[start : start + batch_size]]
        for f, array in zip(files[start : start + batch_size], arrays):
            first_shape = first_shape or array.shape
            if array.shape != first_shape:
                raise DpmsError(f"{f} is {array.shape[1]}×{array.shape[0]}×{array.shape[2]} but earlier images are "
                                f"{first_shape[1]}×{first_shape[0]}×{first_shape[2]}; all images must have one size")
        yield torch.from_numpy(np.stack(arrays))
