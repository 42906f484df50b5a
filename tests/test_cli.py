"""The `dpms` command line: sample and solvers, one-line errors with exit code 2."""

import subprocess
import sys

import numpy as np
import pytest

from dpms.cli import main


def run(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_sample_gmm_writes_npz_and_is_batch_independent(tmp_path, capsys):
    code, out, _ = run(["sample", "--model", "gmm", "--solver", "dpm3", "--nfe", "10", "--num", "40", "--batch", "40", "--seed", "0", "--out", str(tmp_path / "a")], capsys)
    assert code == 0 and "NFE used 10" in out
    code, _, _ = run(["sample", "--model", "gmm", "--solver", "dpm3", "--nfe", "10", "--num", "40", "--batch", "7", "--seed", "0", "--out", str(tmp_path / "b")], capsys)
    a = np.load(tmp_path / "a" / "samples.npz")["samples"]
    b = np.load(tmp_path / "b" / "samples.npz")["samples"]
    assert a.shape == (40, 8) and np.allclose(a, b, atol=1e-10)


def test_sample_passes_solver_options_and_reports_adaptive_nfe(tmp_path, capsys):
    code, out, _ = run(["sample", "--solver", "dpm23", "--num", "8", "--out", str(tmp_path), "--option", "rtol=0.01"], capsys)
    assert code == 0
    used = int(out.split("NFE used ")[1].split(",")[0])
    assert used % 3 == 0 and used > 10


@pytest.mark.parametrize(
    "args,message",
    [
        (["sample", "--solver", "dpm4"], "unknown solver 'dpm4'; valid solvers: ddim"),
        (["sample", "--solver", "rk3", "--nfe", "10"], "nearest valid: 9 or 12"),
        (["sample", "--solver", "pndm", "--nfe", "10"], "nearest valid: 8 or 12"),
        (["sample", "--skip", "quadratic"], "unknown skip type 'quadratic'"),
        (["sample", "--solver", "dpm3", "--option", "rtol=1"], "has no option 'rtol'"),
        (["sample", "--dtype", "fp8"], "unknown --dtype 'fp8'"),
        (["sample", "--solver", "ddim", "--protocol", "ddim-code"], "protocol 'ddim-code' runs a discrete codebase loop"),
    ],
)
def test_errors_are_one_line_with_exit_code_2(args, message, capsys, tmp_path):
    code, out, err = run(args + ["--out", str(tmp_path)], capsys)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_sample_runs_a_codebase_protocol_and_says_a_repeated_index_once(tmp_path):
    """--protocol reaches dpms.sample; DDIM's quadratic list for 50 steps repeats index 0: one warning line
    for the whole command (two batches), and the reported end is ᾱ = 1 (t 0)."""
    args = ["sample", "--model", "digits", "--solver", "ddim", "--nfe", "50", "--skip", "discrete_quadratic", "--protocol", "ddim-code",
            "--num", "4", "--batch", "2", "--no-png", "--out", str(tmp_path)]
    done = subprocess.run([sys.executable, "-m", "dpms", *args], capture_output=True, text=True)  # pytest would catch the warning
    assert done.returncode == 0 and "NFE used 50, t_end 0," in " ".join(done.stdout.split())
    assert done.stderr.count("repeats indices (0, 0, 1, 2, …)") == 1 and "Traceback" not in done.stderr


def test_error_text_in_brackets_survives(tmp_path, capsys):
    """rich markup must not eat "[model, optimizer, ...]" or a path like run[1]/ (both are ordinary text)."""
    import torch

    odd = tmp_path / "run[1]" / "odd.pt"
    odd.parent.mkdir()
    torch.save({"weights": [1, 2]}, odd)
    code, _, err = run(["sample", "--model", "digits", "--checkpoint", str(odd), "--out", str(tmp_path / "o")], capsys)
    assert code == 2
    assert "DDIM [model, optimizer, epoch, step, ema] lists" in err
    missing = tmp_path / "run[2]" / "nope.pt"
    code, _, err = run(["sample", "--model", "digits", "--checkpoint", str(missing), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and f"checkpoint {missing} for digits does not exist" in err


def test_error_is_one_plain_line_without_terminal_codes(tmp_path, capsys, monkeypatch):
    from dpms import generate
    from dpms.errors import DpmsError

    def fail(*args, **kwargs):
        raise DpmsError("torch says \x1b[1mdo this\x1b[0m [now]\n\tor later")

    monkeypatch.setattr(generate, "load_target", fail)
    code, _, err = run(["sample", "--out", str(tmp_path)], capsys)
    assert code == 2
    assert err.strip() == "error: torch says do this [now] or later"


@pytest.mark.parametrize("flag, dtype", [("fp32", None), ("bf16", "bfloat16"), ("fp16", "float16")])
def test_dtype_flag_reaches_the_network_as_autocast(tmp_path, capsys, monkeypatch, flag, dtype):
    """`dpms sample --dtype bf16` runs the network's forward under autocast with that dtype."""
    import torch

    from dpms.models import checkpoints
    from dpms.schedule import NoiseSchedule

    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, x, t):
            enabled = torch.is_autocast_enabled(x.device.type)
            seen.append(str(torch.get_autocast_dtype(x.device.type)).removeprefix("torch.") if enabled else None)
            return torch.zeros_like(x)

    def load(name, **kwargs):
        preset = checkpoints.get_preset(name)
        return checkpoints.LoadedModel(name, Recorder(), NoiseSchedule.from_spec(preset.schedule), preset,
                                       dict(preset.config), preset.image_shape, None, None)

    monkeypatch.setattr(checkpoints, "load", load)
    code, out, err = run(["sample", "--model", "cifar10-ddpm", "--dtype", flag, "--solver", "ddim", "--nfe", "2",
                          "--num", "2", "--no-png", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    assert seen and set(seen) == {dtype}


def test_solvers_table_lists_every_solver(capsys):
    import dpms

    code, out, _ = run(["solvers"], capsys)
    assert code == 0
    for name in dpms.solvers():
        assert name in out
    assert "pndm-code: ddim, spndm, pndm, fon" in " ".join(out.split())  # the codebase loops, and their solvers


def test_console_script_and_module_entry_with_torchrun_separator(tmp_path):
    """`python -m dpms -- sample ...` (the form torchrun needs) works like `dpms sample ...`."""
    proc = subprocess.run(
        [sys.executable, "-m", "dpms", "--", "sample", "--num", "4", "--nfe", "5", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "samples.npz").exists()
    proc = subprocess.run([sys.executable, "-m", "dpms", "sample", "--solver", "nope"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1


@pytest.mark.parametrize(
    "args,message",
    [
        (["sample", "--nfe", "abc"], "Invalid value for '--nfe'"),
        (["sample", "--bogus"], "No such option: --bogus"),
        (["frobnicate"], "No such command 'frobnicate'"),
    ],
)
def test_usage_errors_exit_2_with_clicks_message_and_no_traceback(args, message, capsys):
    code, out, err = run(args, capsys)
    assert code == 2
    assert message in err and "Traceback" not in err + out
