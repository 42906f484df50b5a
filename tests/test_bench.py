"""`dpms bench`: streamed Fréchet distances, outputs, resuming, batch/process independence, --check,
the shipped configs, and one-line errors before sampling. CPU only, on the exact model (tiny runs)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from pytorch_fid import fid_score
from pytorch_fid import inception as pf_inception
from rich.console import Console

import dpms
from dpms.bench import Overrides, apply_overrides, compare, load_config, run_benchmark
from dpms.bench.check import print_check
from dpms.bench.cells import plan_cells
from dpms.bench.report import fmt
from dpms.bench.runner import _model_info
from dpms.sampler import get_solver
from dpms.cli import main
from dpms.digits import DIGITS_DIR, STATS_FILE, digits_features
from dpms.evaluation import compute_stats, frechet_distance, load_stats
from dpms.evaluation import inception as dpms_inception
from dpms.evaluation.inception import FID_WEIGHTS_FILE
from dpms.models import GaussianMixture
from dpms.sampler import ode_reference
from dpms.sampler.noise import initial_noise, step_noise_seeds

from random_inception import save_random_fid_inception

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
GRID = {"name": "grid", "model": "gmm", "features": "exact", "num": 96, "batch": 32, "adaptive_batch": 48, "seed": 3,
        "nfe": [6, 10], "solvers": ["ddim", "dpm3"]}


@pytest.fixture(autouse=True)
def one_thread():
    """The exact model's tensors are tiny: on a busy 2-core machine thread hand-offs cost ~10× the work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_config(tmp_path: Path, name: str = "bench.yaml", **changes) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({**GRID, **changes}, sort_keys=False))
    return path


def bench(config_path: Path, out: Path, force: bool = False, **overrides):
    config = apply_overrides(load_config(config_path), Overrides(**overrides))
    return run_benchmark(config, out, force=force)


def fids(result) -> dict[str, float]:
    return {r["key"]: r["fid"] for r in result.records}


def regenerate(solver: str, nfe, num: int, seed: int) -> torch.Tensor:
    """The samples of a cell drawn in one batch, independently of the bench code path."""
    gmm = GaussianMixture.default()
    x_T = initial_noise((gmm.dim,), range(num), seed, dtype=torch.float64)
    return x_T, dpms.sample(gmm, gmm.schedule, x_T, solver=solver, nfe=nfe, seeds=step_noise_seeds(range(num), seed))


# ------------------------------------------------------------------------------ the numbers
def test_fd_and_ode_error_equal_direct_computation(tmp_path):
    gmm = GaussianMixture.default()
    config = write_config(tmp_path, num=64, batch=20, solvers=["dpm3", "ddpm"], nfe=[10], ode_error=True)
    result = bench(config, tmp_path / "out")
    for record in result.records:
        x_T, x = regenerate(record["solver"], 10, 64, 3)
        feats = x.numpy()
        expected = frechet_distance(feats.mean(0), np.cov(feats, rowvar=False), gmm.mean.numpy(), gmm.cov.numpy())
        assert record["metric"] == "FD (exact features)" and record["num"] == 64 and record["nfe_used"] == 10
        assert record["fid"] == pytest.approx(expected, rel=1e-9)
        if record["solver"] == "dpm3":
            reference = ode_reference(gmm, gmm.schedule, x_T)
            assert record["ode_error"] == pytest.approx((x - reference).norm(dim=1).mean().item(), rel=1e-6)


def test_numbers_do_not_depend_on_batch_size(tmp_path):
    config = write_config(tmp_path, solvers=["ddim", "ddpm", "dpm23"], nfe=[10])  # deterministic, stochastic, adaptive
    a = bench(config, tmp_path / "a", batch=32)
    b = bench(config, tmp_path / "b", batch=7)
    assert fids(a).keys() == fids(b).keys() and len(fids(a)) == 3  # same keys: the batch is not a setting
    for key, value in fids(a).items():
        assert fids(b)[key] == pytest.approx(value, rel=1e-10)
    adaptive = next(r for r in b.records if r["adaptive"])
    assert adaptive["nfe"] is None and adaptive["nfe_used"] % 3 == 0 and adaptive["nfe_used"] > 10


