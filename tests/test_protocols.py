"""Codebase protocols against the DDIM and PNDM codebases' own loops on the exact model.

tests/data/codebase_loops.json holds the outputs of ermongroup/ddim's `generalized_steps` and
luping-liu/PNDM's `gen_order_1/2/4` and `gen_fon`, run on GaussianMixture.default() with DDPM's discrete
linear schedule by `python benchmarks/codebase_loops.py DDIM_CHECKOUT PNDM_CHECKOUT` (their code, run
locally; not in this repository).
"""

import json
import warnings
from pathlib import Path

import pytest
import torch

import dpms
from dpms import DpmsError, NoiseSchedule
from dpms.models import GaussianMixture
from dpms.sampler import ode_reference, validate
from dpms.sampler import protocols
from dpms.sampler.protocols import RepeatedIndexWarning

REFERENCE = json.loads((Path(__file__).parent / "data" / "codebase_loops.json").read_text())
N = 1000


def nfe_of(solver: str, steps: int) -> int:
    """The codebases' counts: DDIM steps, S-PNDM steps + 1, F-PNDM and FON steps + 9 (4·steps up to 3 steps)."""
    return {"ddim": steps, "spndm": steps + 1}.get(solver, 4 * steps if steps <= 3 else steps + 9)


@pytest.fixture(scope="module")
def gmm():
    return GaussianMixture.default(schedule=NoiseSchedule.discrete_linear(N))


@pytest.fixture(scope="module")
def x_T():
    return torch.tensor(REFERENCE["x_T"], dtype=torch.float64)


def clamped(gmm):
    """ε with network inputs below −½ read at −½, as the reference's model (the discrete schedule has no
    ᾱ at t = 0, network input −1, where PNDM's all-warm-up runs call the network on their last step)."""
    return lambda x, t: gmm(x, t.clamp(min=0.5 / N))


def run(gmm, x_T, solver, steps, skip="discrete_uniform", protocol="pndm-code", noise_fn=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RepeatedIndexWarning)
        return dpms.sample(noise_fn or clamped(gmm), gmm.schedule, x_T, solver=solver, nfe=nfe_of(solver, steps), skip=skip,
                           protocol=protocol, return_info=True)


@pytest.mark.parametrize("case", REFERENCE["cases"], ids=lambda c: f"{c['protocol']}-{c['method']}-{c['skip']}-{c['steps']}")
def test_matches_the_codebase_loop(gmm, x_T, case):
    x, info = run(gmm, x_T, case["solver"], case["steps"], case["skip"], case["protocol"])
    assert info.nfe == case["calls"]  # the network calls the codebase's loop made
    ref = torch.tensor(case["x"], dtype=torch.float64)
    # float64; the reference was written on another CPU, whose vectorised exp/log differ in the last bits
    # (2e-12 after F-PNDM's steps); any difference in the loop's formulas is above 1e-6
    assert torch.allclose(x, ref, atol=1e-10, rtol=0), float((x - ref).abs().max())


def test_float32_samples_run_the_same_loop(gmm, x_T):
    """A float32 grid holds (n + 1)/N only to round-off: the loop still reads the same table entries (one
    index off moves a sample by ~1e-2). FON divides a one-index difference by 1/N, as PNDM's code does, so
    its float32 round-off is ~N times larger."""
    for solver, protocol, atol in (("pndm", "pndm-code", 1e-5), ("fon", "pndm-code", 5e-4), ("ddim", "ddim-code", 1e-5)):
        a, info = run(gmm, x_T, solver, 8, protocol=protocol)
        b, info32 = run(gmm, x_T.float(), solver, 8, protocol=protocol)
        assert b.dtype == torch.float32 and info32.nfe == info.nfe
        assert torch.allclose(a.float(), b, atol=atol, rtol=0), (solver, float((a.float() - b).abs().max()))


def test_table_reads_of_each_codebase():
    """Network input n → padded-table entry: PNDM's `alphas_cump[n.long() + 1]` truncates towards zero
    (−½ reads ᾱ_1, 812.5 reads ᾱ_813; −1 reads ᾱ_0); DDIM's `compute_alpha` pads a leading ᾱ = 1 for −1."""
    schedule = NoiseSchedule.discrete_linear(N)
    alpha_bar = torch.exp(2 * schedule.log_alpha_array)
    n = torch.tensor([-1, -0.5, 0, 0.5, 812.5, 998], dtype=torch.float64)
    t = ((n + 1) / N).float()  # a float32 grid holds these only to round-off
    pndm = protocols.plan("pndm-code", schedule, "discrete_uniform", 10, torch.float64, "cpu").schedule
    assert torch.allclose(pndm.alpha(t).double() ** 2, alpha_bar[[0, 1, 1, 1, 813, 999]], rtol=1e-6, atol=0)
    ddim = protocols.plan("ddim-code", schedule, "discrete_uniform", 10, torch.float64, "cpu").schedule
    assert ddim.alpha(t[:1]).item() == 1.0 and ddim.sigma(t[:1]).item() == 0.0
    assert torch.allclose(ddim.alpha(t[[2, 5]]).double() ** 2, alpha_bar[[0, 998]], rtol=1e-6, atol=0)


def test_the_protocol_changes_the_result(gmm, x_T):
    """dpms's own grid (start at T, stop at index 0) is not the codebases' loop: the outputs differ."""
    own = dpms.sample(gmm, gmm.schedule, x_T, solver="pndm", nfe=19, skip="discrete_uniform")  # 10 steps
    code, _ = run(gmm, x_T, "pndm", 10)
    assert (own - code).abs().max() > 1e-2


