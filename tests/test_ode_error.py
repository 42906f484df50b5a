"""`ode_error` in `dpms bench`: each sample's distance to the same model's converged ODE solution from the
same x_T, for a network (the digits model) as for the exact model; computed once, cached, checked, reported,
and measured for finished cells that lack it without recomputing their FD."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import dpms
from dpms.bench import Overrides, apply_overrides, compare, load_config, run_benchmark
from dpms.bench import ode_reference as ode
from dpms.bench.report import cell_path
from dpms.cli import main
from dpms.errors import DpmsError
from dpms.models import GaussianMixture
from dpms.sampler import ode_reference as dop853
from dpms.sampler.noise import initial_noise
from dpms.target import load_target

REPO = Path(__file__).resolve().parents[1]
SMALL = {"num": 4, "reference": {"solver": "dpm3m", "nfe": 24}, "check": {"solver": "dpm2m", "nfe": 24, "num": 2}, "tol": 100.0}
GMM = {"name": "g", "model": "gmm", "features": "exact", "num": 40, "batch": 16, "adaptive_batch": 20, "seed": 3,
       "nfe": [6, 10], "solvers": ["ddim", "dpm2m", "dpm23"]}
needs_digits = pytest.mark.skipif(not (REPO / "checkpoints" / "digits" / "digits_ddpm.pt").is_file(), reason="digits model not trained yet")

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny networks run faster on one thread


def write_config(tmp_path: Path, base: dict | None = None, **changes) -> Path:
    data = base or {"name": "ode", "model": "digits", "features": "digits", "num": 6, "batch": 3, "seed": 5, "nfe": [10],
                    "solvers": ["ddim"], "ode_error": SMALL}
    path = tmp_path / "ode.yaml"
    path.write_text(yaml.safe_dump({**data, **changes}, sort_keys=False))
    return path


def gmm_bench(tmp_path: Path, out: Path, **changes):
    from rich.console import Console

    config = load_config(write_config(tmp_path, GMM, **{k: v for k, v in changes.items() if k != "overrides"}))
    return run_benchmark(apply_overrides(config, changes.get("overrides", Overrides())), out, console=Console(quiet=True))


def digits_solution(solver: str, nfe: int, num: int, seed: int = 5) -> torch.Tensor:
    target = load_target("digits")
    x_T = initial_noise(target.shape, range(num), seed)
    with torch.inference_mode():
        return dpms.sample(target.make_noise_fn(None), target.schedule, x_T, solver=solver, nfe=nfe).double()


# ------------------------------------------------------------------------------------ the number
@needs_digits
def test_network_ode_error_is_the_mean_distance_to_its_own_high_nfe_solution(tmp_path):
    result = run_benchmark(load_config(write_config(tmp_path)), tmp_path / "out")
    (record,) = result.records
    reference = digits_solution("dpm3m", 24, 4)
    distances = (digits_solution("ddim", 10, 4) - reference).flatten(1).norm(dim=1)
    assert record["ode_error"] == pytest.approx(distances.mean().item(), rel=1e-5)
    assert record["ode_error_std"] == pytest.approx(distances.std(unbiased=False).item(), rel=1e-3)
    agreement = (digits_solution("dpm2m", 24, 2) - reference[:2]).flatten(1).norm(dim=1).mean().item()
    # a small difference of two float32 solves, batched otherwise here than in the bench: round-off is
    # amplified (1.7e-5 relative measured on one CPU); another method or sample count is off by far more
    assert {k: v for k, v in record["ode_reference"].items() if k != "key"} == {
        "num": 4, "method": "dpm3m NFE 24", "check": "dpm2m NFE 24", "check_num": 2, "agreement": pytest.approx(agreement, rel=1e-3),
        "tol": 100.0}
    # written next to FD: results.json / csv / md and a figure of its own
    out = tmp_path / "out"
    document = json.loads((out / "results.json").read_text())
    assert document["cells"][0]["ode_error"] == record["ode_error"] and document["config"]["ode_error"] == SMALL
    assert {"ode_error", "ode_error_std"} <= set((out / "results.csv").read_text().splitlines()[0].split(","))
    markdown = (out / "results.md").read_text()
    assert "## ode_error: mean L2 distance to the model's converged ODE solution from the same x_T" in markdown
    assert "reference dpm3m NFE 24, which agrees with dpm2m NFE 24" in markdown
    assert (out / "ode_error_vs_nfe.png").is_file() and (out / "fid_vs_nfe.png").is_file()


def test_exact_model_reference_is_its_dop853_solution_checked_by_dpm3m(tmp_path):
    result = gmm_bench(tmp_path, tmp_path / "out", ode_error=True)
    gmm = GaussianMixture.default()
    x_T = initial_noise((gmm.dim,), range(40), 3, dtype=torch.float64)
    exact = torch.cat([dop853(gmm, gmm.schedule, x_T[k : k + 16]) for k in range(0, 40, 16)])
    record = next(r for r in result.records if r["label"] == "dpm2m" and r["nfe"] == 10)
    x = dpms.sample(gmm, gmm.schedule, x_T, solver="dpm2m", nfe=10)
    assert record["ode_error"] == pytest.approx((x - exact).norm(dim=1).mean().item(), rel=1e-8)
    assert record["ode_reference"]["method"] == "dop853 rtol 1e-10" and record["ode_reference"]["check"] == "dpm3m NFE 1000"
    assert record["ode_reference"]["num"] == 40 and record["ode_reference"]["agreement"] < 1e-5
    adaptive = next(r for r in result.records if r["adaptive"])
    assert adaptive["ode_error"] > 0  # adaptive cells are measured too


def test_defaults_per_model():
    spec = ode.resolve({}, 64, 8, True, GaussianMixture.default().schedule, [1e-3], "x")
    assert spec.reference == ode.Method("dop853", rtol=1e-10) and spec.check == ode.Method("dpm3m", 1000)
    assert spec.num == 64 and spec.check_num == 50
    network = ode.resolve({}, 5000, 64, False, load_target("gmm").schedule, [1e-3], "x")
    assert network.num == 1000 and network.reference == ode.Method("dpm3m", 500) and network.check == ode.Method("dpm2m", 250)
    assert network.tol == pytest.approx(8e-3)  # 1e-3 · √64
    assert ode.resolve({"num": 7000}, 600, 64, False, load_target("gmm").schedule, [1e-3], "x").num == 600


# ------------------------------------------------------------------------------------ cached and checked
@needs_digits
def test_reference_is_computed_once_and_cached_by_its_settings(tmp_path, monkeypatch):
    out = tmp_path / "out"
    run_benchmark(load_config(write_config(tmp_path)), out)
    (cached,) = (out / "ode_reference").glob("*.pt")
    stored = torch.load(cached, weights_only=True)  # plain tensors and strings: allowlisted unpickling
    assert stored["x"].shape == (4, 1, 8, 8) and stored["check"].shape == (2, 1, 8, 8)

    def no_solving(*args, **kwargs):
        raise AssertionError("the cached reference should have been used")

    monkeypatch.setattr(ode.Method, "solve", no_solving)
    more = run_benchmark(load_config(write_config(tmp_path, solvers=["ddim", "dpm2m"])), out)
    assert [r["solver"] for r in more.records] == ["ddim", "dpm2m"] and all(r["ode_error"] > 0 for r in more.records)
    # another t_end, or other reference settings, is another reference
    with pytest.raises(AssertionError, match="cached reference"):
        run_benchmark(load_config(write_config(tmp_path, t_end=2e-3)), out, force=True)
    with pytest.raises(AssertionError, match="cached reference"):
        run_benchmark(load_config(write_config(tmp_path, ode_error={**SMALL, "reference": {"solver": "dpm3m", "nfe": 30}})), out, force=True)


def test_a_reference_that_has_not_converged_stops_the_run_before_any_cell(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(DpmsError, match=r"has not converged: dop853 rtol 1e-10 and dpm2m NFE 6 differ by mean L2 .* > tol") as error:
        gmm_bench(tmp_path, out, ode_error={"check": {"solver": "dpm2m", "nfe": 6}})
    assert "\n" not in str(error.value) and "raise ode_error.reference.nfe" in str(error.value)
    assert list((out / "ode_reference").glob("*.pt"))  # kept: a larger tol needs no recomputation
    assert not list(out.glob("cells/*.json"))


def test_a_wrong_or_edited_reference_fails_its_own_check(tmp_path, monkeypatch):
    out = tmp_path / "out"
    gmm_bench(tmp_path, out, ode_error=True)
    (cached,) = (out / "ode_reference").glob("*.pt")
    stored = torch.load(cached, weights_only=True)
    stored["x"] += 0.1  # a bad reference in the cache is not trusted: the loaded copy is checked again
    torch.save(stored, cached)
    with pytest.raises(DpmsError, match="has not converged"):
        gmm_bench(tmp_path, out, ode_error=True, solvers=["ddim", "dpm2m", "dpm23", "dpm3"])
    cached.unlink()
    solve = ode.Method.solve

    def wrong(self, target, idx, *args):  # a reference solver that is off (a bug, an unstable method)
        x = solve(self, target, idx, *args)
        return x + 0.05 if self.solver == "dop853" else x

    monkeypatch.setattr(ode.Method, "solve", wrong)
    with pytest.raises(DpmsError, match="has not converged"):
        gmm_bench(tmp_path, out, ode_error=True, solvers=["ddim", "dpm2m", "dpm23", "dpm3"])


# ------------------------------------------------------------------------------------ toggled, stale, checked
def test_cells_run_without_ode_error_get_it_measured_without_recomputing_fd(tmp_path):
    out = tmp_path / "out"
    plain = gmm_bench(tmp_path, out)
    assert len(plain.computed) == 5 and all("ode_error" not in r for r in plain.records)
    fd = {r["key"]: r["fid"] for r in plain.records}
    measured = gmm_bench(tmp_path, out, overrides=Overrides(ode_error=True))
    assert measured.computed == [] and {r["key"]: r["fid"] for r in measured.records} == fd  # same cells, FD kept
    fresh = gmm_bench(tmp_path, tmp_path / "fresh", ode_error=True)
    for a, b in zip(measured.records, fresh.records):
        assert a["key"] == b["key"] and a["ode_error"] == pytest.approx(b["ode_error"], rel=1e-9)
    assert json.loads(cell_path(out, measured.records[0]["key"]).read_text())["ode_error"] == measured.records[0]["ode_error"]
    # other reference settings: the old ode_error is stale and measured again (never reported silently)
    fewer = gmm_bench(tmp_path, out, ode_error={"num": 10})
    assert fewer.computed == [] and all(r["ode_reference"]["num"] == 10 for r in fewer.records)
    assert [r["ode_error"] for r in fewer.records] != [r["ode_error"] for r in measured.records]
    # turned off: nothing is computed, and what was measured stays measured
    off = gmm_bench(tmp_path, out, ode_error={"num": 10}, overrides=Overrides(ode_error=False))
    assert off.computed == [] and [r["ode_error"] for r in off.records] == [r["ode_error"] for r in fewer.records]


def test_a_baseline_without_ode_error_still_checks_fd(tmp_path):
    baseline = gmm_bench(tmp_path, tmp_path / "plain").records
    ours = gmm_bench(tmp_path, tmp_path / "ode", ode_error=True).records
    assert compare(ours, baseline, tol=0.0, rel_tol=1e-9).ok
    moved = [{**b, "fid": b["fid"] * 1.01} if b["label"] == "ddim" and b["nfe"] == 6 else b for b in baseline]
    result = compare(ours, moved, tol=0.0, rel_tol=1e-9)
    assert [(m.cell, m.quantity) for m in result.moved] == [("ddim@6", "fid")]


def test_a_report_written_with_ode_error_in_the_cell_settings_is_resumed_not_refused(tmp_path):
    out = tmp_path / "out"
    gmm_bench(tmp_path, out, ode_error=True)
    document = json.loads((out / "results.json").read_text())
    for cell in document["cells"]:
        cell["settings"]["metric"]["ode_error"] = True  # as dpms wrote them before ode_error left the key
    (out / "results.json").write_text(json.dumps(document))
    assert gmm_bench(tmp_path, out, ode_error=True).computed == []


# ------------------------------------------------------------------------------------ settings and flags
@pytest.mark.parametrize("value, message", [
    ("yes", "ode_error must be true, false or a mapping"),
    ({"nmu": 3}, "unknown key 'nmu' in ode_error"),
    ({"reference": {"solver": "dpm3m"}}, "ode_error.reference needs an nfe"),
    ({"reference": {"solver": "dop853", "nfe": 10}}, "dop853 chooses its own steps"),
    ({"check": {"solver": "dpm2m", "nfe": 0}}, r"ode_error.check.nfe must be an integer ≥ 1"),
    ({"tol": -1}, "ode_error.tol must be a positive number"),
])
def test_bad_ode_error_settings_are_one_line_errors(tmp_path, value, message):
    with pytest.raises(DpmsError, match=message):
        load_config(write_config(tmp_path, GMM, ode_error=value))


@pytest.mark.parametrize("value, message", [
    ({"reference": {"solver": "ddpm", "nfe": 100}}, "needs a deterministic fixed-NFE solver"),
    ({"reference": {"solver": "rk3", "nfe": 100}}, "ode_error.reference: solver 'rk3': NFE 100 is impossible"),
    ({"reference": {"solver": "dpm2m", "nfe": 24}, "check": {"solver": "dpm2m", "nfe": 24}}, "repeats the reference"),
])
def test_unusable_reference_methods_fail_before_sampling(tmp_path, value, message):
    with pytest.raises(DpmsError, match=message):
        gmm_bench(tmp_path, tmp_path / "out", ode_error=value)
    assert not (tmp_path / "out").exists()


def test_flags_turn_ode_error_on_and_off(tmp_path, capsys):
    config = load_config(write_config(tmp_path, GMM, ode_error=SMALL))
    assert apply_overrides(config, Overrides(ode_error=False)).ode_error is None
    assert apply_overrides(config, Overrides(ode_error=True)).ode_error == SMALL  # keeps the config's settings
    plain = load_config(write_config(tmp_path, GMM))
    assert plain.ode_error is None and apply_overrides(plain, Overrides(ode_error=True)).ode_error == {}
    assert apply_overrides(plain, Overrides(model="gmm")).ode_error is None  # same model: the config decides
    assert load_config(REPO / "configs" / "digits.yaml").ode_error == {"num": 200} and load_config(REPO / "configs" / "gmm.yaml").ode_error == {}
    args = ["bench", "--config", str(write_config(tmp_path, GMM)), "--solvers", "ddim", "--nfe", "6", "--out", str(tmp_path / "o")]
    assert main([*args, "--ode-error"]) == 0
    assert json.loads((tmp_path / "o" / "results.json").read_text())["cells"][0]["ode_error"] > 0
    assert main([*args, "--no-ode-error", "--out", str(tmp_path / "p")]) == 0
    assert "ode_error" not in json.loads((tmp_path / "p" / "results.json").read_text())["cells"][0]
    capsys.readouterr()