# ------------------------------------------------------------------------------ outputs
def test_outputs_label_the_metric_and_compare_with_the_paper(tmp_path):
    config = write_config(tmp_path, solvers=["ddim", "rk3", {"name": "dpm3", "paper": {10: 0.5}}, "dpm12"])
    out = tmp_path / "out"
    result = bench(config, out)
    document = json.loads((out / "results.json").read_text())
    assert document["metric"] == "FD (exact features)" and document["config"]["num"] == 96
    cells = {(c["label"], c["nfe"]): c for c in document["cells"]}
    assert set(cells) == {("ddim", 6), ("ddim", 10), ("rk3", 6), ("dpm3", 6), ("dpm3", 10), ("dpm12", None)}
    for cell in document["cells"]:
        assert {"solver", "nfe", "fid", "num", "seconds", "nfe_used", "metric", "paper", "key"} <= cell.keys()
    assert document["skipped"] == [{"label": "rk3", "solver": "rk3", "column": 10,
                                    "reason": "solver 'rk3': NFE 10 is impossible (NFE = 3·steps with steps ≥ 1); nearest valid: 9 or 12"}]
    dpm3 = cells[("dpm3", 10)]
    assert dpm3["paper"] == 0.5 and dpm3["delta"] == pytest.approx(dpm3["fid"] - 0.5)
    md = (out / "results.md").read_text()
    assert "FD (exact features)" in md and "FID" not in md
    assert "| solver \\ NFE | 6 | 10 | adaptive |" in md
    row = next(line for line in md.splitlines() if line.startswith("| dpm3 |"))
    assert f"({0.5:.2f}, {dpm3['fid'] - 0.5:+.2f})" in row
    assert next(line for line in md.splitlines() if line.startswith("| rk3 |")).split("|")[3].strip() == "n/a"
    assert f"@{cells[('dpm12', None)]['nfe_used']:g}" in md
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0].startswith("label,solver,column,nfe,nfe_used,metric,fid,paper,delta") and len(rows) == 7
    with Image.open(out / "fid_vs_nfe.png") as image:
        assert image.size == (1000, 640)
    assert len(result.records) == 6 and sorted(p.stem for p in (out / "cells").glob("*.json")) == sorted(cells[k]["key"] for k in cells)


def test_columns_by_steps_run_each_solver_at_its_own_nfe(tmp_path):
    config = write_config(tmp_path, nfe=None, steps=[4, 6], solvers=["ddim", "spndm", {"name": "pndm", "paper": {6: 1.0}}])
    text = config.read_text().replace("nfe: null\n", "")
    config.write_text(text)
    out = tmp_path / "out"
    result = bench(config, out)
    assert {(r["label"], r["column"]): r["nfe"] for r in result.records} == {
        ("ddim", 4): 4, ("ddim", 6): 6, ("spndm", 4): 5, ("spndm", 6): 7, ("pndm", 4): 13, ("pndm", 6): 15}
    md = (out / "results.md").read_text()
    assert "| solver \\ steps | 4 | 6 |" in md
    pndm6 = next(r for r in result.records if r["label"] == "pndm" and r["column"] == 6)
    assert f"{fmt(pndm6['fid'])} @15 (1.00, {pndm6['fid'] - 1:+.2f})" in md


def test_an_entry_can_run_a_subset_of_the_columns(tmp_path):
    config = write_config(tmp_path, solvers=["ddim", {"name": "dpm3", "nfe": [10], "paper": {10: 0.5}}])
    out = tmp_path / "out"
    result = bench(config, out)
    assert [(r["label"], r["nfe"]) for r in result.records] == [("ddim", 6), ("ddim", 10), ("dpm3", 10)]
    row = next(line for line in (out / "results.md").read_text().splitlines() if line.startswith("| dpm3 |"))
    assert row.split("|")[2].strip() == ""  # not run, and not impossible either
    assert bench(config, tmp_path / "all", nfe=[6]).records[-1]["label"] == "dpm3"  # --nfe replaces every entry's columns


# ------------------------------------------------------------------------------ resuming
def test_rerun_skips_finished_cells_and_recomputes_changed_settings(tmp_path):
    config = write_config(tmp_path)
    out = tmp_path / "out"
    first = bench(config, out)
    assert len(first.computed) == 4
    before = {p.name: p.read_text() for p in (out / "cells").glob("*.json")}
    victim = sorted(before)[1]
    (out / "cells" / victim).unlink()
    second = bench(config, out, batch=5)  # the batch size is not part of a key
    assert second.computed == [victim.removesuffix(".json")]
    for name, text in before.items():
        if name != victim:
            assert (out / "cells" / name).read_text() == text  # untouched, "seconds" and timestamp included
    assert fids(second) == pytest.approx(fids(first), rel=1e-10)
    changed = bench(config, out, force=True, seed=4)  # another report in the same folder: only with force
    assert len(changed.computed) == 4 and not set(fids(changed)) & set(fids(first))
    other_options = bench(write_config(tmp_path, "b.yaml", solvers=["ddim", {"name": "dpm3", "order_plan": "fixed"}], nfe=[6]), out, force=True)
    assert [k.split("-")[0] for k in other_options.computed] == ["dpm3"]  # ddim at NFE 6 was already there


def test_entries_with_identical_settings_but_disjoint_columns_are_allowed(tmp_path):
    from dpms import DpmsError
    from dpms.bench.config import parse_config

    base = {"model": "gmm", "features": "exact", "nfe": [6, 10], "num": 8, "batch": 8}
    config = parse_config({**base, "solvers": [{"name": "dpm3", "label": "A", "nfe": [6]}, {"name": "dpm3", "label": "B", "nfe": [10]}]})
    assert [e.label for e in config.solvers] == ["A", "B"]
    with pytest.raises(DpmsError, match="'A' and 'B' have identical settings"):
        parse_config({**base, "solvers": [{"name": "dpm3", "label": "A", "nfe": [6]}, {"name": "dpm3", "label": "B"}]})


