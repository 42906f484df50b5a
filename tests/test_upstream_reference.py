"""UniPC and DEIS against outputs of their official code (wl-zhao/UniPC `uni_pc.py`, qsh-zh/deis `th_deis`)
on the exact model, over explicit time grids. The outputs are data made by benchmarks/upstream_reference.py
(which takes the upstream checkouts as arguments); no upstream code is in this repository."""

import json
from pathlib import Path

import pytest
import torch

import dpms
from dpms.models import GaussianMixture

DATA = json.loads((Path(__file__).parent / "data" / "upstream_unipc_deis.json").read_text())
CASES = DATA["cases"]


def _run(case):
    gmm = GaussianMixture.default()
    x_T = torch.tensor(DATA["x_T"], dtype=torch.float64)
    ts = torch.tensor(DATA["grids"][case["grid"]], dtype=torch.float64)
    x, info = dpms.sample(gmm, gmm.schedule, x_T, solver=case["solver"], timesteps=ts, return_info=True, **case["options"])
    assert info.nfe == len(ts) - 1
    return x


def _id(case):
    return f"{case['solver']}-{case['grid']}-" + "-".join(f"{v}" for v in case["options"].values())


def test_every_option_is_covered():
    unipc = {(c["solver"], tuple(sorted(c["options"].items()))) for c in CASES if c["solver"].startswith("unipc")}
    assert len(unipc) == 3 * 2 * 2 * 2 * 2  # orders × variant × prediction × corrector × lower_order_final
    assert {(c["solver"], c["options"]["variant"]) for c in CASES if c["solver"].startswith("deis")} == {
        (f"deis{k}", v) for k in (1, 2, 3) for v in ("tab", "rhoab")}


@pytest.mark.parametrize("case", [c for c in CASES if c["solver"].startswith("unipc")], ids=_id)
def test_unipc_equals_the_official_code(case):
    """Every order, variant, prediction, corrector and lower_order_final mode: equal to round-off (max 1.5e-13)."""
    ref = torch.tensor(case["output"], dtype=torch.float64)
    assert torch.allclose(_run(case), ref, atol=1e-11, rtol=0), float((_run(case) - ref).abs().max())


@pytest.mark.parametrize("case", [c for c in CASES if c["solver"].startswith("deis")], ids=_id)
def test_deis_equals_the_official_code_with_exact_integrals(case):
    """The official sampler with its coefficient integrals done by adaptive quadrature: equal to round-off. Against
    the official 10,000-point Riemann sums themselves the difference is their quadrature error (measured: up to
    1.0e-3 for tAB, whose t-integrand grows like 1/σ near t_end; 8.8e-6 for ρAB)."""
    ours = _run(case)
    exact = torch.tensor(case["output_accurate_quadrature"], dtype=torch.float64)
    riemann = torch.tensor(case["output"], dtype=torch.float64)
    assert torch.allclose(ours, exact, atol=1e-11, rtol=0), float((ours - exact).abs().max())
    bound = 2e-3 if case["options"]["variant"] == "tab" else 2e-5
    assert float((ours - riemann).abs().max()) < bound
