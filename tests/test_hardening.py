"""Issue 16: no silent wrong result, no stale cell, no traceback for a user's mistake.

One test (or a few) per item of the issue; each failed before its fix."""

from __future__ import annotations

import json

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
    assert package / "generate.py" in files  # the case: ε scaled in generate.py left the old fingerprint
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
    # (not in dpms/sampler/: that package imports every module in it, so a new file there is covered at once)
    (package / "brand_new_helper.py").write_text("SCALE = 1.0\n")
    grids = package / "sampler" / "grids.py"
    assert package / "brand_new_helper.py" not in cells.numerics_files(package)
    grids.write_text(grids.read_text() + "\n\ndef scale():\n    from ..brand_new_helper import SCALE\n    return SCALE\n")
    assert package / "brand_new_helper.py" in cells.numerics_files(package)
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
