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
