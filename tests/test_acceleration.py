"""channels_last, torch.compile and CUDA graphs change how the network runs, not what a solver computes;
`--batch auto` picks a batch the loop fits in. (Their speed is a benchmark: benchmarks/speed.py.)"""

import shutil

import numpy as np
import pytest
import torch

import dpms
from dpms.cli import main
from dpms.errors import DpmsError
from dpms.models.acceleration import ChannelsLastInput, ClonedOutput, accelerate


class TinyNet(torch.nn.Module):
    """A network-shaped ε(x, t): two convolutions and a time embedding."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 3, 3, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
        self.formats = []

    def forward(self, x, t):
        self.formats.append(x.is_contiguous(memory_format=torch.channels_last))
        h = torch.tanh(self.conv1(x) + t[:, None, None, None])
        return self.conv2(h)


class GraphReplay(torch.nn.Module):
    """What a CUDA-graph replay does to its output: the same memory, overwritten by every call."""

    def __init__(self, net):
        super().__init__()
        self.net, self.buffer = net, None

    def forward(self, *args):
        out = self.net(*args)
        if self.buffer is None:
            self.buffer = torch.empty_like(out)
        return self.buffer.copy_(out)


def _sample(net, solver="dpm3m", nfe=8, channels_last=False):
    schedule = dpms.NoiseSchedule.discrete_linear()
    x_T = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    if channels_last:
        x_T = x_T.contiguous(memory_format=torch.channels_last)
    return dpms.sample(lambda x, t: net(x, t), schedule, x_T, solver=solver, nfe=nfe)


@pytest.mark.parametrize("solver,nfe", [("dpm3m", 8), ("dpm3", 9), ("pndm", 15)])
def test_cloned_outputs_keep_the_predictions_a_solver_holds(solver, nfe):
    """Solvers keep earlier ε's; a replayed graph overwrites them at the next call, unless each output is
    cloned (what accelerate(cuda_graphs=True) wraps the compiled network in)."""
    net = TinyNet()
    eager = _sample(net, solver, nfe)
    overwritten = _sample(GraphReplay(net), solver, nfe)
    assert not torch.allclose(overwritten, eager, atol=1e-3)  # the failure the clone prevents
    torch.testing.assert_close(_sample(ClonedOutput(GraphReplay(net)), solver, nfe), eager, rtol=0, atol=0)


def test_channels_last_converts_weights_and_inputs_and_computes_the_same():
    net = TinyNet()
    eager = _sample(net)
    fast = accelerate(TinyNet(), channels_last=True)
    assert isinstance(fast, ChannelsLastInput)
    assert fast.net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    # fp32 through a solver: other kernels (NHWC, another CPU's SIMD) differ in the last bits and the steps
    # amplify them to ~5e-5; a layout bug would be O(1)
    torch.testing.assert_close(_sample(fast), eager, rtol=1e-4, atol=1e-4)
    assert all(fast.net.formats)  # every call saw an NHWC batch
    _sample(fast, channels_last=True)  # an NHWC x_T stays NHWC through the solver's updates
    x = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    assert dpms.sampler.steps.ddim_step(x, x, dpms.NoiseSchedule.linear(), torch.tensor(0.5), torch.tensor(0.4)).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="torch.compile (inductor) on CPU needs a C compiler")
def test_compile_computes_what_the_eager_network_computes():
    net = TinyNet()
    compiled = accelerate(TinyNet(), compile=True)
    # fused kernels round differently; through 4 solver steps that reaches ~5e-5 on some CPUs
    torch.testing.assert_close(_sample(compiled, "dpm2m", 4), _sample(net, "dpm2m", 4), rtol=1e-4, atol=1e-4)


def test_cuda_graphs_need_a_cuda_network():
    with pytest.raises(DpmsError, match="--cuda-graphs needs the network on a CUDA device, it is on cpu"):
        accelerate(TinyNet(), cuda_graphs=True)


def run(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_sample_channels_last_gives_the_same_images(tmp_path, capsys):
    base = ["sample", "--model", "digits", "--solver", "dpm2m", "--nfe", "4", "--num", "6", "--batch", "3", "--no-png"]
    assert run(base + ["--out", str(tmp_path / "a")], capsys)[0] == 0
    assert run(base + ["--channels-last", "--out", str(tmp_path / "b")], capsys)[0] == 0
    a = np.load(tmp_path / "a" / "samples.npz")["samples"].astype(int)
    b = np.load(tmp_path / "b" / "samples.npz")["samples"].astype(int)
    assert a.shape == b.shape and np.abs(a - b).max() <= 1  # kernels' round-off may move an 8-bit level


def test_sample_batch_auto_picks_a_power_of_two(tmp_path, capsys):
    code, out, err = run(["sample", "--model", "digits", "--solver", "ddim", "--nfe", "2", "--num", "3", "--batch", "auto",
                          "--no-png", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    chosen = int(out.split("--batch auto: ")[1].split()[0])
    assert chosen >= 16 and chosen & (chosen - 1) == 0
    assert np.load(tmp_path / "samples.npz")["samples"].shape[0] == 3


@pytest.mark.parametrize("args,message", [
    (["--model", "gmm", "--compile"], "--dtype, --compile, --cuda-graphs and --channels-last do not apply to it"),
    (["--model", "digits", "--cuda-graphs"], "--cuda-graphs needs the network on a CUDA device"),
    (["--batch", "0"], "--batch takes a positive integer or 'auto', got '0'"),
])
def test_sample_acceleration_errors_are_one_line(args, message, tmp_path, capsys):
    code, _, err = run(["sample", *args, "--out", str(tmp_path)], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
