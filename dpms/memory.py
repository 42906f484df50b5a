"""What a batch costs in memory and time: the measurements behind `--batch auto` (`dpms sample`, `dpms speed`)
and the memory figures of `dpms speed`.

* `timed(fn, device)`: wall seconds of one call, synchronised with the device around it.
* `peak_bytes(fn, device)`, `AllocationTracker`: peak bytes a call allocates (CUDA's own counter, else the live
  tensor storage it creates).
* `solver_copies(...)`: copies of the batch a solver's loop holds at its peak (measured).
* `auto_batch(forward_at, device, ...)`: the batch to use (largest that fits with the solver's state on CUDA,
  best samples/s on CPU).
"""

from __future__ import annotations

import math
import time
import weakref

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from . import sampler
from .schedule import NoiseSchedule


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    """Wall seconds of fn(), with the device synchronised before and after."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


class AllocationTracker(TorchDispatchMode):
    """Peak bytes of tensor storage created while active and still alive (any device).

    Every op's output whose storage is new is counted until its last tensor dies. This sees what the
    Python-visible computation keeps alive (solver history, activations between layers), not kernel
    workspaces; on CUDA `torch.cuda.max_memory_allocated` is exact and is used instead.
    """

    def __init__(self):
        super().__init__()
        self.live: dict[int, list] = {}  # storage pointer -> [bytes, number of live tensors]
        self.current = 0
        self.peak = 0

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[key]

    def _track(self, tensor: Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key == 0:
            return
        if key in self.live:
            self.live[key][1] += 1
        else:
            self.live[key] = [storage.nbytes(), 1]
            self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)
        weakref.finalize(tensor, self._release, key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, Tensor) and not tensor.is_meta:
                self._track(tensor)
        return out


def peak_bytes(fn, device: torch.device) -> tuple[int, str]:
    """(peak bytes allocated while fn runs, how it was measured)."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - base, "torch.cuda.max_memory_allocated"
    with AllocationTracker() as tracker:
        fn()
    return tracker.peak, "live tensor storage created during the call (dpms.speed.AllocationTracker)"


def solver_copies(solver: str, schedule: NoiseSchedule, shape: tuple[int, ...], nfe: int, dtype: torch.dtype) -> int:
    """Copies of the batch a dpms loop holds at its peak besides the network's own memory: its history of
    predictions (O(order): 1 for DDIM, up to 4 for PNDM's AB4) plus the temporaries of one update.

    Measured, not guessed: the whole loop with a network that returns a fresh copy of a precomputed
    tensor (a new output per call, as a real network's, which the solver may keep), at a small batch on
    the CPU (`AllocationTracker`: live tensor storage), rounded up to whole batches.
    """
    per_image = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    batch = max(2, min(64, math.ceil(2**16 / per_image)))  # ≥ 64 KiB a copy: the grid's scalars do not count
    x = torch.zeros((batch, *shape), dtype=dtype)
    eps = torch.zeros_like(x)
    peak, _ = peak_bytes(lambda: sampler.sample(lambda x, t: eps.clone(), schedule, x, solver=solver, nfe=nfe), torch.device("cpu"))
    return math.ceil(peak / (x.numel() * x.element_size()))


def auto_batch(forward_at, device: torch.device, start: int = 16, limit: int = 8192, extra_copies: int = 0) -> int:
    """The batch to time.

    On CUDA: the largest power of two (up to `limit`) whose forward pass fits in memory while
    `extra_copies` further copies of the batch are allocated, the headroom the sampling loop needs for
    the solver's own state (`solver_copies`: order-dependent, 5 batches for DDIM, 9 for DPM-Solver-3, 12 for PNDM,
    13–14 for the third-order multistep solvers; `measure_speed` adds 2 for diffusers' scheduler, whose
    history is about as long). `forward_at(batch, hold)` runs one forward pass at `batch` while holding
    `hold` copies of it. Sized by the forward pass alone, the batch would leave the loop out of memory.
    On CPU: the power of two after which images/s stop improving by 5 %.
    """
    hold = extra_copies if device.type == "cuda" else 0
    best, best_rate, batch = start, 0.0, start
    while batch <= limit:
        try:
            seconds = min(timed(lambda: forward_at(batch, hold), device) for _ in range(2))
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            break
        rate = batch / seconds
        if device.type != "cuda" and rate < 1.05 * best_rate:
            break
        best, best_rate, batch = batch, rate, batch * 2
    return best
