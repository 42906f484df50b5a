"""`dpms speed`: the report is consistent, the loop never synchronises with the host, the solver keeps
O(order) copies of the batch, diffusers runs the same NFE, and bad input is one line. Timing targets
themselves are benchmarks (benchmarks/speed.py → results/speed/), not tests."""

import json
import statistics

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import dpms
from dpms.cli import main
from dpms.models import GaussianMixture
from dpms.speed import DIFFUSERS_EQUIVALENT, AllocationTracker, format_report, measure_speed, peak_bytes


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


@pytest.mark.parametrize("solver", ["dpm2m", "dpm3m", "dpmpp2m", "dpmpp3m", "dpm2", "dpm3", "dpmpp2s"])
@pytest.mark.parametrize("nfe", [8, 10, 20])
def test_diffusers_dpm_solvers_end_at_dpms_final_sigma_and_lower_the_final_order_as_dpms(gmm, solver, nfe):
    """diffusers' default final_sigmas_type="zero" ends with a step to σ = 0 and its multistep scheduler
    lowers the last orders below 15 steps (dpms: below 10); the equivalent must step to dpms's t_end."""
    from dpms.sampler.multistep import lowers_final_order
    from dpms.speed import _diffusers_loop, diffusers_options

    name, options, _ = diffusers_options(solver, nfe)
    assert options["final_sigmas_type"] == "sigma_min"
    if name == "DPMSolverMultistepScheduler":
        assert options["lower_order_final"] is lowers_final_order("official", nfe)
    run, _, count_calls = _diffusers_loop(solver, gmm.schedule, gmm, nfe, torch.device("cpu"))
    assert count_calls() == nfe


@pytest.mark.parametrize("solver", ["dpmpp2m", "dpmpp3m"])
@pytest.mark.parametrize("nfe", [10, 20])
def test_diffusers_dpmpp_multistep_computes_what_dpms_computes(gmm, solver, nfe):
    """Same grid (time-uniform), same last step, same orders: diffusers' samples match dpms's to about the
    float32 of its σ table (with diffusers' defaults they differ by 15 % to 100 % here)."""
    from dpms.speed import _diffusers_loop

    x_T = gmm.prior(256, generator=torch.Generator().manual_seed(0))
    ours = dpms.sample(gmm, gmm.schedule, x_T, solver=solver, nfe=nfe)
    run, _, _ = _diffusers_loop(solver, gmm.schedule, gmm, nfe, torch.device("cpu"))
    with torch.inference_mode():
        theirs = run(x_T)
    assert (theirs - ours).norm() / ours.norm() < 1e-2


def test_solver_without_diffusers_equivalent_says_so():
    r = measure_speed("gmm", "rk2", 6, batch=8, repeats=1, memory=False)
    assert r.vs_diffusers is None and "no scheduler for rk2" in r.note


# Ops that read a tensor's value back to the host. Outside inference mode float()/.item()/int() and indexing
# with a 0-d tensor go through _local_scalar_dense; inside it (dpms.sample runs there) they are aten.item, and
# bool(tensor) is aten.is_nonzero. equal returns a Python bool; nonzero, masked_select, unique, bincount,
# repeat_interleave(Tensor) have an output shape that depends on the values (a sync on CUDA).
HOST_READ_OPS = {
    getattr(torch.ops.aten, name)
    for name in ("_local_scalar_dense", "item", "is_nonzero", "equal", "allclose", "nonzero", "argwhere", "masked_select",
                 "_unique2", "unique_dim", "unique_consecutive", "bincount", "repeat_interleave")
    if hasattr(torch.ops.aten, name)
}
# Tensor methods that hand values to Python without an aten op on CPU tensors.
HOST_READ_METHODS = {"tolist", "numpy", "__array__", "cpu"}


class _OpReads(TorchDispatchMode):
    def __init__(self, counter):
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in HOST_READ_OPS:
            self.counter.record(str(func))
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in (torch.ops.aten._to_copy, torch.ops.aten.copy_) and isinstance(out, torch.Tensor):
            if out.device.type == "cpu" and any(isinstance(a, torch.Tensor) and a.device.type != "cpu" for a in args):
                self.counter.record(f"{func} to the host")
        return out


