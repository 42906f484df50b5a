"""`dpms download NAME`: fetch a preset's published file with urllib, verify it, and move it into place.

Each file is streamed into a temporary file beside its destination, hashed on the way (md5 / sha256 where
the registry has a published hash), and renamed into place only when complete and verified, so an
interrupted or corrupt download never leaves a file that `load` would pick up. diffusers presets are
folders: config.json plus the first weight file the repository has (safetensors, else .bin).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from ..errors import DpmsError
from .checkpoints import Preset, as_preset, default_directory, verify_hash

Progress = Callable[[str, int, int | None], None]  # (file name, bytes so far, total bytes or None)
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_CHUNK = 1 << 20


class _NotFound(Exception):
    """HTTP 404: the repository has no such file (try the next weight-file name)."""


def _fetch(url: str, destination: Path, expected: tuple[str, str] | None, progress: Progress | None,
           timeout: float) -> None:
    """Stream `url` to a temporary file next to `destination`, check its hash, rename it into place."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    algorithm = expected[0] if expected else "sha256"
    digest = hashlib.new(algorithm)
    handle, temporary = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".part", dir=destination.parent)
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "dpms"})
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length else None
            done = 0
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress:
                    progress(destination.name, done, total)
        if expected and digest.hexdigest() != expected[1]:
            raise DpmsError(
                f"downloaded {url} has {algorithm} {digest.hexdigest()}, expected {expected[1]}; the file was "
                f"discarded: try again, or download it by hand and put it at {destination}"
            )
        os.replace(temporary, destination)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            raise _NotFound(url) from None
        raise DpmsError(f"could not download {url} (HTTP {e.code} {e.reason}); download it by hand and put it at {destination}") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, FileNotFoundError):  # file:// mirrors report a missing file this way
            raise _NotFound(url) from None
        raise DpmsError(f"could not reach {url} ({e.reason}); download it by hand and put it at {destination}") from None
    except OSError as e:
        raise DpmsError(f"download of {url} failed ({e}); download it by hand and put it at {destination}") from None
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _fetch_diffusers_folder(preset: Preset, folder: Path, progress: Progress | None, timeout: float) -> None:
    """config.json and one weight file of a Hugging Face diffusers repository; files in place are kept."""
    base = preset.url.rstrip("/") + "/resolve/main/"
    if not (folder / "config.json").is_file():
        try:
            _fetch(base + "config.json", folder / "config.json", None, progress, timeout)
        except _NotFound:
            raise DpmsError(f"{base}config.json does not exist; {preset.url} is not a diffusers repository") from None
    if any((folder / name).is_file() for name in DIFFUSERS_WEIGHTS):
        return
    for name in DIFFUSERS_WEIGHTS:
        try:
            _fetch(base + name, folder / name, None, progress, timeout)
            return
        except _NotFound:
            continue
    raise DpmsError(f"{preset.url} has none of {', '.join(DIFFUSERS_WEIGHTS)}; download the weights by hand into {folder}")


def download(
    preset: str | Preset,
    to: str | Path | None = None,
    progress: Progress | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download a preset's file into `to` (default `default_directory()`) and return its path.

    A file already in place is verified and kept. Presets hosted where urllib cannot fetch (Google
    Drive) and shipped presets raise a one-line `DpmsError` saying where to put the file by hand.
    """
    preset = as_preset(preset)
    if preset.file is None:
        raise DpmsError(f"{preset.name} has no checkpoint file to download")
    destination = Path(to).expanduser() / preset.file if to is not None else default_directory() / preset.file
    if preset.download == "shipped":
        rebuild = f"; recreate it with `{preset.reproduce}`" if preset.reproduce else ""
        raise DpmsError(f"{preset.name} is not downloaded: it ships in the repository at checkpoints/{preset.file}{rebuild}")
    if preset.download == "manual":
        raise DpmsError(
            f"{preset.name} is hosted at {preset.url}, which needs a browser; download it by hand and put it at {destination}"
        )
    if preset.is_folder:
        _fetch_diffusers_folder(preset, destination, progress, timeout)
        return destination
    if destination.is_file():
        verify_hash(preset, destination)
        return destination
    try:
        _fetch(preset.url, destination, preset.hash, progress, timeout)
    except _NotFound:
        raise DpmsError(f"{preset.url} no longer exists (HTTP 404); find the file by hand and put it at {destination}") from None
    return destination

