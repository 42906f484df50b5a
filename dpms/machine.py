"""The machine a command runs on: the device it names, and how many CPU threads torch uses.

    check_device("cuda")    # one-line DpmsError when no usable GPU answers to that name
    set_threads(None)       # the default below; set_threads(0) is a one-line DpmsError

Default thread count: $OMP_NUM_THREADS when set, else half the CPU cores this process may use, between
1 and 8. torch's own default (one thread per core) oversubscribes a shared or busy machine, where
OpenMP's spinning threads made sampling 5-10x slower than a single thread; half the cores leaves room for
the data loader, the other processes and hyper-threading siblings.
"""

from __future__ import annotations

import os

from .errors import DpmsError

THREADS_HELP = ("torch CPU threads (default: $OMP_NUM_THREADS, else half the usable CPU cores, 1 to 8; "
                "more threads than free cores is slower, not faster)")


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_threads() -> int:
    """$OMP_NUM_THREADS if it is a positive integer, else half the usable cores, clamped to 1..8."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return int(env)
    return max(1, min(8, usable_cores() // 2))


def set_threads(threads: int | None, option: str = "--threads") -> int:
    """torch.set_num_threads(threads, or the default); returns the number set."""
    import torch

    if threads is not None and threads < 1:
        raise DpmsError(f"{option} must be a positive number of threads, got {threads}; omit it for the default ({default_threads()})")
    count = threads if threads is not None else default_threads()
    torch.set_num_threads(count)
    return count


def check_device(device: str, option: str = "--device") -> None:
    """A device name torch knows, and, for CUDA, a GPU that answers to it: otherwise one line with the fix."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise DpmsError(f"{option} {device!r} is not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DpmsError(f"{option} {device}: CUDA is not available on this machine (no usable GPU); use {option} cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DpmsError(f"{option} {device}: only {torch.cuda.device_count()} CUDA GPU(s) here; use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise DpmsError(f"{option} mps: no Apple GPU is usable here; use {option} cpu")
