"""Faster network calls for a sampling loop: channels_last, torch.compile, CUDA graphs.

Each option changes how the network runs, never what it computes (up to the kernels' round-off), and
knows nothing of solvers, with one exception that it must know: a solver keeps earlier predictions
(a singlestep step's ε_s across its second call, the multistep history, PNDM's four ε's).

* channels_last: weights in NHWC, and every input converted to it (free when the batch already is:
  the solvers' elementwise updates keep the layout of their inputs).
* compile: `torch.compile(net)` (inductor; the first calls compile, later ones reuse the kernels).
* cuda_graphs: `torch.compile(net, mode="reduce-overhead")`: the network replays as CUDA graphs. Their
  outputs live in the graph's memory pool, which the next call reuses ("a new iteration is started on
  each invocation of torch.compile", torch.compiler.cudagraph_mark_step_begin): each output is cloned
  before it is returned, so a prediction the solver keeps is not overwritten by the next call. The
  clone is one memory-bound copy of the prediction per call, small beside the network's own work.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import DpmsError


class ChannelsLastInput(nn.Module):
    """Calls `net` with its image input in channels_last (a no-op when it already is)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, *args, **kwargs):
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x, *args, **kwargs)


class ClonedOutput(nn.Module):
    """Calls `net` and returns a copy of its output: outputs of CUDA-graph replays are reused memory."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, *args, **kwargs):
        out = self.net(*args, **kwargs)
        return tuple(o.clone() for o in out) if isinstance(out, tuple) else out.clone()


def accelerate(net: nn.Module, channels_last: bool = False, compile: bool = False, cuda_graphs: bool = False) -> nn.Module:
    """`net` as a sampling loop should call it with these options (see the module docstring).

    The result is an nn.Module around `net` (its parameters, hence its dtype, are the same tensors).
    """
    if cuda_graphs:
        device = next((p.device for p in net.parameters()), torch.device("cpu"))
        if device.type != "cuda":
            raise DpmsError(f"--cuda-graphs needs the network on a CUDA device, it is on {device}; use --device cuda, or --compile")
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if compile or cuda_graphs:
        net = torch.compile(net, mode="reduce-overhead" if cuda_graphs else None)
        if cuda_graphs:
            net = ClonedOutput(net)
    if channels_last:
        net = ChannelsLastInput(net)
    return net