class _MethodReads(TorchFunctionMode):
    def __init__(self, counter):
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in HOST_READ_METHODS:
            self.counter.record(func.__name__)
        return func(*args, **(kwargs or {}))


class SyncCounter:
    """Counts device→host reads: every aten op in HOST_READ_OPS, copies from a device to the host, and
    the Tensor methods of HOST_READ_METHODS (a CPU tensor's .tolist()/.numpy() dispatch no aten op)."""

    def __init__(self):
        self.syncs = 0
        self.ops: list[str] = []
        self._modes = (_MethodReads(self), _OpReads(self))

    def record(self, what: str) -> None:
        self.syncs += 1
        self.ops.append(what)

    def __enter__(self):
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc):
        for mode in reversed(self._modes):
            mode.__exit__(*exc)


# every registered fixed-step solver at its first NFE ≥ 8. Only the adaptive solvers (dpm12, dpm23, rk45) are
# exempt: they must read their error estimate every step to accept or reject it. The stochastic ones (ddpm,
# euler-sde) are checked too: their per-step noise comes from per-sample CPU generators and is copied to the
# device (host→device, no read).
FIXED_STEP_SOLVERS = [(name, spec.first_valid_nfe(8)) for name, spec in dpms.solvers().items() if not spec.adaptive]