def test_a_change_to_the_numerical_code_recomputes_cells_instead_of_resuming_them(tmp_path, monkeypatch):
    from dpms.bench import cells

    config = write_config(tmp_path, nfe=[6])
    out = tmp_path / "out"
    first = bench(config, out)
    assert bench(config, out).computed == []
    monkeypatch.setattr(cells, "numerics_fingerprint", lambda: "another-solver-code")
    again = bench(config, out)
    assert len(again.computed) == len(first.computed) > 0 and not set(again.computed) & set(first.computed)
    covered = {p.relative_to(cells.PACKAGE.parent).as_posix() for p in cells.numerics_files()}
    assert {"dpms/sampler/singlestep.py", "dpms/sampler/multistep.py", "dpms/schedule.py", "dpms/model_wrapper.py",
            "dpms/models/ddpm.py", "dpms/evaluation/frechet.py", "dpms/images.py", "dpms/bench/runner.py",
            "checkpoints/registry.yaml"} <= covered
    assert not covered & {"dpms/cli.py", "dpms/bench/report.py", "dpms/models/download.py"}


def test_rerun_shows_the_current_labels_and_published_numbers_without_recomputing(tmp_path):
    out = tmp_path / "out"
    first = bench(write_config(tmp_path, nfe=[10], confidence="paper", solvers=[{"name": "dpm3", "label": "A", "paper": {10: 0.5}}]), out)
    renamed = write_config(tmp_path, nfe=[10], confidence="secondary-high", solvers=[{"name": "dpm3", "label": "B", "paper": {10: 0.7}}])
    second = bench(renamed, out)
    assert second.computed == [] and fids(second) == fids(first)
    fid = first.records[0]["fid"]
    for cell in (json.loads((out / "results.json").read_text())["cells"][0], *(json.loads(p.read_text()) for p in (out / "cells").glob("*.json"))):
        assert (cell["label"], cell["paper"], cell["confidence"]) == ("B", 0.7, "secondary-high")
        assert cell["delta"] == pytest.approx(fid - 0.7) and cell["finished_at"] == first.records[0]["finished_at"]
    row = next(line for line in (out / "results.md").read_text().splitlines() if line.startswith("| B |"))
    assert f"({0.7:.2f}, {fid - 0.7:+.2f})" in row and "| A |" not in (out / "results.md").read_text()


def test_kill_9_loses_at_most_the_running_cell(tmp_path):
    config = write_config(tmp_path, num=2000, batch=100, solvers=["ddim"], nfe=[40, 30, 20, 10])
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "dpms", "bench", "--config", str(config), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=REPO)
    try:
        deadline = time.time() + 120
        while not list((out / "cells").glob("*.json")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    survived = {p.name: p.read_text() for p in (out / "cells").glob("*.json")}
    assert 1 <= len(survived) < 4, "the first cell must finish and the kill must interrupt the run"
    for text in survived.values():
        assert json.loads(text)["num"] == 2000  # complete files only
    resumed = bench(config, out)
    assert len(resumed.computed) == 4 - len(survived)
    assert {p.name: p.read_text() for p in (out / "cells").glob("*.json") if p.name in survived} == survived
    uninterrupted = bench(config, tmp_path / "whole")
    assert fids(resumed) == pytest.approx(fids(uninterrupted), rel=1e-12)


# ------------------------------------------------------------------------------ processes
def test_torchrun_with_two_processes_gives_the_numbers_of_one(tmp_path):
    config = write_config(tmp_path, solvers=["ddim", "ddpm", "dpm23"], nfe=[10])
    single = bench(config, tmp_path / "one")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "dpms", "--", "bench", "--config", str(config), "--num", "96", "--out", str(tmp_path / "two")]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    two = {c["key"]: c for c in json.loads((tmp_path / "two" / "results.json").read_text())["cells"]}
    assert two.keys() == fids(single).keys()
    for key, value in fids(single).items():
        assert two[key]["world_size"] == 2 and two[key]["num"] == 96
        assert two[key]["fid"] == pytest.approx(value, rel=1e-9)


