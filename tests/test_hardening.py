"""Issue 16: no silent wrong result, no stale cell, no traceback for a user's mistake.

One test (or a few) per item of the issue; each failed before its fix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dpms import sampler
from dpms.cli import main
from dpms.errors import DpmsError, NonFiniteError
from dpms.schedule import NoiseSchedule


def run(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------------- 1. silent wrong samples
@pytest.mark.parametrize("solver", list(sampler.solvers()))
def test_time_outside_a_discrete_schedule_is_an_error_naming_its_range(solver):
    schedule = NoiseSchedule.discrete_linear()
    with pytest.raises(DpmsError, match=r"outside the time range \[0\.001, 1\]"):
        sampler.validate(solver, schedule, nfe=12, t_end=1e-4)


def test_explicit_timesteps_outside_the_range_are_refused():
    schedule = NoiseSchedule.discrete_linear()
    with pytest.raises(DpmsError, match=r"time range \[0\.001, 1\]"):
        sampler.sample(lambda x, t: torch.zeros_like(x), schedule, torch.randn(2, 3), solver="ddim", timesteps=[1.0, 0.5, 1e-4])


def test_sample_t_end_below_the_discrete_range_exits_2_and_writes_nothing(tmp_path, capsys):
    code, _, err = run(["sample", "--model", "digits", "--solver", "ddim", "--nfe", "10", "--t-end", "1e-4", "--num", "4",
                        "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "[0.001, 1]" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "samples.npz").exists()


def test_non_finite_samples_are_never_returned_even_with_finite_eps():
    schedule = NoiseSchedule.linear()
    x_T = torch.ones(2, 3, dtype=torch.float32)

    def overflowing(x, t):  # finite ε whose DDIM update overflows float32
        return torch.full_like(x, 3e38)

    with pytest.raises(NonFiniteError, match="NaN/inf"):
        sampler.sample(overflowing, schedule, x_T, solver="ddim", nfe=5)


def _help(command: str, option: str) -> str:
    import typer

    from dpms.cli import app

    params = typer.main.get_command(app).commands[command].params
    return next(p.help for p in params if p.name == option)


def test_t_end_help_suggests_no_time_outside_the_discrete_range():
    text = _help("sample", "t_end")
    assert "inside the schedule's range" in text and "1e-4 above" not in text.replace("uses 1e-4 above 15 NFE", "")


# ---------------------------------------------------------------------------------- 2. stale cells after a code change
def _copy_package(tmp_path):
    import shutil

    from dpms.bench import cells
    from dpms.models.checkpoints import REGISTRY

    root = tmp_path / "repo"
    shutil.copytree(cells.PACKAGE, root / cells.PACKAGE.name, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "checkpoints").mkdir()
    shutil.copy(REGISTRY, root / "checkpoints" / REGISTRY.name)
    return root / cells.PACKAGE.name


def test_a_change_in_each_numerics_file_changes_the_fingerprint(tmp_path):
    from dpms.bench import cells

    package = _copy_package(tmp_path)
    files = cells.numerics_files(package)
    # the case: ε scaled in generate.py left the old fingerprint; the noise function is built in target.py now
    assert package / "target.py" in files
    before = cells.fingerprint_of_sources(package)
    for path in files:
        text = path.read_bytes()
        path.write_bytes(text + b"\n# edited\n")
        assert cells.fingerprint_of_sources(package) != before, path
        path.write_bytes(text)
    assert cells.fingerprint_of_sources(package) == before


def test_the_numerics_list_follows_imports_so_a_new_module_is_covered(tmp_path):
    from dpms.bench import cells

    package = _copy_package(tmp_path)
    (package / "evaluation" / "brand_new_helper.py").write_text("SCALE = 1.0\n")
    frechet = package / "evaluation" / "frechet.py"
    assert package / "evaluation" / "brand_new_helper.py" not in cells.numerics_files(package)
    frechet.write_text(frechet.read_text() + "\n\ndef scale():\n    from .brand_new_helper import SCALE\n    return SCALE\n")
    assert package / "evaluation" / "brand_new_helper.py" in cells.numerics_files(package)


def test_a_new_solver_file_is_covered_without_any_import_naming_it(tmp_path):
    """dpms.sampler imports every module it holds (pkgutil), so a new solver file decides numbers at once."""
    from dpms.bench import cells

    package = _copy_package(tmp_path)
    (package / "sampler" / "brand_new_solver.py").write_text("SCALE = 1.0\n")
    assert package / "sampler" / "brand_new_solver.py" in cells.numerics_files(package)


def test_every_module_loaded_while_a_cell_is_computed_is_fingerprinted(tmp_path):
    """Run a digits cell in a fresh interpreter; every dpms module it loaded is fingerprinted or presentation-only."""
    import subprocess
    import sys

    from dpms.bench import cells

    script = f"""
