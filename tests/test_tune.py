"""Tuned time grids (dpms.sampler.tuning, dpms tune-grid, --timesteps): the DP, the cost matrix, DMN, the file."""

import itertools
import json

import numpy as np
import pytest
import torch

import dpms
from dpms.cli import main
from dpms.models import GaussianMixture
from dpms.sampler import ode_reference
from dpms.sampler.tuning import (TunedGrid, check_tunable, dmn, dmn_objective, dp_path, gits, gits_cost_matrix, path_cost,
                                 refine_path, teacher_trajectory, tunable_solvers)


@pytest.fixture(scope="module")
def gmm():
    return GaussianMixture.default()


def brute_force(cost, steps, coeff):
    n = cost.shape[0] - 1
    best = (np.inf, None)
    for inner in itertools.combinations(range(1, n), steps - 1):
        path = [0, *inner, n]
        best = min(best, (path_cost(cost, path, coeff), path))
    return best


@pytest.mark.parametrize("steps,coeff", [(1, 1.0), (2, 1.15), (3, 1.0), (4, 1.15), (5, 0.8), (7, 1.5)])
def test_dp_finds_the_minimum_cost_path_with_exactly_the_requested_steps(steps, coeff):
    rng = np.random.default_rng(steps)
    n = 9
    cost = np.triu(rng.uniform(0.1, 2.0, (n + 1, n + 1)), 1)
    cost[np.tril_indices(n + 1)] = np.inf
    path, value = dp_path(cost, steps, coeff)
    expected, best_path = brute_force(cost, steps, coeff)
    assert len(path) == steps + 1 and path[0] == 0 and path[-1] == n and all(b > a for a, b in zip(path, path[1:]))
    assert value == pytest.approx(expected, rel=1e-12) and path_cost(cost, path, coeff) == pytest.approx(expected, rel=1e-12)


def test_dp_refuses_more_steps_than_candidates():
    cost = np.full((4, 4), np.inf)
    with pytest.raises(dpms.DpmsError, match="cannot choose 4 steps from a candidate grid of 3"):
        dp_path(cost, 4)


def test_cost_matrix_is_the_solvers_one_step_error_from_the_teacher_and_reuses_its_eps(gmm):
    schedule = gmm.schedule
    x = gmm.prior(16, torch.Generator().manual_seed(0))
    ts = dpms.sampler.make_grid(schedule, "logSNR", 6, 1.0, 1e-3, torch.float64)
    states = teacher_trajectory(gmm, schedule, x, ts, "dpm3", 6)
    # the teacher (36 third-order steps here) is close to the DOP853 solution, far closer than any one step
    assert float((states[-1] - ode_reference(gmm, schedule, x)).norm(dim=1).max()) < 2e-3
    eps = [gmm(s, t.expand(16)) for s, t in zip(states[:-1], ts[:-1])]
    calls = []

    def counting(x, t):
        calls.append(1)
        return gmm(x, t)

    cost = gits_cost_matrix(dpms.sampler.get_solver("ddim"), counting, schedule, ts, states, eps)
    assert not calls  # one-step solvers need no call beyond the teacher's ε
    i, j = 1, 4
    manual = dpms.sample(gmm, schedule, states[i], solver="ddim", nfe=1, timesteps=ts[[i, j]])
    assert cost[i, j] == pytest.approx(float((manual - states[j]).norm(dim=1).mean()), rel=1e-12)
    assert np.isinf(cost[j, i]) and np.isinf(cost[2, 2])
    assert cost[0, 6] > cost[0, 1]  # one long step is worse than one short one