class ToyEps(torch.nn.Module):
    """A tiny ε network of the (x, integer-valued time input) kind the discrete presets use."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x, t_in):
        return self.conv(x) + (t_in / 1000).reshape(-1, 1, 1, 1) * x


@pytest.fixture(scope="module")
def discrete():
    from dpms.model_wrapper import wrap_model
    from dpms.schedule import NoiseSchedule

    schedule = NoiseSchedule.discrete_linear(1000)
    torch.manual_seed(0)
    return schedule, wrap_model(ToyEps().eval().requires_grad_(False), schedule, model_type="noise", time_map="discrete")


def _host_reads_between_first_and_last_call(network, schedule, x_T, solver, nfe):
    counter = SyncCounter()
    at_call = []

    def noise_fn(x, t):
        at_call.append(counter.syncs)
        return network(x, t)

    with counter:
        dpms.sample(noise_fn, schedule, x_T, solver=solver, nfe=nfe)
    assert len(at_call) == nfe
    return at_call[-1] - at_call[0], counter.ops


@pytest.mark.parametrize("read", [lambda x, t: float(x.sum()), lambda x, t: x.flatten()[0].item(),
                                  lambda x, t: bool((x > 0).any()), lambda x, t: int(t[torch.tensor(0)] * 0),
                                  lambda x, t: x.tolist(), lambda x, t: torch.equal(x, x),
                                  lambda x, t: x.nonzero()],
                         ids=["float", "item", "bool", "0-d index", "tolist", "equal", "nonzero"])
def test_sync_counter_catches_a_deliberate_host_read(gmm, discrete, read):
    """The counter is not vacuous: one read per network call, made inside dpms.sample, is seen every time."""
    for network, schedule, x_T in [(gmm, gmm.schedule, gmm.prior(4)), (discrete[1], discrete[0], torch.randn(4, 1, 8, 8))]:
        def reading(x, t):
            read(x, t)
            return network(x, t)

        reads, ops = _host_reads_between_first_and_last_call(reading, schedule, x_T, "dpm3", 10)
        assert reads >= 9, ops  # at least one in each of the calls before the last


@pytest.mark.parametrize("solver,nfe", FIXED_STEP_SOLVERS)
@pytest.mark.parametrize("kind", ["continuous-gmm", "discrete-toy-eps"])
def test_fixed_step_loops_never_synchronise_with_the_host(gmm, discrete, kind, solver, nfe):
    """Between the first and the last network call a fixed-NFE solver reads no value back to the host,
    on a continuous schedule (the exact GMM ε) and on a discrete table (a wrapped network, time map 'discrete')."""
    if kind == "continuous-gmm":
        network, schedule, x_T = gmm, gmm.schedule, gmm.prior(4)
    else:
        (schedule, network), x_T = discrete, torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    reads, ops = _host_reads_between_first_and_last_call(network, schedule, x_T, solver, nfe)
    assert reads == 0, ops


# Measured peaks (batches): ddim 4, dpm2 7, dpm3 8, dpm2m 7, dpm3m 12, dpmpp3m 13, pndm 12 (11 at NFE 15), spndm 5 — the
# solver's history (≤ 4 ε's for PNDM's AB4) plus the temporaries of one update expression.
@pytest.mark.parametrize("solver,nfe,copies", [("ddim", 10, 4), ("dpm3", 12, 8), ("dpm2m", 12, 7), ("dpm3m", 12, 12),
                                               ("dpmpp3m", 12, 13), ("pndm", 15, 12), ("spndm", 10, 5)])
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
    # a 50k-sample FID run: sampling plus pytorch-fid's Inception on the 8-bit images resized to 299×299
    assert "InceptionV3" in r.feature_network and "299" in r.feature_network and r.feature_batch == 1
    assert r.sampling_50k_seconds == pytest.approx(50_000 * r.seconds_per_image)
    assert r.features_50k_seconds == pytest.approx(50_000 * statistics.median(r.samples["features"]) / r.feature_batch)
    assert r.fid50k_seconds == pytest.approx(r.sampling_50k_seconds + r.features_50k_seconds)


def test_fid_feature_pipeline_is_the_bench_one():
    """The timed extraction quantises to 8 bits as `dpms bench` does, then runs the FID network at 299×299."""
    from dpms.evaluation.inception import InceptionPool3
    from dpms.speed import feature_extractor

    description, extract = feature_extractor("cifar10-ddpm", torch.device("cpu"))
    seen = []
    handle = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda module, args: seen.append(args[0]) if isinstance(module, InceptionPool3) else None)
    try:
        with torch.inference_mode():
            features = extract(torch.tensor([-1.0, -0.999, 0.0, 3.0]).reshape(1, 1, 2, 2).expand(2, 3, 2, 2))
    finally:
        handle.remove()
    assert features.shape == (2, 2048) and len(seen) == 1
    # to_uint8 with the preset's convention (cifar10-ddpm: 'round', 255·(x + 1)/2 + 0.5 truncated), then / 255
    expected = torch.tensor([0, 0, 128, 255], dtype=torch.float32).div(255).reshape(1, 1, 2, 2).expand(2, 3, 2, 2)
    torch.testing.assert_close(seen[0], expected)
    assert "299" in description
    description, _ = feature_extractor("digits", torch.device("cpu"))
    assert "digits feature network" in description and "8-bit" in description


def _counting_speed_target(monkeypatch):
    """Patch dpms.speed.load_target so that the test sees every call of the real network and of
    dpms's wrapper around it (calls of the wrapper around the null network are counted apart)."""
    import dpms.models.checkpoints as checkpoints
    import dpms.speed as speed

    calls = {"wrapper": 0, "null wrapper": 0, "net": 0, "net time inputs": []}
    real_wrap, real_target = checkpoints.wrap_model, speed.load_target

    def wrap_model(net, *args, **kwargs):
        inner = real_wrap(net, *args, **kwargs)
        key = "wrapper" if isinstance(net, torch.nn.Module) else "null wrapper"

        def counted(x, t):
            calls[key] += 1
            return inner(x, t)

        counted.thresholding = inner.thresholding
        return counted

    def load_target(*args, **kwargs):
        target = real_target(*args, **kwargs)

        def hook(module, inputs):
            calls["net"] += 1
            calls["net time inputs"].append(inputs[1].clone())

        target.module.register_forward_pre_hook(hook)
        return target

    monkeypatch.setattr(checkpoints, "wrap_model", wrap_model)
    monkeypatch.setattr(speed, "load_target", load_target)
    return calls


