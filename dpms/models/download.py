"""`dpms download NAME`: fetch a preset's published file with urllib, verify it, and move it into place.

Each file is streamed into a temporary file beside its destination, hashed on the way (md5 / sha256 where
the registry has a published hash), and renamed into place only when complete and verified, so an
interrupted or corrupt download never leaves a file that `load` would pick up. diffusers presets are
folders: config.json plus the first weight file the repository has (safetensors, else .bin), fetched
into a temporary folder and moved into place once both are complete.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from ..errors import DpmsError
from .checkpoint_formats import FORMATS
from .checkpoints import Preset, as_preset, default_directory, published_hash_mismatch
from .diffusers_format import WEIGHT_FILES, is_complete_folder

Progress = Callable[[str, int, int | None], None]  # (file name, bytes so far, total bytes or None)
_CHUNK = 1 << 20


class _NotFound(Exception):
    """HTTP 404: the repository has no such file (try the next weight-file name)."""


class _FetchFailed(Exception):
    """A transfer that did not produce the file (no network, HTTP error, disk error, wrong hash).
    The text says what happened; the caller adds the fix, which depends on what was being fetched."""


def _fetch(url: str, destination: Path, expected: tuple[str, str] | None, progress: Progress | None,
           timeout: float) -> None:
    """Stream `url` to a temporary file next to `destination`, check its hash, rename it into place
    (replacing a file already there only once the new one is complete and verified)."""
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
            raise _FetchFailed(
                f"downloaded {url} has {algorithm} {digest.hexdigest()}, expected {expected[1]}; the file was discarded"
            )
        os.replace(temporary, destination)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            raise _NotFound(url) from None
        raise _FetchFailed(f"could not download {url} (HTTP {e.code} {e.reason})") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, FileNotFoundError):  # file:// mirrors report a missing file this way
            raise _NotFound(url) from None
        raise _FetchFailed(f"could not reach {url} ({e.reason})") from None
    except OSError as e:
        raise _FetchFailed(f"download of {url} failed ({e})") from None
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def fetch_diffusers_folder(preset: Preset, folder: Path, progress: Progress | None, timeout: float) -> None:
    """config.json and one weight file of a Hugging Face diffusers repository, made complete or not at all.

    Both files are fetched into a temporary folder beside `folder`; only then do they move into place,
    the weight file last, so `folder` becomes a loadable (present) folder in one rename. A complete
    folder already there is kept as it is.
    """
    if is_complete_folder(folder):
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".part", dir=folder.parent))
    try:
        names = _fetch_diffusers_files(preset, staging, folder, progress, timeout)
        _move_into_place(staging, folder, names)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _fetch_diffusers_files(preset: Preset, staging: Path, folder: Path, progress: Progress | None,
                           timeout: float) -> list[str]:
    """Fetch config.json and the first weight file the repository has into `staging`; their names."""
    base = preset.url.rstrip("/") + "/resolve/main/"
    by_hand = f"download config.json and {' or '.join(WEIGHT_FILES)} from {preset.url} by hand into {folder}"
    try:
        _fetch(base + "config.json", staging / "config.json", None, progress, timeout)
    except _NotFound:
        raise DpmsError(f"{base}config.json does not exist; {preset.url} is not a diffusers repository") from None
    except _FetchFailed as e:
        raise DpmsError(f"{e}; {by_hand}") from None
    for name in WEIGHT_FILES:
        try:
            _fetch(base + name, staging / name, None, progress, timeout)
            return ["config.json", name]
        except _NotFound:
            continue
        except _FetchFailed as e:
            raise DpmsError(f"{e}; {by_hand}") from None
    raise DpmsError(f"{preset.url} has none of {', '.join(WEIGHT_FILES)}; {by_hand}")


def _move_into_place(staging: Path, folder: Path, names: list[str]) -> None:
    """Rename the finished `staging` folder to `folder`. If an incomplete `folder` exists (an older
    dpms, or a copy started by hand) its other files are left alone and the new files are renamed
    into it one by one, the weight file last: the folder counts as present only after that rename."""
    if not folder.exists():
        os.replace(staging, folder)
        return
    for name in names:
        os.replace(staging / name, folder / name)


def download(
    preset: str | Preset,
    to: str | Path | None = None,
    progress: Progress | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download a preset's file into `to` (default `default_directory()`) and return its path.

    A file already in place is kept when it matches the published hash (or none is published); one
    that does not is downloaded again and replaced. Presets hosted where urllib cannot fetch (Google
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
    FORMATS[preset.format].fetch(preset, destination, progress, timeout)
    return destination


def fetch_file(preset: Preset, destination: Path, progress: Progress | None, timeout: float) -> None:
    """One file from `preset.url`, kept where it is when it already matches the published hash."""
    damaged = destination.is_file() and published_hash_mismatch(preset, destination) is not None
    if destination.is_file() and not damaged:
        return
    # A damaged file stays where it is until the new one is complete and verified (`_fetch` renames over it).
    try:
        _fetch(preset.url, destination, preset.hash, progress, timeout)
    except _NotFound:
        raise DpmsError(f"{preset.url} no longer exists (HTTP 404); find the file by hand and put it at {destination}") from None
    except _FetchFailed as e:
        if damaged:
            algorithm = preset.hash[0]
            raise DpmsError(
                f"{destination} does not match the published {algorithm} and downloading it again failed: {e}; "
                f"delete {destination}, then run `dpms download {preset.name}` again or download it by hand from {preset.url}"
            ) from None
        raise DpmsError(f"{e}; download it by hand and put it at {destination}") from None