@pytest.mark.parametrize("solver", ["dpmpp3m", "ipndm", "unipc3", "deis3"])
def test_one_step_costs_are_ddims_for_every_tunable_solver(solver, gmm):
    # GITS costs an edge by the solver's own first (history-free) step, which for each of these is DDIM's:
    # so the matrix, hence the DP's grid, equals DDIM's on the same candidates (see dpms.sampler.tuning)
    schedule = gmm.schedule
    x = gmm.prior(8, torch.Generator().manual_seed(3))
    ts = dpms.sampler.make_grid(schedule, "time_uniform", 5, 1.0, 1e-3, torch.float64)
    states = teacher_trajectory(gmm, schedule, x, ts, "dpm3", 2)
    eps = [gmm(s, t.expand(8)) for s, t in zip(states[:-1], ts[:-1])]
    ddim = gits_cost_matrix(dpms.sampler.get_solver("ddim"), gmm, schedule, ts, states, eps)
    mine = gits_cost_matrix(dpms.sampler.get_solver(solver), gmm, schedule, ts, states, eps)
    finite = np.isfinite(ddim)
    assert (np.isfinite(mine) == finite).all() and np.allclose(mine[finite], ddim[finite], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("solver", ["ipndm", "unipc3"])
def test_refined_gits_grid_of_ipndm_and_unipc_beats_their_default_grid_on_held_out_x_T(solver, gmm):
    schedule = gmm.schedule
    tune_x = gmm.prior(48, torch.Generator().manual_seed(0))
    test_x = gmm.prior(48, torch.Generator().manual_seed(1))
    ref = ode_reference(gmm, schedule, test_x)
    result = gits(gmm, schedule, tune_x, solver, 5, candidates=30, teacher_substeps=2, refine=1)
    assert result.teacher_error["refined"] <= result.teacher_error["dp"]

    def error(**kw):
        return float((dpms.sample(gmm, schedule, test_x, solver=solver, nfe=5, **kw) - ref).norm(dim=1).mean())

    assert error(timesteps=result.timesteps) < 0.85 * error()


def test_gits_refuses_an_unknown_solver_option_before_any_call(gmm):
    calls = []
    with pytest.raises(dpms.DpmsError, match="has no option 'order'"):
        gits(lambda x, t: calls.append(1), gmm.schedule, gmm.prior(2, torch.Generator().manual_seed(0)), "unipc3", 5, options={"order": 2})
    assert not calls


def test_gits_grid_beats_the_default_grid_on_held_out_x_T(gmm):
    schedule = gmm.schedule
    tune_x = gmm.prior(64, torch.Generator().manual_seed(0))
    test_x = gmm.prior(64, torch.Generator().manual_seed(1))
    ref = ode_reference(gmm, schedule, test_x)
    result = gits(gmm, schedule, tune_x, "dpm2m", 5, candidates=40)
    assert len(result.timesteps) == 6 and result.timesteps[0] == 1.0 and result.timesteps[-1] == schedule.t_end
    assert bool((result.timesteps[1:] < result.timesteps[:-1]).all())

    def error(**kw):
        return float((dpms.sample(gmm, schedule, test_x, solver="dpm2m", nfe=5, **kw) - ref).norm(dim=1).mean())

    default, tuned = error(), error(timesteps=result.timesteps)
    assert tuned < 0.85 * default
    refined = gits(gmm, schedule, tune_x, "dpm2m", 5, candidates=40, refine=2)
    assert refined.teacher_error["refined"] <= refined.teacher_error["dp"]
    assert error(timesteps=refined.timesteps) < tuned


def test_refine_path_descends_to_the_minimum_of_a_separable_score():
    target = [0, 3, 7, 12, 20]
    path, value = refine_path(lambda p: sum((a - b) ** 2 for a, b in zip(p, target)), [0, 1, 2, 3, 20], 10)
    assert path == target and value == 0


def test_dmn_lowers_its_objective_from_the_uniform_lambda_grid(gmm):
    schedule = gmm.schedule
    result = dmn(schedule, "dpmpp3m", 5)
    assert result.cost < result.initial_cost
    assert result.timesteps[0] == schedule.T and result.timesteps[-1] == schedule.t_end
    assert bool((np.diff(result.lambdas) > 0).all())
    assert torch.allclose(schedule.lambda_(result.timesteps[1:-1]), torch.from_numpy(result.lambdas[1:-1]), atol=1e-8)
    uniform = np.linspace(result.lambdas[0], result.lambdas[-1], 6)
    assert dmn_objective(uniform, result.trunc) == pytest.approx(result.initial_cost)


def test_dmn_objective_first_order_terms():
    # two steps: both are first order, |e^{λ1} − e^{λ0}|·σ0²/α0 + |e^{λ2} − e^{λ1}|·σ1²/α1
    lam = np.array([-2.0, 0.5, 3.0])
    alpha, sigma = 1 / np.sqrt(1 + np.exp(-2 * lam)), 1 / np.sqrt(1 + np.exp(2 * lam))
    expected = sum(abs(np.exp(lam[k + 1]) - np.exp(lam[k])) * sigma[k] ** 2 / alpha[k] for k in range(2))
    assert dmn_objective(lam) == pytest.approx(expected)


def test_tunable_solvers_and_refusals():
    names = tunable_solvers()
    assert {"ddim", "dpm2m", "dpm3m", "dpmpp2m", "dpmpp3m", "ipndm", "ipndm-v", "unipc1", "unipc2", "unipc3", "deis1", "deis2", "deis3"} <= set(names)
    # more than one call per step (heun, rk*), an extra call (spndm), a per-step plan (dpm2/dpm3, pndm), adaptive, stochastic
    assert not {"dpm3", "dpmpp2s", "heun", "rk2", "spndm", "pndm", "rk45", "dpm23", "ddpm", "euler-sde"} & set(names)
    for name in names:  # read off the plan: a run of NFE N is a grid of N + 1 times
        spec = dpms.sampler.get_solver(name)
        assert len(dpms.sampler.make_grid(GaussianMixture.default().schedule, "logSNR", 5, 1.0, 1e-3, torch.float64)) == 6
        assert spec.plan.nfe(torch.zeros(6), None) == 5 and not spec.stochastic
    with pytest.raises(dpms.DpmsError, match="cannot be tuned"):
        check_tunable("dpm3", 6, "gits")
    with pytest.raises(dpms.DpmsError, match="unknown --method 'ays'"):
        check_tunable("ddim", 6, "ays")
    with pytest.raises(dpms.DpmsError, match="NFE ≥ 2"):
        check_tunable("ddim", 1, "gits")


def test_grid_file_round_trip_and_mismatch(tmp_path):
    grid = dpms.tune_grid("gmm", "dpm2m", 4, method="dmn")
    path = tmp_path / "g.json"
    grid.write(path)
    back = TunedGrid.read(path)
    assert back.timesteps == grid.timesteps and back.method == "dmn" and back.settings["trunc"] == 3
    back.check_matches("gmm", "dpm2m", 4)
    for model, solver, nfe, what in (("digits", "dpm2m", 4, "model"), ("gmm", "ddim", 4, "solver"), ("gmm", "dpm2m", 5, "NFE")):
        with pytest.raises(dpms.DpmsError, match=f"tuned for {what}"):
            back.check_matches(model, solver, nfe)
    with pytest.raises(dpms.DpmsError, match="exists"):
        grid.write(path)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**json.loads(path.read_text()), "timesteps": [1.0, 0.5, 0.7, 0.1, 0.001]}))
    with pytest.raises(dpms.DpmsError, match="strictly decreasing"):
        TunedGrid.read(bad)
    bad.write_text("{}")
    with pytest.raises(dpms.DpmsError, match="not a dpms tuned-grid file"):
        TunedGrid.read(bad)