def test_floor_and_diffusers_call_the_bare_network_and_only_dpms_uses_its_wrapper(monkeypatch):
    calls = _counting_speed_target(monkeypatch)
    nfe, repeats = 4, 2
    r = measure_speed("digits", "ddim", nfe, batch=2, repeats=repeats, random_weights=True, memory=False)
    runs = 1 + repeats  # warm-up and the timed repeats
    assert calls["wrapper"] == runs * nfe  # the dpms loops, and nothing else
    # the floor: one bare call per run (plus the null network's precomputed answer); diffusers: nfe per run
    assert calls["net"] == runs * nfe + runs + 1 + runs * nfe
    assert calls["null wrapper"] > 0  # the null loops go through dpms's wrapper, around the null network
    # diffusers hands the network its integer timestep as the time input (DDIM at 4 steps: 750, 500, 250, 0)
    diffusers_inputs = [t for t in calls["net time inputs"] if torch.allclose(t, t.round(), atol=1e-3)]
    assert {round(float(t[0])) for t in diffusers_inputs} >= {750, 500, 250, 0}
    assert r.null_loop_ms_dpms > 0 and r.null_loop_ms_diffusers > 0
    nulls = zip(r.samples["null_diffusers"], r.samples["null_dpms"])
    assert r.vs_diffusers_null == pytest.approx(statistics.median(d / a for d, a in nulls))
    assert len(r.samples["null_dpms"]) == repeats