# ------------------------------------------------------------------------------ --check
def test_check_passes_on_itself_and_fails_when_a_cell_moved_or_is_missing(tmp_path, capsys):
    config = write_config(tmp_path)
    out = tmp_path / "out"
    args = ["bench", "--config", str(config), "--out", str(out)]
    assert main(args) == 0
    assert main(args + ["--check", str(out / "results.json")]) == 0
    assert "check passed: 4 cells compared" in capsys.readouterr().out
    moved = json.loads((out / "results.json").read_text())
    target = next(c for c in moved["cells"] if c["label"] == "dpm3" and c["nfe"] == 10)
    target["fid"] += 0.01
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps(moved))
    assert main(args + ["--check", str(baseline), "--tol", "0.009"]) == 1
    printed = capsys.readouterr().out
    assert "moved dpm3@10" in printed and "1 moved, 0 missing" in printed
    assert main(args + ["--check", str(baseline), "--tol", "0.011"]) == 0
    assert main(args + ["--check", str(baseline), "--rel-tol", "10"]) == 0
    reduced = ["bench", "--config", str(config), "--out", str(tmp_path / "reduced")]  # a reduced grid keeps out/'s report
    assert main(reduced + ["--solvers", "ddim", "--check", str(out / "results.json")]) == 1
    assert "missing dpm3@6" in capsys.readouterr().out


def _checked(ours: dict, base: dict):
    cell = {"label": "dpm3", "column": 10, "adaptive": False, "metric": "FD (exact features)", "num": 64}
    return compare([{**cell, **ours}], [{**cell, **base}], tol=0.1)


@pytest.mark.parametrize("ours,base,moved", [
    ({"fid": float("nan")}, {"fid": 1.0}, True),  # NaN compares false with everything: must not pass
    ({"fid": 1.0}, {"fid": float("nan")}, True),
    ({"fid": float("nan")}, {"fid": float("nan")}, False),
    ({"fid": float("inf")}, {"fid": float("inf")}, False),
    ({"fid": float("inf")}, {"fid": -float("inf")}, True),
    ({"fid": float("nan")}, {"fid": float("inf")}, True),
    ({"fid": 1.05}, {"fid": 1.0}, False),
    ({"fid": 1.0}, {"fid": 1.0, "ode_error": 0.2}, True),  # the baseline measured it, this run did not
    ({"fid": 1.0, "ode_error": None}, {"fid": 1.0, "ode_error": 0.2}, True),
    ({"fid": 1.0, "ode_error": 0.2}, {"fid": 1.0}, False),  # nothing to guard in the baseline
])
def test_check_treats_non_finite_and_missing_values_as_moved(ours, base, moved):
    result = _checked(ours, base)
    assert result.compared == 1 and bool(result.moved) == moved and result.ok == (not moved)


def test_check_prints_non_finite_and_missing_values(capsys):
    from rich.console import Console

    result = _checked({"fid": float("nan")}, {"fid": 1.0, "ode_error": 0.2})
    print_check(result, Path("base.json"), 0.1, 0.0, Console(width=200))
    printed = capsys.readouterr().out
    assert "moved dpm3@10: nan vs baseline 1 non-finite value" in printed
    assert "moved dpm3@10 ode_error: none vs baseline 0.2 missing from this run" in printed
    assert "check failed" in printed and "2 moved" in printed


def test_ci_guard_exact_model_matches_the_recorded_baseline(tmp_path, capsys):
    """Every solver's numbers on the exact model, against tests/data/bench_gmm_baseline.json: a change
    in any solver's output (FD or error against the exact ODE solution) fails here. The baseline is the
    results.json of `dpms bench --config configs/gmm.yaml --num 256 --batch 100 --nfe 6,12,20 --out DIR`."""
    baseline = REPO / "tests" / "data" / "bench_gmm_baseline.json"
    code = main(["bench", "--config", str(REPO / "configs" / "gmm.yaml"), "--num", "256", "--batch", "100",
                 "--nfe", "6,12,20", "--out", str(tmp_path), "--check", str(baseline), "--rel-tol", "1e-6"])
    printed = capsys.readouterr().out
    assert code == 0, printed[-3000:]
    assert "check passed: 66 cells compared" in printed
    moved = json.loads(baseline.read_text())
    next(c for c in moved["cells"] if c["label"] == "dpm3" and c["nfe"] == 12)["ode_error"] *= 1.001
    (tmp_path / "moved.json").write_text(json.dumps(moved))
    code = main(["bench", "--config", str(REPO / "configs" / "gmm.yaml"), "--num", "256", "--nfe", "6,12,20",
                 "--out", str(tmp_path), "--check", str(tmp_path / "moved.json"), "--rel-tol", "1e-6"])
    assert code == 1 and "moved dpm3@12 ode_error" in capsys.readouterr().out


