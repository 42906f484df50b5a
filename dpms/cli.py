"""The `dpms` command line. It only parses arguments and dispatches to the library.

Each command lives in its own section below; errors of the user's making (`DpmsError`) print one
line and exit with code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from .errors import DpmsError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Fast ODE solvers for diffusion models, and FID benchmarks.")
console = Console()
err_console = Console(stderr=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script and of `python -m dpms`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # torchrun passes everything after `-m dpms --` through; drop a leading "--" separator.
    if argv and argv[0] == "--":
        argv = argv[1:]
    try:
        app(args=argv, prog_name="dpms", standalone_mode=False)
    except DpmsError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        return 2
    except typer.Exit as e:
        return e.exit_code
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("interrupted")
        return 130
    except Exception as e:  # click usage errors
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            return 2
        raise
    return 0


# ---------------------------------------------------------------------------------------------
# Commands are defined below, one section each.
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# dpms solvers / dpms sample
# ---------------------------------------------------------------------------------------------
@app.command("solvers")
def solvers_command() -> None:
    """List the registered solvers: name, order, NFE rule, paper, default time grid."""
    from rich.table import Table

    from .sampler import solvers

    table = Table(title="dpms solvers")
    for col in ("name", "order", "NFE rule", "paper", "default grid"):
        table.add_column(col)
    for name, spec in solvers().items():
        skip = spec.default_skip if isinstance(spec.default_skip, str) else "discrete_uniform (discrete) / time_uniform"
        table.add_row(name, spec.order, spec.nfe_rule, spec.paper, skip)
    console.print(table)


def _parse_options(option: list[str]) -> dict:
    """--option key=value (value parsed as YAML: numbers, booleans, strings)."""
    import yaml

    out = {}
    for item in option:
        if "=" not in item:
            raise DpmsError(f"--option takes key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return out


@app.command("sample")
def sample_command(
    model: str = typer.Option("gmm", help="'gmm' (the exact model), 'digits', or a checkpoint preset (see `dpms models`)"),
    solver: str = typer.Option("dpm3", help="solver name (see `dpms solvers`)"),
    nfe: Optional[int] = typer.Option(10, help="network evaluations per sample (ignored by adaptive solvers)"),
    num: int = typer.Option(64, help="number of samples"),
    batch: int = typer.Option(64, help="samples per batch"),
    seed: int = typer.Option(0, help="sample i uses noise derived from (seed, i)"),
    out: Path = typer.Option(Path("out/samples"), help="output folder"),
    checkpoint: Optional[str] = typer.Option(None, help="checkpoint file or folder (default: look up the preset's file)"),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, ..."),
    dtype: str = typer.Option("fp32", help="network precision: fp32, fp16 or bf16 (autocast)"),
    skip: Optional[str] = typer.Option(None, help="time grid: logSNR, time_uniform, time_quadratic, discrete_uniform, discrete_quadratic"),
    t_end: Optional[float] = typer.Option(None, help="end time (default: the schedule's, 1/N or 1e-3)"),
    classifier: Optional[str] = typer.Option(None, help="noisy classifier checkpoint for classifier guidance"),
    guidance_scale: float = typer.Option(0.0, help="classifier guidance scale s"),
    labels: Optional[str] = typer.Option(None, help="class labels, comma-separated (default: random from the seed)"),
    no_png: bool = typer.Option(False, "--no-png", help="write only the .npz"),
    option: list[str] = typer.Option([], help="solver option key=value, repeatable (e.g. order_plan=fixed)"),
) -> None:
    """Sample a model with one solver; writes samples.npz (and PNGs + grid.png for images)."""
    from .generate import generate, load_target
    from .sampler import get_solver

    get_solver(solver)  # unknown solver: fail before loading anything
    options = _parse_options(option)
    class_labels = [int(v) for v in labels.split(",")] if labels else None
    target = load_target(model, checkpoint, device, dtype, classifier, guidance_scale)
    summary = generate(
        target, solver, nfe, num, batch, seed, out, device=device, skip=skip, t_end=t_end,
        class_labels=class_labels, save_png=not no_png, console=console, **options,
    )
    used = ", ".join(map(str, summary["nfe_used_per_batch"]))
    console.print(
        f"{summary['num']} samples from {model} with {solver}: NFE used {used}, "
        f"{summary['seconds']:.2f} s ({summary['seconds'] / summary['num'] * 1000:.2f} ms/sample) → {out}"
    )


# ---------------------------------------------------------------------------------------------
# dpms train digits / dpms train digits-classifier  (reproduce checkpoints/digits)
# ---------------------------------------------------------------------------------------------
train_app = typer.Typer(no_args_is_help=True, help="Reproduce the small models that ship in checkpoints/digits.")
app.add_typer(train_app, name="train")


@train_app.command("digits")
def train_digits_command(
    steps: int = typer.Option(6000, help="optimizer steps (batch 128)"),
    seed: int = typer.Option(0, help="seeds initialisation, dropout, data order, steps n and noise"),
    out: Optional[Path] = typer.Option(None, help="output folder (default: checkpoints/digits)"),
    threads: int = typer.Option(2, help="torch CPU threads"),
) -> None:
    """Train the digits DDPM (ε-prediction, L_simple), write the EMA weights, card and a DDIM-50 sample grid."""
    import torch

    from .digits import reproduce_digits_ddpm

    torch.set_num_threads(threads)
    card = reproduce_digits_ddpm(steps=steps, seed=seed, directory=out, console=console)
    check = card["check_ddim50_500_samples"]
    console.print(f"final loss {card['final_loss_last_500_steps']:.4f}, {card['wall_time_s']:.0f} s; "
                  f"FD (digits features) of 500 DDIM-50 samples {check['fd_samples_vs_real']:.3f} "
                  f"(held-out real floor {check['fd_floor_held_out_vs_rest']:.3f})")


@train_app.command("digits-classifier")
def train_digits_classifier_command(
    epochs: int = typer.Option(30, help="passes over the 1,437 training digits"),
    seed: int = typer.Option(0, help="seeds initialisation, dropout, data order and augmentation"),
    out: Optional[Path] = typer.Option(None, help="output folder (default: checkpoints/digits)"),
    threads: int = typer.Option(2, help="torch CPU threads"),
) -> None:
    """Train the digit classifier behind "FD (digits features)" and write its weights and the real-data stats."""
    import torch

    from .digits import reproduce_digits_classifier

    torch.set_num_threads(threads)
    info = reproduce_digits_classifier(epochs=epochs, seed=seed, directory=out, console=console)
    console.print(f"held-out accuracy {info['held_out_accuracy']:.4f} ({info['split']['held_out']} digits)")
