"""Several processes share a benchmark: `torchrun --nproc_per_node K -m dpms -- bench ...`.

The `--` is needed: torchrun accepts any prefix of its own options even after the module name, so
`torchrun ... -m dpms bench --num 100` fails ("ambiguous option: --num could match --numa-binding");
without such flags the form without `--` happens to work.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; `init_world` joins the process
group (gloo on CPU, nccl on CUDA, one GPU per local rank). Rank r samples the indices i ≡ r (mod K) of
every cell, and the feature statistics are gathered to rank 0, which alone writes files. Without those
variables everything runs in one process and the collectives below are identities.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch

# A cell ends with a gather; ranks reach it together, but a slow first cell (model loading, warm-up) on a
# busy machine must not trip gloo's default 30-minute timeout.
TIMEOUT = datetime.timedelta(hours=12)


@dataclass
class World:
    rank: int = 0
    size: int = 1
    device: str = "cpu"
    owns_group: bool = False  # this object initialised torch.distributed, so it tears it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather(self, obj) -> list | None:
        """Every rank's `obj` on rank 0 (in rank order); None on the other ranks."""
        if self.size == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank."""
        if self.size == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.owns_group = False


def die_with_parent() -> bool:
    """Ask Linux to send this process SIGTERM when its parent dies (prctl PR_SET_PDEATHSIG): a torchrun
    worker whose launcher is killed must not run on as an orphan. False where that is not available."""
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() == 1:  # the launcher died before the request: go now
        os.kill(os.getpid(), signal.SIGTERM)
    return True


def init_world(device: str = "cpu") -> World:
    """Join torchrun's process group when WORLD_SIZE > 1; else a single-process world on `device`."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(device=device)
    die_with_parent()
    import torch.distributed as dist

    cuda = device.startswith("cuda")
    if cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    return World(rank=dist.get_rank(), size=dist.get_world_size(), device=device, owns_group=owns)