# ------------------------------------------------------------------------------ the configs
def test_every_config_parses_and_runs_existing_presets_solvers_and_nfes():
    names = {p.stem for p in CONFIGS}
    assert {"digits", "gmm", "dpm_solver_cifar10_continuous", "dpm_solver_table1_rk", "dpmpp_imagenet256_guided",
            "dpm_solver_v3_cifar10_reruns", "pndm_cifar10", "pndm_celeba64"} <= names
    for path in CONFIGS:
        config = load_config(path)
        schedule, _, _ = _model_info(config)  # unknown presets raise
        cells, skipped = plan_cells(config, schedule)  # unknown solvers, bad options, no runnable cell raise
        if path.stem not in ("digits", "gmm"):  # paper grids: every cell must be runnable
            assert skipped == [], (path.name, skipped)
        published = [entry for entry in config.solvers if entry.paper]
        assert (config.confidence == "none") == (not published), path.name  # numbers carry a confidence
        for entry in published:
            assert set(entry.paper) <= set(entry.columns or config.columns) or dpms.solvers()[entry.name].adaptive, (path.name, entry.label)
        if config.features == "inception":
            assert config.num == (10000 if path.stem == "dpmpp_imagenet256_guided" else 50000), path.name
            assert config.reference_stats.endswith(".npz"), path.name


def test_every_paper_config_states_its_protocol_its_assumptions_and_grid_deviations():
    for path in CONFIGS:
        config = load_config(path)
        if not any(entry.paper for entry in config.solvers):  # not a paper config (digits, its ablation, gmm)
            continue
        header = "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))
        for item in ("Model:", "Reference statistics:", "t_end", "time map", "grid"):
            assert item in header, (path.name, item)
        shown = " ".join([config.description, config.notes, *(s.note or "" for s in config.solvers)])  # what reports print
        assert "assumption" in shown.lower(), path.name  # each makes a protocol choice the reference does not state
        assert "50k samples" not in config.description, path.name  # `num` says it, and --num changes it
        discrete = [s for s in config.solvers if (s.skip or config.skip) in ("discrete_uniform", "discrete_quadratic") and not get_solver(s.name).adaptive]
        if any("protocol" not in s.options for s in discrete):  # dpms's own discrete grid: say how it differs from the codebases'
            assert "DEVIATION" in header and "index 999" in config.description and "ᾱ = 1" in config.description, path.name
        for s in discrete:  # a codebase's own loop: the header names it
            assert "protocol" not in s.options or f"protocol {s.options['protocol']}" in header, (path.name, s.label)


def test_ddims_own_number_sits_on_ddims_quadratic_index_grid():
    for path in CONFIGS:
        config = load_config(path)
        for entry in config.solvers:
            if 13.36 in entry.paper.values():
                assert (entry.name, entry.skip or config.skip, entry.paper) == ("ddim", "discrete_quadratic", {10: 13.36}), path.name
    imagenet64 = load_config(REPO / "configs" / "dpm_solver_imagenet64.yaml")
    cells, _ = plan_cells(imagenet64, _model_info(imagenet64)[0])
    assert {round(c.t_end, 7) for c in cells} == {round(1 / 3984, 7)} and "2.51e-4" in imagenet64.description
    assert load_config(REPO / "configs" / "dpm_solver_cifar10_adaptive.yaml").confidence == "secondary"


def test_edm_cifar10_config_carries_every_published_row_of_issues_13_and_15():
    """The published EDM CIFAR-10 (uncond, VP) rows are cells with their paper numbers, each on the grid its
    source used; EDM's own sampler is the heun + karras + denoise_to_zero cell at NFE 35."""
    config = load_config(REPO / "configs" / "edm_cifar10_uncond_vp.yaml")
    cells, skipped = plan_cells(config, _model_info(config)[0])
    assert skipped == []
    paper = {(c.spec.name, c.skip, c.nfe): c.paper for c in cells if c.paper is not None}
    expected = {("dpmpp3m", "logSNR"): {5: 24.54, 6: 11.85, 8: 4.36, 10: 2.91},
                ("unipc3", "logSNR"): {5: 23.52, 6: 11.10, 8: 3.86, 10: 2.85, 12: 2.38, 15: 2.08, 20: 2.01, 25: 2.00},
                ("heun", "karras"): {5: 320.80, 6: 103.86, 8: 39.66, 10: 16.57, 12: 7.59, 15: 4.76, 20: 2.51, 25: 2.12, 35: 1.97},
                ("ipndm", "karras"): {5: 13.59, 6: 7.05, 8: 3.69, 10: 2.77},
                ("ddim", "karras"): {5: 49.66, 6: 35.62, 8: 22.32, 10: 15.69},
                ("deis3", "karras"): {5: 14.39, 6: 9.40, 8: 5.55, 10: 4.09}}
    assert paper == {(name, skip, nfe): fid for (name, skip), row in expected.items() for nfe, fid in row.items()}
    edm_sampler = next(c for c in cells if c.nfe == 35)
    assert (edm_sampler.spec.name, edm_sampler.skip, edm_sampler.entry.options) == ("heun", "karras", {"denoise_to_zero": True})
    assert all(bool(c.entry.options.get("denoise_to_zero")) == (c.nfe % 2 == 1) for c in cells if c.spec.name == "heun")
    assert {c.t_end for c in cells} == {0.002}