import sys, json
from dpms.bench import apply_overrides, load_config, Overrides, run_benchmark
from rich.console import Console
settings = apply_overrides(load_config("configs/digits.yaml"), Overrides(solvers=["dpm2"], nfe=[6], num=20, batch=20))
run_benchmark(settings, {str(tmp_path / "out")!r}, console=Console(quiet=True))
print(json.dumps({{m: getattr(mod, "__file__", None) for m, mod in sys.modules.items() if m.split(".")[0] == "dpms"}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=cells.PACKAGE.parent, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    covered = {str(p) for p in cells.numerics_files()}
    missing = [m for m, f in loaded.items() if f and m not in cells.PRESENTATION_ONLY and f not in covered]
    assert not missing


# ---------------------------------------------------------------------------------- 3. reports replaced by default
GMM_GRID = {"name": "g", "model": "gmm", "features": "exact", "num": 30, "batch": 30, "seed": 0, "nfe": [5, 6],
            "solvers": [{"name": "ddim"}, {"name": "dpm2"}]}


def _gmm_bench(tmp_path, out, force=False, grid=None, **overrides):
    import yaml
    from rich.console import Console

    from dpms.bench import Overrides, apply_overrides, load_config, run_benchmark

    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({**GMM_GRID, **(grid or {})}))
    return run_benchmark(apply_overrides(load_config(path), Overrides(**overrides)), out, console=Console(quiet=True), force=force)


def test_a_reduced_bench_does_not_replace_a_fuller_report(tmp_path):
    out = tmp_path / "out"
    full = _gmm_bench(tmp_path, out)
    before = (out / "results.json").read_text()
    with pytest.raises(DpmsError, match="another grid or settings.*--out.*--force"):
        _gmm_bench(tmp_path, out, solvers=["ddim"], nfe=[5], num=20)
    assert (out / "results.json").read_text() == before
    assert _gmm_bench(tmp_path, out).computed == []  # the same grid resumes
    assert len(_gmm_bench(tmp_path, out, force=True, solvers=["ddim"], nfe=[5]).records) == 1 < len(full.records)


def test_sample_into_a_folder_with_samples_is_refused_and_force_removes_stale_pngs(tmp_path, capsys):
    out = tmp_path / "o"
    args = ["sample", "--model", "digits", "--solver", "ddim", "--nfe", "5", "--out", str(out)]
    assert run(args + ["--num", "6"], capsys)[0] == 0
    code, _, err = run(args + ["--num", "3"], capsys)
    assert code == 2 and "--force" in err and "--out" in err and len(list((out / "images").glob("*.png"))) == 6
    assert run(args + ["--num", "3", "--force"], capsys)[0] == 0
    assert len(list((out / "images").glob("*.png"))) == 3 and len(np.load(out / "samples.npz")["samples"]) == 3


@pytest.mark.parametrize("command", [["train", "digits", "--steps", "1"], ["train", "digits-classifier", "--epochs", "1"]])
def test_train_keeps_the_shipped_checkpoints_by_default(command, capsys):
    from dpms.digits import DIGITS_DIR

    before = {p.name: p.stat().st_mtime_ns for p in DIGITS_DIR.iterdir()}
    code, _, err = run(command, capsys)
    assert code == 2 and "--out" in err and "--force" in err
    assert {p.name: p.stat().st_mtime_ns for p in DIGITS_DIR.iterdir()} == before


# ---------------------------------------------------------------------------------- 4. damaged or edited cell files
@pytest.mark.parametrize("damage", ["random bytes", "null", "no fid", "edited value", "no checksum"])
def test_a_damaged_or_edited_cell_file_is_recomputed_with_one_line(tmp_path, damage, capsys):
    import os

    from dpms.bench.report import cell_path

    out = tmp_path / "out"
    first = _gmm_bench(tmp_path, out)
    victim = first.records[0]
    path = cell_path(out, victim["key"])
    record = json.loads(path.read_text())
    if damage == "random bytes":
        path.write_bytes(os.urandom(50))
    elif damage == "null":
        path.write_text("null")
    elif damage == "no fid":
        path.write_text(json.dumps({k: v for k, v in record.items() if k != "fid"}))
    elif damage == "edited value":
        path.write_text(json.dumps({**record, "fid": record["fid"] * 0.5}))
    else:
        path.write_text(json.dumps({k: v for k, v in record.items() if k != "checksum"}))
    from rich.console import Console

    from dpms.bench import Overrides, apply_overrides, load_config, run_benchmark

    console = Console(file=__import__("io").StringIO(), width=400)
    again = run_benchmark(apply_overrides(load_config(tmp_path / "g.yaml"), Overrides()), out, console=console)
    assert again.computed == [victim["key"]]
    assert {r["key"]: r["fid"] for r in again.records} == {r["key"]: r["fid"] for r in first.records}
    lines = [line for line in console.file.getvalue().splitlines() if "recomputing" in line]
    assert len(lines) == 1 and str(path) in lines[0]
    assert _gmm_bench(tmp_path, out).computed == []  # the rewritten file is trusted again


# ---------------------------------------------------------------------------------- 5. two runs into one --out
def test_report_figures_use_unique_temporary_names(tmp_path, monkeypatch):
    """Two writers of fid_vs_nfe.png must not share a temporary file (a fixed name crashed one of them)."""
    from dpms.bench import report

    seen = []
    real = report.line_plot

    def spy(series, path, **kwargs):
        seen.append(Path(path).name)
        real(series, path, **kwargs)

    monkeypatch.setattr(report, "line_plot", spy)
    _gmm_bench(tmp_path, tmp_path / "out")
    assert len(seen) >= 2 and len(set(seen)) == len(seen) and all(name.endswith(".png") for name in seen)


def test_a_second_run_into_a_locked_folder_names_the_holder_and_stale_temporaries_go(tmp_path):
    import os

    from dpms.bench.lock import folder_lock

    out = tmp_path / "out"
    (out / "cells").mkdir(parents=True)
    (out / ".fid_vs_nfe.tmp.png").write_bytes(b"left by kill -9")
    (out / "cells" / ".dpm2-nfe5-abc.json.x1y2.tmp").write_text("{")
    with folder_lock(out):
        assert not list(out.glob(".*.tmp*")) and not list((out / "cells").glob(".*.tmp*"))
        with pytest.raises(DpmsError, match=rf"in use by another dpms bench \(pid {os.getpid()}\).*--out"):
            _gmm_bench(tmp_path, out)
    assert len(_gmm_bench(tmp_path, out).records) == 4  # released: the next run goes ahead


def test_two_concurrent_runs_into_one_folder_leave_a_complete_report(tmp_path):
    import subprocess
    import sys

    import yaml

    from dpms.bench import cells

    (tmp_path / "g.yaml").write_text(yaml.safe_dump(GMM_GRID))
    cmd = [sys.executable, "-m", "dpms", "bench", "--config", str(tmp_path / "g.yaml"), "--out", str(tmp_path / "out")]
    procs = [subprocess.Popen(cmd, cwd=cells.PACKAGE.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert all(code in (0, 2) for code, _ in results) and any(code == 0 for code, _ in results)
    for code, err in results:
        assert code == 0 or ("in use by another dpms bench" in err and "Traceback" not in err)
    assert len(json.loads((tmp_path / "out" / "results.json").read_text())["cells"]) == 4


def test_a_torchrun_worker_dies_with_its_launcher(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from dpms.bench import cells

    pid_file = tmp_path / "worker.pid"
    worker = ("from dpms.bench.distributed import die_with_parent; import os, time; assert die_with_parent(); "
              f"open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)")
    launcher = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {worker!r}])"],
                                cwd=cells.PACKAGE.parent)
    deadline = time.time() + 120
    while not pid_file.exists() or not pid_file.read_text():
        assert time.time() < deadline
        time.sleep(0.2)
    pid = int(pid_file.read_text())
    os_kill = __import__("os").kill
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    for _ in range(100):
        try:
            os_kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os_kill(pid, signal.SIGKILL)
        pytest.fail("the worker outlived its launcher")


# ---------------------------------------------------------------------------------- 6. one line, not a traceback
def _one_line_error(args, capsys, match):
    code, _, err = run(args, capsys)
    assert code == 2, err[-2000:]
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert match in err, err
    return err


def test_device_cuda_without_a_gpu_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for command in (["sample", "--num", "2", "--out", str(tmp_path / "o")], ["bench", "--config", "configs/gmm.yaml", "--out", str(tmp_path / "b")],
                    ["speed", "--model", "gmm"], ["fid", str(tmp_path), str(tmp_path)]):
        _one_line_error(command + ["--device", "cuda"], capsys, "CUDA is not available")


def test_out_that_is_a_file_or_unwritable_fails_before_any_work(tmp_path, capsys, monkeypatch):
    import os

    a_file = tmp_path / "afile"
    a_file.write_text("x")
    _one_line_error(["sample", "--num", "2", "--out", str(a_file)], capsys, "is an existing file")
    _one_line_error(["bench", "--config", "configs/gmm.yaml", "--out", str(a_file)], capsys, "is an existing file")
    _one_line_error(["stats", str(tmp_path), "--out", str(a_file / "s.npz")], capsys, "is an existing file")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        _one_line_error(["sample", "--num", "2", "--out", str(locked / "o")], capsys, "not writable")


def test_a_full_disk_says_what_was_kept(tmp_path, capsys, monkeypatch):
    import errno

    from dpms.bench import report

    real = report.atomic_write_text
    writes = {"n": 0}

    def filling(path, text):
        if "cells" in str(path):
            writes["n"] += 1
            if writes["n"] == 3:
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, text)

    monkeypatch.setattr(report, "atomic_write_text", filling)
    import yaml

    (tmp_path / "g.yaml").write_text(yaml.safe_dump(GMM_GRID))
    err = _one_line_error(["bench", "--config", str(tmp_path / "g.yaml"), "--out", str(tmp_path / "out")], capsys, "No space left on device")
    assert "2 finished cells are kept" in err and "rerun" in err
    monkeypatch.setattr(report, "atomic_write_text", real)
    assert len(_gmm_bench(tmp_path, tmp_path / "out").computed) == 2  # the two kept cells resume


def test_bad_images_and_features_that_do_not_fit_are_one_line(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "a.png")
    (folder / "b.png").write_bytes(b"not an image")
    _one_line_error(["stats", str(folder), "--features", "digits", "--out", str(tmp_path / "s.npz")], capsys, "b.png cannot be read as an image")
    rgb = tmp_path / "rgb"
    rgb.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(rgb / f"{i}.png")
    _one_line_error(["stats", str(rgb), "--features", "digits", "--out", str(tmp_path / "s.npz")], capsys, "takes grayscale images")


def test_float_sample_files_are_accepted_as_the_help_promises(tmp_path, capsys):
    from dpms.digits import DIGITS_DIR, STATS_FILE

    x = np.random.default_rng(0).uniform(-1, 1, (20, 1, 8, 8))
    values = []
    for name, array in {"f32_nchw": x.astype(np.float32), "f64_nchw": x, "f64_nhwc": x.transpose(0, 2, 3, 1), "f16_nhwc": x.transpose(0, 2, 3, 1).astype(np.float16)}.items():
        np.savez(tmp_path / f"{name}.npz", samples=array)
        code, out, err = run(["fid", str(tmp_path / f"{name}.npz"), str(DIGITS_DIR / STATS_FILE), "--features", "digits"], capsys)
        assert code == 0, err
        values.append(float(out.split(":")[-1]))
    assert values[:3] == pytest.approx([values[0]] * 3, rel=1e-5) and values[3] == pytest.approx(values[0], rel=1e-2)
    np.savez(tmp_path / "wide.npz", samples=x * 255)
    _one_line_error(["fid", str(tmp_path / "wide.npz"), str(DIGITS_DIR / STATS_FILE), "--features", "digits"], capsys, "must lie in [-1, 1]")


@pytest.mark.parametrize("args, match", [
    (["sample", "--solver", "dpm23", "--option", "rtol=abc", "--num", "2"], "option rtol takes a number"),
    (["sample", "--solver", "dpm23", "--option", "max_nfe=1.5", "--num", "2"], "option max_nfe takes an integer"),
    (["sample", "--threads", "0", "--num", "2"], "--threads must be a positive number"),
    (["bench", "--threads", "0", "--config", "configs/gmm.yaml"], "--threads must be a positive number"),
    (["speed", "--threads", "0", "--model", "gmm"], "--threads must be a positive number"),
    (["train", "digits", "--steps", "0"], "--steps must be at least 1"),
    (["train", "digits", "--dequantise", "triangular"], "--dequantise must be one of none, uniform, gaussian"),
    (["train", "digits", "--lr-decay", "linear"], "--lr-decay must be one of"),
    (["train", "digits-classifier", "--epochs", "0"], "--epochs must be at least 1"),
])
def test_common_mistakes_are_one_line(args, match, tmp_path, capsys):
    _one_line_error(args + ["--out", str(tmp_path / "o")] if args[0] in ("sample", "bench", "train") else args, capsys, match)


@pytest.mark.parametrize("content", ['{"cells": [1, 2]}', '{"cells": [{"label": "ddim"}]}', '{"cells": {"a": 1}}',
                                     '{"cells": [{"label": "ddim", "column": 5, "metric": "m", "fid": "x"}]}'])
def test_a_malformed_check_baseline_fails_before_the_bench_runs(tmp_path, capsys, content, monkeypatch):
    from dpms.bench import runner

    monkeypatch.setattr(runner, "run_cells", lambda *a, **k: pytest.fail("the bench ran before the baseline was checked"))
    (tmp_path / "base.json").write_text(content)
    _one_line_error(["bench", "--config", "configs/gmm.yaml", "--out", str(tmp_path / "o"), "--check", str(tmp_path / "base.json")],
                    capsys, "baseline")


def test_a_checkpoint_with_pickled_code_is_refused_as_code_not_called_corrupt(tmp_path, capsys):
    import os

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo never",))

    torch.save({"weights": Payload()}, tmp_path / "evil.pt")
    err = _one_line_error(["sample", "--model", "digits", "--checkpoint", str(tmp_path / "evil.pt"), "--out", str(tmp_path / "o")],
                          capsys, "contains pickled code")
    assert "corrupt" not in err and "refused" in err


# ---------------------------------------------------------------------------------- 7. NaN cells, huge predictions, interrupts
def test_a_diverging_cell_is_recorded_as_diverged_and_the_bench_goes_on(tmp_path, monkeypatch):
    real = sampler.sample

    def nan_for_dpm2(noise_fn, *args, solver="dpm3", **kwargs):
        if solver == "dpm2":
            inner = noise_fn
            noise_fn = lambda x, t: inner(x, t) * float("nan")  # noqa: E731
        return real(noise_fn, *args, solver=solver, **kwargs)

    monkeypatch.setattr(sampler, "sample", nan_for_dpm2)
    out = tmp_path / "out"
    result = _gmm_bench(tmp_path, out)
    by_solver = {(r["solver"], r["nfe"]): r for r in result.records}
    assert len(by_solver) == 4
    assert all(by_solver[("dpm2", n)]["fid"] is None and "NaN/inf" in by_solver[("dpm2", n)]["diverged"] for n in (5, 6))
    assert all(by_solver[("ddim", n)]["fid"] > 0 and not by_solver[("ddim", n)]["diverged"] for n in (5, 6))
    table = (out / "results.md").read_text()
    assert "| dpm2 | diverged | diverged |" in table
    assert _gmm_bench(tmp_path, out).computed == []  # recorded: a rerun does not redo it


def test_huge_finite_predictions_are_not_called_nan():
    schedule = NoiseSchedule.linear()
    x = sampler.sample(lambda x, t: torch.full_like(x, 1e39), schedule, torch.ones(2, 3, dtype=torch.float64), solver="ddim", nfe=3)
    assert torch.isfinite(x).all()


def test_an_interrupted_sample_saves_what_it_has_and_exits_non_zero(tmp_path, capsys, monkeypatch):
    real = sampler.sample
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sampler, "sample", interrupted)
    code, _, _ = run(["sample", "--num", "10", "--batch", "2", "--out", str(tmp_path / "o")], capsys)
    assert code != 0
    assert len(np.load(tmp_path / "o" / "samples.npz")["samples"]) == 4