def test_benchmark_table_has_the_floor_null_loops_and_fid_time():
    """benchmarks/speed.py renders measure_speed's reports (a row without diffusers too)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "speed.py"
    spec = importlib.util.spec_from_file_location("benchmark_speed", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = [measure_speed("gmm", "dpm2m", 4, batch=8, repeats=1).to_dict(),
            measure_speed("gmm", "rk2", 4, batch=8, repeats=1, memory=False).to_dict()]
    table = bench.markdown(rows, {"cpu": "test", "torch": torch.__version__, "threads": 1}, "cmd")
    header = next(line for line in table.splitlines() if line.startswith("| model"))
    for column in ("forward ms", "null ms dpms", "null ms diffusers", "sampling 50k (min)", "features 50k (min)", "FID 50k (min)"):
        assert column in header
    assert "| gmm | dpm2m | 4 | 8 | fp64 |" in table and "| gmm | rk2 | 4 | 8 | fp64 |" in table
    assert "gmm: the samples themselves" in table


def test_reported_precision_is_what_ran():
    r = measure_speed("gmm", "ddim", 2, batch=4, repeats=1, diffusers=False, memory=False)
    assert (r.dtype, r.solver_dtype) == ("fp64", "fp64") and "cpu fp64" in format_report(r)[0]
    r = measure_speed("digits", "ddim", 2, batch=2, repeats=1, dtype="bf16", random_weights=True, diffusers=False, memory=False)
    assert (r.dtype, r.solver_dtype) == ("bf16", "fp32") and "network bf16, solver fp32" in format_report(r)[0]


@pytest.mark.parametrize("solver,nfe", [("ddim", 10), ("dpm3", 12), ("dpm3m", 12), ("pndm", 15)])
def test_solver_copies_are_the_measured_peak_of_the_loop(gmm, solver, nfe):
    """The headroom --batch auto leaves on CUDA: the copies of the batch the loop holds at its peak,
    within a batch of what the memory test above measures with a network that allocates its output."""
    from dpms.speed import solver_copies

    copies = solver_copies(solver, gmm.schedule, (3, 8, 8), nfe, torch.float32)
    measured = {"ddim": 4, "dpm3": 8, "dpm3m": 12, "pndm": 11}[solver]
    assert measured <= copies <= measured + 1


def test_cuda_auto_batch_leaves_room_for_the_solver_state(monkeypatch):
    """With a fake GPU of 1000 'images' of memory where a forward pass takes 2 per image: the forward
    alone fits 256 images (2·256 + 256 inputs); with 12 copies of the batch held it fits only 64."""
    import dpms.memory as memory

    monkeypatch.setattr(memory, "_sync", lambda device: None)
    held = []

    def forward_at(batch, hold):
        held.append(hold)
        if batch * (1 + 2 + hold) > 1000:
            raise torch.cuda.OutOfMemoryError("fake")

    cuda = torch.device("cuda")
    assert memory.auto_batch(forward_at, cuda) == 256
    assert memory.auto_batch(forward_at, cuda, extra_copies=12) == 64 and set(held[-3:]) == {12}
    assert 64 * (1 + 2 + 12) <= 1000 < 128 * (1 + 2 + 12)


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
        (["--dtype", "bf16"], "gmm is the closed-form ε of a Gaussian mixture, computed in float64, not a network"),
        (["--compile"], "--dtype, --compile, --cuda-graphs and --channels-last do not apply"),
        (["--cuda-graphs"], "--dtype, --compile, --cuda-graphs and --channels-last do not apply"),
        (["--channels-last"], "--dtype, --compile, --cuda-graphs and --channels-last do not apply"),
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


def test_median_interval_is_the_binomial_order_statistic_interval():
    from dpms.speed import median_interval

    assert median_interval(range(5)) is None  # P(all on one side) = 1/16 > 2.5 %: no 95 % interval from 5
    assert median_interval([3, 1, 2, 0, 6, 5, 4]) == (0, 6)  # n = 7: k = 1 (tail 1/128)
    assert median_interval(range(1, 10)) == (2, 8)  # n = 9: k = 2 (tail 10/512 ≤ 2.5 % < 46/512)
    assert median_interval(range(1, 16)) == (4, 12)  # n = 15: k = 4 (tail 576/32768)
    # coverage: for n = 9 the interval (x₂, x₈) misses the median with probability 2·10/512
    g = torch.Generator().manual_seed(0)
    draws = torch.randn(4000, 9, generator=g)
    missed = sum(not (lo <= 0.0 <= hi) for lo, hi in (median_interval(row.tolist()) for row in draws))
    assert abs(missed / 4000 - 20 / 512) < 0.012


def test_report_carries_the_intervals_of_its_medians():
    r = measure_speed("gmm", "ddim", 4, batch=8, repeats=7, memory=False)
    ratios = sorted(d / a for d, a in zip(r.samples["diffusers"], r.samples["dpms"]))
    assert r.vs_diffusers_ci == (ratios[0], ratios[-1])
    assert r.overhead_ci[0] <= r.overhead <= r.overhead_ci[1]
    assert "95 % CI" in "\n".join(format_report(r))


def test_benchmark_verdicts_are_read_off_the_rows():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "speed.py"
    spec = importlib.util.spec_from_file_location("benchmark_speed", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    row = lambda solver, overhead, vs, ci, null: {"model": "digits", "solver": solver, "dtype": "fp32", "overhead": overhead,  # noqa: E731
                                                  "vs_diffusers": vs, "vs_diffusers_ci": ci, "vs_diffusers_null": null}
    rows = [row("ddim", 1.01, 1.02, (0.99, 1.05), 1.4), row("dpm3", 1.04, 0.98, (0.95, 1.01), 1.1), row("pndm", 1.07, 0.95, (0.93, 0.97), 0.9)]
    text = "\n".join(bench.verdicts(rows, {"cpu": "x"}))
    assert "overhead ≤ 1.05 (digits, CPU): NOT met" in text and "digits pndm fp32 1.070" in text
    assert "median ≥ 1 in 1 of 3 rows" in text
    assert "inside the 95 % CI (not distinguishable from equal speed): digits dpm3 fp32 0.980" in text
    assert "significantly slower than diffusers (CI below 1): digits pndm fp32 0.950" in text
    assert "≤ diffusers': 2 of 3 rows — not in: digits pndm fp32 0.90×" in text
    assert "GPU targets" in text and "not measured" in text
    good = "\n".join(bench.verdicts(rows[:1], {"cpu": "x"}))
    assert "overhead ≤ 1.05 (digits, CPU): met" in good and "in no row is dpms significantly slower" in good


def test_benchmark_writes_each_row_and_resumes(tmp_path):
    """benchmarks/speed.py filters its grid, writes after every row, and --resume keeps what is written."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "speed.py"
    base = [sys.executable, str(script), "--models", "gmm", "--repeats", "1", "--out", str(tmp_path)]
    subprocess.run(base + ["--solvers", "ddim"], check=True, capture_output=True, timeout=300)
    first = json.loads((tmp_path / "cpu.json").read_text())["rows"]
    assert [(r["model"], r["solver"]) for r in first] == [("gmm", "ddim")]
    done = subprocess.run(base + ["--solvers", "ddim,dpm3", "--resume"], check=True, capture_output=True, text=True, timeout=300)
    rows = json.loads((tmp_path / "cpu.json").read_text())["rows"]
    assert [r["solver"] for r in rows] == ["ddim", "dpm3"] and rows[0] == first[0]  # ddim kept, not rerun
    assert "gmm            ddim" not in done.stdout and "| gmm | dpm3 |" in (tmp_path / "cpu.md").read_text()