def run(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_tune_grid_then_sample_with_it(tmp_path, capsys):
    grid = tmp_path / "grid.json"
    code, out, err = run(["tune-grid", "--model", "gmm", "--solver", "dpmpp2m", "--nfe", "5", "--num", "32", "--candidates", "30",
                          "--out", str(grid)], capsys)
    assert code == 0, err
    data = json.loads(grid.read_text())
    assert (data["model"], data["solver"], data["nfe"], data["method"]) == ("gmm", "dpmpp2m", 5, "gits")
    assert data["settings"]["num"] == 32 and data["settings"]["coeff"] == 1.15 and data["settings"]["skip"] == "time_uniform"
    code, out, err = run(["sample", "--model", "gmm", "--solver", "dpmpp2m", "--nfe", "5", "--num", "8", "--timesteps", str(grid),
                          "--out", str(tmp_path / "s")], capsys)
    assert code == 0, err
    samples = np.load(tmp_path / "s" / "samples.npz")["samples"]
    gmm = GaussianMixture.default()
    x_T = dpms.sampler.noise.initial_noise((8,), list(range(8)), 0, dtype=torch.float64)
    expected = dpms.sample(gmm, gmm.schedule, x_T, solver="dpmpp2m", nfe=5, timesteps=data["timesteps"])
    assert np.allclose(samples, expected.numpy(), atol=1e-12)
    # a grid for another solver or NFE: one line, exit 2
    for args, message in ((["--solver", "dpm2m", "--nfe", "5"], "tuned for solver 'dpmpp2m'"),
                          (["--solver", "dpmpp2m", "--nfe", "6"], "tuned for NFE 5"),
                          (["--solver", "dpmpp2m", "--nfe", "5", "--skip", "logSNR"], "drop --skip")):
        code, _, err = run(["sample", "--model", "gmm", *args, "--timesteps", str(grid), "--out", str(tmp_path / "x")], capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    # an existing --out is not overwritten
    code, _, err = run(["tune-grid", "--solver", "ddim", "--nfe", "4", "--method", "dmn", "--out", str(grid)], capsys)
    assert code == 2 and "exists" in err


@pytest.mark.parametrize("args,message", [
    (["--solver", "dpm3"], "cannot be tuned"),
    (["--method", "ays"], "unknown --method"),
    (["--nfe", "1"], "NFE ≥ 2"),
    (["--candidates", "3"], "at least NFE = 5 candidate steps"),
    (["--teacher", "nope"], "unknown solver 'nope'"),
])
def test_cli_tune_grid_bad_input_is_one_line(args, message, tmp_path, capsys):
    code, _, err = run(["tune-grid", "--num", "4", *args, "--out", str(tmp_path / "g.json")], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def bench_config(tmp_path, solvers):
    import yaml

    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "model": {"preset": "gmm"}, "features": "exact", "ode_error": True, "num": 32,
                                    "batch": 32, "seed": 0, "nfe": [4, 5], "solvers": solvers}))
    return path