def test_network_times_and_state_times(gmm, x_T):
    """PNDM's code on range(0, 1000, 125): network input 875 first, its half-integer midpoint 812.5 twice,
    750; the states sit one table index later (x_T at ᾱ_876, the end at ᾱ_0, t = 1/N). DDIM's code reads
    ᾱ at the network's index and ends at ᾱ = 1 (reported as t = 0)."""
    calls = []
    _, info = run(gmm, x_T, "pndm", 8, noise_fn=lambda x, t: calls.append(t[0].item()) or gmm(x, t))
    assert [round(t * N - 1, 9) for t in calls[:5]] == [875, 812.5, 812.5, 750, 750]
    assert info.nfe == len(calls) == 17
    assert info.timesteps[0].item() == pytest.approx(877 / N) and info.timesteps[-1].item() == pytest.approx(1 / N)
    _, info = run(gmm, x_T, "ddim", 10, protocol="ddim-code")
    assert info.timesteps[0].item() == pytest.approx(901 / N) and info.timesteps[-1].item() == 0.0
    assert info.protocol == "ddim-code"


def test_a_repeated_index_is_said_in_one_line(gmm, x_T):
    """DDIM's quadratic list for 50 steps starts 0, 0, 1: the loop steps zero once (and pays a call)."""
    with pytest.warns(RepeatedIndexWarning, match=r"repeats indices \(0, 0, 1, 2, …\): 1 zero-length step") as record:
        x, info = dpms.sample(gmm, gmm.schedule, x_T, solver="ddim", nfe=50, skip="discrete_quadratic", protocol="ddim-code", return_info=True)
    assert info.nfe == 50 and all("\n" not in str(w.message) for w in record)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning where the list has no repeat
        dpms.sample(gmm, gmm.schedule, x_T, solver="ddim", nfe=20, skip="discrete_quadratic", protocol="ddim-code")


def test_uniform_lists_count_their_entries(gmm, x_T):
    """The runners' `timesteps` 6 builds range(0, 1000, 166): 7 entries, 7 calls; no list has 9 entries."""
    calls = []
    dpms.sample(lambda x, t: calls.append(round(t[0].item() * N - 1)) or gmm(x, t), gmm.schedule, x_T, solver="ddim", nfe=7, protocol="ddim-code")
    assert calls == [996, 830, 664, 498, 332, 166, 0]
    with pytest.raises(DpmsError, match="has 9 entries; nearest step counts: 8 or 10"):
        dpms.sample(gmm, gmm.schedule, x_T, solver="ddim", nfe=9, protocol="ddim-code")


@pytest.mark.parametrize("kwargs,match", [
    (dict(solver="dpm3", protocol="pndm-code"), "runs the solvers that codebase has"),
    (dict(solver="spndm", protocol="ddim-code"), "runs the solvers that codebase has"),
    (dict(solver="pndm", protocol="pndm"), "unknown protocol 'pndm'"),
    (dict(solver="ddim", protocol="ddim-code", skip="logSNR"), "skip must be one of discrete_uniform, discrete_quadratic"),
    (dict(solver="ddim", protocol="ddim-code", t_start=0.5), "fixes the codebase's own start and end"),
    (dict(solver="ddim", protocol="ddim-code", t_end=0.01), "fixes the codebase's own start and end"),
    (dict(solver="pndm", protocol="pndm-code", nfe=1009), "top index 999 reads ᾱ at table index 1000, past the table's end"),
])
def test_bad_requests_get_one_line(gmm, x_T, kwargs, match):
    kwargs = {"nfe": 19, **kwargs}
    with pytest.raises(DpmsError, match=match) as e:
        dpms.sample(gmm, gmm.schedule, x_T, **kwargs)
    assert "\n" not in str(e.value)
    with pytest.raises(DpmsError, match=match):
        validate(schedule=gmm.schedule, **kwargs)


def test_a_continuous_schedule_is_refused(x_T):
    gmm = GaussianMixture.default()
    with pytest.raises(DpmsError, match="is continuous; use a discrete model or drop the protocol"):
        dpms.sample(gmm, gmm.schedule, x_T, solver="ddim", nfe=10, protocol="ddim-code")


def test_a_clipped_table_is_refused(x_T):
    """DPM-Solver's clipping drops the cosine table's last steps; the codebases index the whole table."""
    schedule = NoiseSchedule.discrete_cosine(N)
    assert schedule.clipped_steps > 0 and NoiseSchedule.discrete_linear(N).clipped_steps == 0
    gmm = GaussianMixture.default(schedule=schedule)
    with pytest.raises(DpmsError, match=f"whole table of {N} steps, but .* dropped its last {schedule.clipped_steps}"):
        dpms.sample(gmm, schedule, x_T, solver="ddim", nfe=10, protocol="ddim-code")


def test_pndm_offset_puts_a_floor_under_the_error(gmm):
    """PNDM's transfer reads ᾱ one index after the network's time, so its loop converges to another ODE:
    its error to the exact solution (from T = 1 to t = 1/N, where its last state sits) stops falling, while
    F-PNDM on dpms's grid keeps converging."""
    x_T = gmm.prior(64, torch.Generator().manual_seed(0))
    ref = ode_reference(gmm, gmm.schedule, x_T)

    def error(x):
        return (x - ref).pow(2).sum(1).sqrt().mean().item()

    code = [error(run(gmm, x_T, "pndm", steps)[0]) for steps in (100, 250, 500)]
    own = [error(dpms.sample(gmm, gmm.schedule, x_T, solver="pndm", nfe=steps + 9, skip="discrete_uniform")) for steps in (100, 250, 500)]
    assert min(code) > 2e-3 and code[2] > 0.85 * code[0], code  # a floor
    assert own[2] < own[1] / 2.5 < own[0] / 6 and own[2] < 2e-4, own  # converging (about order 1.5 here)
