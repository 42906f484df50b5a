"""`dpms speed`: the report is consistent, the loop never synchronises with the host, the solver keeps
O(order) copies of the batch, diffusers runs the same NFE, and bad input is one line. Timing targets
themselves are benchmarks (benchmarks/speed.py → results/speed/), not tests."""

import json
import statistics

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import dpms
from dpms.cli import main
from dpms.models import GaussianMixture
from dpms.speed import DIFFUSERS_EQUIVALENT, AllocationTracker, measure_speed, peak_bytes


@pytest.fixture(scope="module")
def gmm():
    return GaussianMixture.default()


@pytest.mark.parametrize("solver,nfe", [("ddim", 6), ("dpm3", 10), ("dpm3m", 8), ("dpmpp2m", 8), ("pndm", 15)])
def test_report_is_consistent_and_diffusers_makes_the_same_calls(solver, nfe):
    r = measure_speed("gmm", solver, nfe, batch=32, repeats=2)
    assert r.nfe == nfe and r.batch == 32 and len(r.samples["dpms"]) == 2
    loops, forwards, theirs = r.samples["dpms"], r.samples["forward"], r.samples["diffusers"]
    assert r.overhead == pytest.approx(statistics.median(a / (nfe * b) for a, b in zip(loops, forwards)))
    assert r.loop_seconds == statistics.median(loops) and r.forward_seconds == statistics.median(forwards)
    assert r.seconds_per_image == pytest.approx(r.loop_seconds / 32)
    assert r.diffusers_scheduler == DIFFUSERS_EQUIVALENT[solver][0]
    assert r.vs_diffusers == pytest.approx(statistics.median(d / a for d, a in zip(theirs, loops)))
    assert r.batch_bytes == 32 * 8 * 8  # float64 8-d samples


def test_solver_without_diffusers_equivalent_says_so():
    r = measure_speed("gmm", "rk2", 6, batch=8, repeats=1, memory=False)
    assert r.vs_diffusers is None and "no scheduler for rk2" in r.note


class SyncCounter(TorchDispatchMode):
    """Counts device→host reads (.item(), bool(tensor), float(tensor) all go through _local_scalar_dense)."""

    def __init__(self):
        super().__init__()
        self.syncs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.syncs += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("solver,nfe", [("ddim", 8), ("dpm2", 8), ("dpm3", 10), ("dpm2m", 8), ("dpm3m", 8),
                                        ("dpmpp2s", 8), ("dpmpp2m", 8), ("dpmpp3m", 8), ("pndm", 15), ("spndm", 8),
                                        ("rk2", 8), ("rk3", 9), ("fon", 8)])
def test_fixed_step_loops_never_synchronise_with_the_host(gmm, solver, nfe):
    """Between the first and the last network call a fixed-NFE solver reads no value back to the host."""
    counter = SyncCounter()
    at_call = []

    def noise_fn(x, t):
        at_call.append(counter.syncs)
        return 0.1 * x  # a cheap network without host reads of its own

    with counter:
        dpms.sample(noise_fn, gmm.schedule, gmm.prior(4), solver=solver, nfe=nfe)
    assert len(at_call) == nfe and at_call[-1] == at_call[0]


# Measured peaks (batches): ddim 6, dpm2 7, dpm3 8, dpm2m 7, dpm3m 12, dpmpp3m 13, pndm 14, spndm 7 — the
# solver's history (≤ 4 ε's for PNDM's AB4) plus the temporaries of one update expression.
@pytest.mark.parametrize("solver,nfe,copies", [("ddim", 10, 6), ("dpm3", 12, 8), ("dpm2m", 12, 7), ("dpm3m", 12, 12),
                                               ("dpmpp3m", 12, 13), ("pndm", 15, 14), ("spndm", 10, 7)])
def test_solver_state_is_a_few_copies_of_the_batch_and_does_not_grow_with_nfe(gmm, solver, nfe, copies):
    """Peak live memory of a whole loop, with a network whose own footprint is one output, stays within
    a fixed number of batches however many steps are taken: O(order) tensors, not one per step."""
    x_T = torch.randn(256, 3, 8, 8)
    batch_bytes = x_T.numel() * x_T.element_size()

    def peak(n):
        used, method = peak_bytes(lambda: dpms.sample(lambda x, t: 0.1 * x, gmm.schedule, x_T, solver=solver, nfe=n), x_T.device)
        assert "AllocationTracker" in method
        return used / batch_bytes

    few, many = peak(nfe), peak(4 * nfe)
    assert 1 <= few <= copies + 0.01 and many <= copies + 0.01


def test_allocation_tracker_counts_live_tensors_and_their_release():
    with AllocationTracker() as tracker:
        a = torch.ones(1000)  # 4000 bytes
        b = a * 2
        del b
        c = a + 1  # b's storage is gone: the peak stays at two tensors
        view = c[:10]  # a view allocates nothing
        del a, c, view
    assert tracker.peak == 8000 and tracker.current == 0


def test_random_weight_instance_of_a_real_architecture():
    r = measure_speed("cifar10-ddpm", "ddim", 1, batch=1, repeats=1, random_weights=True, diffusers=False, memory=False)
    assert r.nfe == 1 and r.forward_seconds > 0 and r.images_per_second > 0


def test_cli_prints_and_writes_the_report(tmp_path, capsys):
    out = tmp_path / "speed.json"
    assert main(["speed", "--model", "gmm", "--solver", "dpm2m", "--nfe", "6", "--batch", "16", "--repeats", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "overhead" in printed and "vs_diffusers" in printed
    report = json.loads(out.read_text())
    for key in ("seconds_per_image", "forward_seconds", "overhead", "vs_diffusers", "peak_loop_bytes", "solver_state_batches"):
        assert report[key] is not None


@pytest.mark.parametrize(
    "args,message",
    [
        (["--solver", "dpm23"], "times fixed-NFE ODE solvers; dpm23 is adaptive"),
        (["--solver", "ddpm"], "ddpm is stochastic"),
        (["--solver", "pndm", "--nfe", "11"], "NFE 11 is impossible"),
        (["--batch", "lots"], "--batch takes a positive integer or 'auto'"),
        (["--dtype", "fp8"], "unknown --dtype 'fp8'"),
        (["--model", "gmm", "--device", "cuda:0"], "CUDA is not available"),
    ],
)
def test_bad_input_is_one_line(args, message, capsys):
    if "cuda" in " ".join(args) and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["speed", "--model", "gmm", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_channels_last_and_automatic_batch():
    r = measure_speed("digits", "ddim", 2, batch=4, repeats=1, channels_last=True, diffusers=False, memory=False)
    assert r.channels_last and r.nfe == 2
    r = measure_speed("gmm", "ddim", 2, batch="auto", repeats=1, diffusers=False, memory=False)
    assert r.batch >= 16 and r.batch & (r.batch - 1) == 0  # a power of two where images/s stopped improving