# ---------------------------------------------------------------------------------- 8. determinism, stated truly
def test_a_baseline_made_at_another_batch_size_passes_the_default_check(tmp_path, capsys):
    common = ["bench", "--config", "configs/digits.yaml", "--solvers", "ddim,dpm3", "--nfe", "10", "--num", "60", "--threads", "1"]
    assert run(common + ["--batch", "60", "--out", str(tmp_path / "a")], capsys)[0] == 0
    code, out, _ = run(common + ["--batch", "7", "--out", str(tmp_path / "b"), "--check", str(tmp_path / "a" / "results.json")], capsys)
    a, b = (json.loads((tmp_path / d / "results.json").read_text())["cells"] for d in "ab")
    assert [c["fid"] for c in a] != [c["fid"] for c in b]  # round-off: not bit-identical across batch sizes
    assert code == 0 and "check passed" in out
    assert "round-off" in _help("bench", "batch") and "round-off" in _help("sample", "seed")
    assert "round-off" in _help("bench", "rel_tol")


# ---------------------------------------------------------------------------------- 9. usability
def test_default_thread_count_is_sane_and_documented(monkeypatch):
    from dpms import machine

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(machine, "usable_cores", lambda: 2)
    assert machine.default_threads() == 1  # a busy 2-core machine: not one thread per core
    monkeypatch.setattr(machine, "usable_cores", lambda: 64)
    assert machine.default_threads() == 8
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert machine.default_threads() == 3
    threads = torch.get_num_threads()
    try:
        assert machine.set_threads(None) == 3 and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)
    for command in ("sample", "bench", "speed", "stats", "fid"):
        assert "half the usable CPU cores" in _help(command, "threads")