def test_default_digits_config_covers_every_solver_and_nfe():
    config = load_config(REPO / "configs" / "digits.yaml")
    assert [s.name for s in config.solvers] == dpms.sampler.default_grid()
    assert {"ddim", "pndm", "dpm3", "dpm23", "dpmpp3m", "ddpm"} <= set(dpms.sampler.default_grid())
    assert config.columns == [5, 6, 8, 10, 12, 15, 20, 50] and config.features == "digits"
    assert config.sample_grid == {"nfe": 10, "count": 100} and config.out == "results/digits"


def test_continuous_cifar10_t_end_rule_and_published_numbers():
    config = load_config(REPO / "configs" / "dpm_solver_cifar10_continuous.yaml")
    cells, _ = plan_cells(config, _model_info(config)[0])
    assert {c.nfe: c.t_end for c in cells} == {10: 1e-3, 12: 1e-3, 15: 1e-3, 20: 1e-4}
    assert {c.nfe: c.paper for c in cells} == {10: 4.70, 12: 3.75, 15: 3.24, 20: 2.87}
    pndm = load_config(REPO / "configs" / "pndm_cifar10.yaml")
    cells, _ = plan_cells(pndm, _model_info(pndm)[0])
    nfe = {(c.label, c.column): c.nfe for c in cells}
    assert nfe[("DDIM", 50)] == 50 and nfe[("S-PNDM", 50)] == 51 and nfe[("F-PNDM", 50)] == 59 and nfe[("FON", 50)] == 59
    assert {column for label, column in nfe if label == "DDIM (quadratic)"} == {10, 20, 50, 100}
    assert all(c.entry.options["protocol"] == ("ddim-code" if c.label == "DDIM (quadratic)" else "pndm-code") for c in cells if c.spec.name != "rk45")


def test_model_override_switches_to_the_exact_metric(tmp_path, capsys):
    code = main(["bench", "--config", str(REPO / "configs" / "digits.yaml"), "--model", "gmm", "--solvers", "ddim,dpm3",
                 "--nfe", "10", "--num", "64", "--out", str(tmp_path)])
    assert code == 0
    document = json.loads((tmp_path / "results.json").read_text())
    assert [c["metric"] for c in document["cells"]] == ["FD (exact features)"] * 2
    assert all("ode_error" in c and c["paper"] is None for c in document["cells"])


