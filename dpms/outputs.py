"""Output folders: nothing already written is replaced by default, and a folder is checked before any work.

    check_out_dir(path, "--out")              # an existing file or an unwritable folder: one-line error now,
                                              # not after the computation
    refuse_to_replace(paths, force, fix)      # files of an earlier run: refused unless --force
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from .errors import DpmsError


def check_out_dir(path: Path, option: str = "--out") -> None:
    """Prove that the folder `path` can be created or written, before anything is computed; nothing is created."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = f"{option} {path}" if existing == path else f"{option} {path}: {existing}"
        raise DpmsError(f"{what} is an existing file, not a folder; pass a folder path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DpmsError(f"{option} {path} is not writable ({existing} does not let this user write); pass a folder you can write to")


def refuse_to_replace(existing: list[Path], force: bool, what: str, fix: str) -> None:
    """Refuse, unless `force`, when any of `existing` is a file an earlier run wrote (`what` names them)."""
    found = [p for p in existing if Path(p).exists()]
    if found and not force:
        raise DpmsError(f"{found[0]} already exists ({what}); {fix}, or pass --force to replace it")


# errors of the disk or the folder, not of dpms: one line that says what was kept, never a traceback
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})


def write_failure(error: OSError, kept: str) -> DpmsError | None:
    """The one-line DpmsError for a failed write (a full disk, a read-only or forbidden folder), saying what
    is `kept`; None for other OS errors, which are not the user's to fix."""
    if error.errno not in WRITE_ERRNOS:
        return None
    where = f" {error.filename}" if error.filename else ""
    fix = "free some space" if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else "fix the folder's permissions"
    return DpmsError(f"cannot write{where} ({error.strerror or error}); {kept}; {fix} and rerun the same command")