def test_help_short_option_version_and_flags_without_a_bool_metavar(capsys):
    code, out, _ = run(["sample", "-h"], capsys)
    assert code == 0 and "--compile" in out and "<bool>" not in out.split("--compile")[1].splitlines()[0]
    code, out, _ = run(["--version"], capsys)
    from dpms import __version__

    assert code == 0 and out.strip() == f"dpms {__version__}"


def _render(renderable, width=80) -> str:
    import io

    from rich.console import Console

    console = Console(file=io.StringIO(), width=width)
    console.print(renderable)
    return console.file.getvalue()


def test_tables_keep_solver_and_preset_names_whole_at_80_columns(tmp_path, monkeypatch, capsys):
    import dpms.cli as cli
    from rich.console import Console

    result = _gmm_bench(tmp_path, tmp_path / "out", grid={"ode_error": True}, solvers=["dpmpp2m", "dpmpp3m", "ddim"], nfe=[5, 6, 10, 20, 50])
    text = _render(result.table)
    assert "dpmpp2m" in text and "dpmpp3m" in text and "ode_error: mean L2 distance to the model's converged ODE solution" in " ".join(text.split())
    import io

    monkeypatch.setattr(cli, "console", Console(file=io.StringIO(), width=80))
    assert run(["models"], capsys)[0] == 0
    text = cli.console.file.getvalue()
    from dpms.models.checkpoints import presets

    assert all(name in text for name in presets())