def test_model_override_is_another_experiment_with_its_own_folder_and_description(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the config's out, results/dpm_solver_cifar10_continuous, is relative
    code = main(["bench", "--config", str(REPO / "configs" / "dpm_solver_cifar10_continuous.yaml"), "--model", "gmm",
                 "--nfe", "10", "--num", "32"])
    assert code == 0
    assert not (tmp_path / "results" / "dpm_solver_cifar10_continuous").exists()
    out = tmp_path / "results" / "dpm_solver_cifar10_continuous-gmm"
    document = json.loads((out / "results.json").read_text())
    assert document["config"]["name"] == "dpm_solver_cifar10_continuous-gmm" and document["config"]["source"] == ""
    md = (out / "results.md").read_text()
    assert md.startswith("# dpm_solver_cifar10_continuous-gmm: FD (exact features) vs NFE")
    assert "FID" not in md and "50k" not in md and "run on model gmm (--model)" in md


# ------------------------------------------------------------------------------ errors before sampling
def _stats_file(tmp_path: Path, dims: int) -> Path:
    path = tmp_path / "stats.npz"
    np.savez(path, mu=np.zeros(dims), sigma=np.eye(dims))
    return path


@pytest.mark.parametrize(
    "changes,flags,message",
    [
        ({"nfes": [10]}, [], "unknown key 'nfes' in the top level; valid keys:"),
        ({"model": "nosuch"}, [], "unknown model preset 'nosuch'; valid presets:"),
        ({"solvers": ["dpm9"]}, [], "unknown solver 'dpm9'; valid solvers:"),
        ({"solvers": [{"name": "dpm3", "rtol": 0.1}]}, [], "solver 'dpm3' has no option 'rtol'"),
        ({"solvers": ["rk3"], "nfe": [5, 7]}, [], "no solver can run any of nfe [5, 7]"),
        ({"model": "digits", "features": "digits", "reference_stats": "/nonexistent/stats.npz"}, [],
         "reference statistics /nonexistent/stats.npz not found"),
        ({"model": "digits", "features": "digits"}, ["--checkpoint", "/nonexistent/digits.pt"],
         "checkpoint /nonexistent/digits.pt for digits does not exist"),
        ({"model": "cifar10-ddpm", "features": "inception", "reference_stats": "STATS"},
         ["--inception-weights", "/nonexistent/pt_inception.pth"], "FID Inception weights"),
        ({"features": "digits"}, [], "the exact model gmm makes vectors, not images; use features: exact"),
        ({"solvers": [{"name": "ddim", "label": "A"}, {"name": "ddim", "label": "B"}]}, [],
         "solver entries 'A' and 'B' have identical settings; remove one or change its settings"),
        ({"solvers": [{"name": "dpm3", "label": "A"}, {"name": "dpm3", "label": "B", "skip": "logSNR"}]}, [],
         "solver entries 'A' and 'B' give the same cell (dpm3 NFE 6, skip logSNR, t_end 0.001)"),  # logSNR: the default
        ({}, ["--save-images"], "--save-images needs an image model, but the exact model gmm makes vectors; drop --save-images"),
        ({"solvers": [{"name": "dpm3", "nfe": [6, 12]}]}, [], "solvers[0].nfe has [12], which the config's nfe [6, 10] lacks"),
        ({"solvers": [{"name": "dpm3", "steps": [6]}]}, [], "solvers[0] lists columns by steps but the config's columns are nfe; rename solvers[0].steps to nfe"),
        ({"solvers": [{"name": "dpm3", "nfe": [6], "paper": {10: 1.0}}]}, [], "solvers[0].paper gives columns [10] that solvers[0].nfe leaves out"),
        ({"num": 1}, [], "num must be an integer ≥ 2 (a covariance needs at least 2 samples), got 1"),
        ({}, ["--num", "1"], "--num must be an integer ≥ 2 (a covariance needs at least 2 samples), got 1"),
        ({}, ["--seed", str(2**40)], "--seed must be at most 1099511627775"),
    ],
)
def test_errors_are_one_line_and_come_before_sampling(tmp_path, capsys, changes, flags, message):
    if changes.get("reference_stats") == "STATS":
        changes = {**changes, "reference_stats": str(_stats_file(tmp_path, 2048))}
    config = write_config(tmp_path, **changes)
    out = tmp_path / "out"
    code = main(["bench", "--config", str(config), "--out", str(out), *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()  # nothing was sampled or written


def test_missing_reference_stats_name_the_absolute_paths_looked_at_and_how_to_make_the_file(tmp_path, capsys, monkeypatch):
    (tmp_path / "configs").mkdir()
    (tmp_path / "work").mkdir()
    config = write_config(tmp_path / "configs", model="cifar10-ddpm", features="inception", reference_stats="stats/ref.npz")
    monkeypatch.chdir(tmp_path / "work")
    assert main(["bench", "--config", str(config), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: reference statistics stats/ref.npz not found (looked at {tmp_path / 'work' / 'stats' / 'ref.npz'} and "
                   f"{tmp_path / 'stats' / 'ref.npz'}); create it with `dpms stats TRAIN_IMAGES_DIR --out {tmp_path / 'stats' / 'ref.npz'}` "
                   "(pytorch-fid's statistics of the training images) or download the published file, or pass --ref-stats PATH\n")
    assert not (tmp_path / "out").exists()


def test_a_baseline_that_is_not_a_results_file_fails_before_sampling(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    out = tmp_path / "out"
    assert main(["bench", "--config", str(write_config(tmp_path)), "--out", str(out), "--check", str(bad)]) == 2
    assert "is not a dpms bench results.json" in capsys.readouterr().err and not out.exists()


# ------------------------------------------------------------------------------ progress
def test_progress_shows_the_cell_its_images_per_second_and_eta(tmp_path):
    console = Console(record=True, force_terminal=True, width=160)
    run_benchmark(load_config(write_config(tmp_path, solvers=["ddim", "dpm3"], nfe=[10])), tmp_path / "out", console=console)
    text = console.export_text()  # every frame drawn, the last one in full
    assert "\nddim NFE 10 " in text and re.search(r"cells +\S+ 2/2 ", text), text[-2000:]
    assert re.search(r"\ndpm3 NFE 10 \S+ 96/96 \d+ img/s ETA \d+:\d\d:\d\d\n", text), text[-2000:]


# ------------------------------------------------------------------------------ the digits model
needs_digits = pytest.mark.skipif(not (REPO / "checkpoints" / "digits" / "digits_ddpm.pt").is_file(), reason="digits model not trained yet")


def saved_images(out: Path, record: dict) -> list[Path]:
    return sorted((out / "images" / record["key"]).glob("*.png"))


@needs_digits
def test_save_images_writes_every_measured_sample_as_an_8_bit_png(tmp_path):
    config = load_config(write_config(tmp_path, model="digits", features="digits", num=12, batch=5, nfe=[5], solvers=["ddim"]))
    record = run_benchmark(config, tmp_path / "out", save_images=True).records[0]
    files = saved_images(tmp_path / "out", record)
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(12)]
    for f in files:
        with Image.open(f) as image:
            assert image.mode == "L" and image.size == (8, 8) and np.asarray(image).dtype == np.uint8
    # The files are the measured samples: their digit features give the cell's number.
    stats = compute_stats(files[0].parent, digits_features("cpu"), batch_size=5)
    reference = load_stats(DIGITS_DIR / STATS_FILE)
    assert record["fid"] == pytest.approx(frechet_distance(stats.mu, stats.sigma, reference.mu, reference.sigma), rel=1e-6)  # float32 features


@needs_digits
@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")
def test_inception_bench_fid_equals_pytorch_fids_on_the_saved_images(tmp_path, monkeypatch):
    weights = tmp_path / FID_WEIGHTS_FILE
    # A random-weight network of the FID architecture stands in for the FID weights (no download).
    monkeypatch.setattr(dpms_inception, "FID_WEIGHTS_SHA256", save_random_fid_inception(weights))
    reference_mu = np.random.default_rng(0).normal(size=2048)
    np.savez(tmp_path / "ref.npz", mu=reference_mu, sigma=np.zeros((2048, 2048)))  # a point mass: a cheap 2048-d sqrtm
    config = write_config(tmp_path, model="digits", features="inception", reference_stats=str(tmp_path / "ref.npz"),
                          inception_weights=str(weights), num=10, batch=5, nfe=[5], solvers=["ddim"])
    record = run_benchmark(load_config(config), tmp_path / "out", save_images=True).records[0]
    # pytorch-fid's own pipeline on the PNGs the bench wrote, with the same weights in place of its download.
    monkeypatch.setattr(pf_inception, "load_state_dict_from_url", lambda url, progress=True: torch.load(weights, weights_only=True))
    oracle = pf_inception.InceptionV3([pf_inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
    files = saved_images(tmp_path / "out", record)
    activations = fid_score.get_activations(files, oracle, batch_size=5, dims=2048, device="cpu", num_workers=0)
    with warnings.catch_warnings():  # pytorch-fid passes scipy's deprecated `disp`
        warnings.simplefilter("ignore")
        expected = fid_score.calculate_frechet_distance(activations.mean(0), np.cov(activations, rowvar=False), reference_mu, np.zeros((2048, 2048)))
    assert len(files) == 10 and record["metric"] == "FID (Inception)" and np.abs(activations).mean() > 1e-3
    assert record["fid"] == pytest.approx(float(expected), rel=1e-9)


@needs_digits
def test_digits_cells_write_sample_grids_and_use_digit_features(tmp_path):
    config = load_config(REPO / "configs" / "digits.yaml")
    config = apply_overrides(config, Overrides(solvers=["ddim", "rk3"], nfe=[10, 12], num=160))
    result = run_benchmark(config, tmp_path)
    assert {(r["label"], r["nfe"]) for r in result.records} == {("ddim", 10), ("ddim", 12), ("rk3", 12)}
    assert all(r["metric"] == "FD (digits features)" and r["fid"] > 0 for r in result.records)
    # a grid per solver at NFE 10, or the next NFE it can run
    assert sorted(p.name for p in tmp_path.glob("samples_*.png")) == ["samples_ddim_nfe10.png", "samples_rk3_nfe12.png"]


def test_ci_guard_digits_reduced_grid_matches_the_committed_table(tmp_path, capsys):
    """A reduced grid of the built-in benchmark (same samples per cell) against the committed
    results/digits/results.json: the shipped model, the digit features and the solvers must still
    give the published table's numbers."""
    baseline = REPO / "results" / "digits" / "results.json"
    code = main(["bench", "--solvers", "ddim,dpm2,dpm3m,dpmpp2m", "--nfe", "10,20", "--out", str(tmp_path),
                 "--check", str(baseline), "--check-subset", "--rel-tol", "1e-3"])
    printed = capsys.readouterr().out
    assert code == 0, printed[-3000:]
    assert "check passed: 8 cells compared" in printed
    # a different number of samples is never compared as if it were the same cell
    code = main(["bench", "--solvers", "ddim", "--nfe", "10", "--num", "50", "--out", str(tmp_path / "small"),
                 "--check", str(baseline), "--check-subset"])
    assert code == 1 and "50 samples vs 500" in capsys.readouterr().out


def test_committed_seed_study_is_what_its_cells_give():
    # results/digits_seeds/summary.json is written by benchmarks/digits_seeds.py from the seed-0 table and the
    # seed1/, seed2/ runs beside it; recomputed here in both metrics (a stale or hand-edited summary fails)
    import importlib.util

    spec = importlib.util.spec_from_file_location("digits_seeds", REPO / "benchmarks" / "digits_seeds.py")
    seeds = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(seeds)
    folder = REPO / "results" / "digits_seeds"
    summary = json.loads((folder / "summary.json").read_text())
    assert set(summary) == {"fid", "ode_error"}
    results = {0: REPO / "results" / "digits" / "results.json"}
    results.update({int(p.name[4:]): p / "results.json" for p in folder.glob("seed*")})
    for key, part in summary.items():
        columns = list(part["pair_order"])
        runs = {seed: seeds.cells_by_label(path, set(columns), key) for seed, path in results.items()}
        assert json.loads(json.dumps(seeds.summarise(runs, columns))) == part
        assert seeds.markdown(part, columns, seeds.METRICS[key], "##") in (folder / "summary.md").read_text()
