"""One writer per benchmark folder: `dpms bench` holds OUT/.dpms-bench.lock while it runs.

A second run into the same folder stops at once with a line naming the process that holds it, instead of
racing the first for results.json. The lock is an advisory `flock` on an open file, so the kernel drops it
when its holder dies, even by kill -9: a stale lock never blocks a rerun. While holding it, the run
removes the temporary files killed writers left behind (no live writer can own them).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..atomic import remove_stale_temporaries
from ..errors import DpmsError

LOCK_FILE = ".dpms-bench.lock"


@contextmanager
def folder_lock(out_dir: Path) -> Iterator[None]:
    """Hold the folder's lock for the body; raise a one-line DpmsError if another process holds it."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, as before
        yield
        return
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise DpmsError(f"{out_dir} is in use by another dpms bench (pid {holder}); wait for it to finish, "
                            "or pass another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        for folder in (out_dir, out_dir / "cells"):
            remove_stale_temporaries(folder)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