def test_bench_tunes_a_grid_once_caches_it_and_keys_cells_by_it(tmp_path, capsys):
    grid_file = tmp_path / "g5.json"
    dpms.tune_grid("gmm", "dpm2m", 5, method="dmn").write(grid_file)
    solvers = ["dpm2m",
               {"name": "dpm2m", "label": "dpm2m-gits", "grid": {"tune": "gits", "num": 16, "candidates": 20}},
               {"name": "dpm2m", "label": "dpm2m-file", "nfe": [5], "grid": {5: str(grid_file)}}]
    cfg = bench_config(tmp_path, solvers)
    out = tmp_path / "out"
    code, _, err = run(["bench", "--config", str(cfg), "--out", str(out)], capsys)
    assert code == 0, err
    records = json.loads((out / "results.json").read_text())["cells"]
    by = {(r["label"], r["nfe"]): r for r in records}
    assert len(by) == 5
    cached = sorted((out / "grids").glob("*.json"))
    assert len(cached) == 2  # one tuned grid per NFE of the gits entry
    tuned = TunedGrid.read(next(p for p in cached if "nfe5" in p.name))
    assert tuned.settings["seed"] == 1 and tuned.settings["num"] == 16  # tuned on held-out x_T (config seed 0 + 1)
    # the tuned cells ran on their grids: the same samples as dpms.sample on those times
    gmm = GaussianMixture.default()
    x_T = dpms.sampler.noise.initial_noise((8,), list(range(32)), 0, dtype=torch.float64)
    ref = ode_reference(gmm, gmm.schedule, x_T)
    for timesteps, label in ((tuned.timesteps, "dpm2m-gits"), (TunedGrid.read(grid_file).timesteps, "dpm2m-file")):
        x = dpms.sample(gmm, gmm.schedule, x_T, solver="dpm2m", nfe=5, timesteps=timesteps)
        assert by[(label, 5)]["ode_error"] == pytest.approx(float((x - ref).norm(dim=1).mean()), rel=1e-9)
    assert by[("dpm2m", 5)]["key"] != by[("dpm2m-gits", 5)]["key"] != by[("dpm2m-file", 5)]["key"]
    assert by[("dpm2m", 5)]["ode_error"] > by[("dpm2m-gits", 5)]["ode_error"]
    # a rerun loads every cell and the cached grids (nothing recomputed)
    stamp = {p: p.stat().st_mtime_ns for p in cached}
    code, out_text, _ = run(["bench", "--config", str(cfg), "--out", str(out)], capsys)
    assert code == 0 and "0 cells run now" in out_text
    assert {p: p.stat().st_mtime_ns for p in cached} == stamp


def test_bench_timesteps_flag_and_refusals(tmp_path, capsys):
    grid_file = tmp_path / "g4.json"
    dpms.tune_grid("gmm", "ddim", 4, method="dmn").write(grid_file)
    cfg = bench_config(tmp_path, ["ddim", "dpm2m"])
    out = tmp_path / "out"
    code, _, err = run(["bench", "--config", str(cfg), "--out", str(out), "--nfe", "4", "--timesteps", str(grid_file)], capsys)
    assert code == 0, err
    records = {r["solver"]: r for r in json.loads((out / "results.json").read_text())["cells"]}
    assert records["ddim"]["skip"] == "tuned (dmn, file)" and records["dpm2m"]["skip"] == "logSNR"
    for args, message in ((["--nfe", "5"], "no ddim cell at NFE 4"), (["--solvers", "dpm2m"], "no ddim cell at NFE 4")):
        code, _, err = run(["bench", "--config", str(cfg), "--out", str(out), *args, "--timesteps", str(grid_file)], capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    for grid, message in (({"tune": "gits", "coef": 1}, "unknown key 'coef'"), ({"tune": "ays"}, "tune must be one of gits, dmn"),
                          ({5: str(grid_file)}, "tuned for solver 'ddim', not 'dpm2m'")):
        cfg = bench_config(tmp_path, [{"name": "dpm2m", "grid": grid}])
        code, _, err = run(["bench", "--config", str(cfg), "--out", str(out)], capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    cfg = bench_config(tmp_path, [{"name": "dpm3", "grid": {"tune": "gits"}}])
    code, _, err = run(["bench", "--config", str(cfg), "--out", str(out), "--nfe", "6"], capsys)
    assert code == 2 and "cannot be tuned" in err


def test_speed_accepts_a_matching_grid_only(tmp_path, capsys):
    grid_file = tmp_path / "g.json"
    dpms.tune_grid("gmm", "dpm2m", 4, method="dmn").write(grid_file)
    base = ["speed", "--model", "gmm", "--solver", "dpm2m", "--repeats", "1", "--batch", "16", "--no-diffusers", "--timesteps", str(grid_file)]
    code, out, err = run(base + ["--nfe", "4"], capsys)
    assert code == 0 and "tuned grid" in out, err
    code, _, err = run(base + ["--nfe", "5"], capsys)
    assert code == 2 and "tuned for NFE 4, not 5" in err


@pytest.mark.parametrize("command", ["sample", "bench", "speed"])
@pytest.mark.parametrize("content,message", [
    (None, "not found; make one with `dpms tune-grid"),
    ("not json {", "is not readable JSON"),
    ('{"timesteps": [1.0, 0.5, 0.001]}', "is not a dpms tuned-grid file"),
    ('{"format": "dpms-tuned-grid", "model": "gmm"}', "is malformed"),
])
def test_a_bad_grid_file_is_one_line_exit_2_on_every_command(command, content, message, tmp_path, capsys):
    path = tmp_path / "grid.json"
    if content is not None:
        path.write_text(content)
    args = {"sample": ["sample", "--model", "gmm", "--solver", "dpm2m", "--nfe", "4", "--out", str(tmp_path / "s")],
            "bench": ["bench", "--config", str(bench_config(tmp_path, ["dpm2m"])), "--out", str(tmp_path / "b")],
            "speed": ["speed", "--model", "gmm", "--solver", "dpm2m", "--nfe", "4", "--no-diffusers", "--repeats", "1"]}[command]
    code, _, err = run([*args, "--timesteps", str(path)], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "s").exists() and not (tmp_path / "b").exists()  # refused before any sampling


def test_speed_and_bench_refuse_a_grid_of_another_model_solver_or_nfe(tmp_path, capsys):
    grid_file = tmp_path / "g.json"
    grid = dpms.tune_grid("gmm", "dpm2m", 4, method="dmn")
    grid.write(grid_file)
    speed = ["speed", "--model", "gmm", "--nfe", "4", "--no-diffusers", "--repeats", "1", "--timesteps", str(grid_file)]
    code, _, err = run(speed + ["--solver", "ddim"], capsys)
    assert code == 2 and "tuned for solver 'dpm2m', not 'ddim'" in err and len(err.strip().splitlines()) == 1
    other = tmp_path / "other.json"
    other.write_text(grid_file.read_text().replace('"model": "gmm"', '"model": "digits"'))
    code, _, err = run(["bench", "--config", str(bench_config(tmp_path, ["dpm2m"])), "--out", str(tmp_path / "b"), "--timesteps", str(other)], capsys)
    assert code == 2 and "tuned for model 'digits', not 'gmm'" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("extra,message", [(["--t-end", "0.01"], "drop --t-end"), (["--protocol", "ddim-code"], "drop --protocol"),
                                           (["--skip", "logSNR", "--t-end", "0.01"], "drop --skip and --t-end")])
def test_sample_timesteps_refuses_other_grid_options(extra, message, tmp_path, capsys):
    grid_file = tmp_path / "g.json"
    dpms.tune_grid("gmm", "ddim", 4, method="dmn").write(grid_file)
    code, _, err = run(["sample", "--model", "gmm", "--solver", "ddim", "--nfe", "4", "--timesteps", str(grid_file), *extra,
                        "--out", str(tmp_path / "s")], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_tune_grid_force_replaces_an_existing_file(tmp_path, capsys):
    path = tmp_path / "g.json"
    path.write_text("keep me")
    code, _, err = run(["tune-grid", "--solver", "unipc3", "--nfe", "5", "--method", "dmn", "--out", str(path)], capsys)
    assert code == 2 and "exists" in err and path.read_text() == "keep me"
    code, out, err = run(["tune-grid", "--solver", "unipc3", "--nfe", "5", "--method", "dmn", "--out", str(path), "--force"], capsys)
    assert code == 0, err
    assert TunedGrid.read(path).solver == "unipc3" and "dmn grid for gmm unipc3 NFE 5" in out


def test_committed_tune_results_are_what_their_cells_give():
    # results/tune/*.md and .json are written by benchmarks/tune_grids.py; their headline is recomputed here
    # from the cells they hold (a hand edit of either, or a stale summary, fails)
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("tune_grids", root / "benchmarks" / "tune_grids.py")
    tune_grids = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tune_grids)
    files = sorted((root / "results" / "tune").rglob("gmm.json")) + sorted((root / "results" / "tune").rglob("digits.json"))
    assert {path.name for path in files} == {"gmm.json", "digits.json"}
    for path in files:
        doc = json.loads(path.read_text())
        metric = doc["cells"][0]["metric"]
        lines, headline = tune_grids.summarise(doc["cells"], doc["solvers"], doc["baseline"], doc["nfe"], metric)
        assert json.loads(json.dumps(headline)) == doc["headline"]
        text = path.with_suffix(".md").read_text()
        assert f"Command: `{doc['command']}`" in text and "\n".join(lines) in text
        assert all(line in text for line in tune_grids.verdict_lines(headline))


def test_import_dpms_does_not_load_models_and_tune_grid_is_there_on_first_use():
    import subprocess
    import sys

    code = ("import sys, dpms; assert 'dpms.tune' not in sys.modules and 'dpms.target' not in sys.modules; "
            "from dpms import tune_grid; import dpms.tune; assert tune_grid is dpms.tune.tune_grid and dpms.tune_grid is tune_grid; "
            "assert 'tune_grid' in dpms.__all__")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
