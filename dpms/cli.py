"""The `dpms` command line. It only parses arguments and dispatches to the library.

Each command lives in its own section below; errors of the user's making (`DpmsError`) print one
line and exit with code 2.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from .digits.data import SHIPPED_RECIPE
from .errors import DpmsError, strip_ansi
from .evaluation.kinds import FEATURE_KINDS
from .machine import THREADS_HELP, check_device, set_threads

# `dpms bench --check`'s default relative tolerance: ten times the largest round-off measured between batch sizes
# (7, 64, 200), thread counts (1, 2) and process counts (1, 2) by benchmarks/roundoff.py (digits 9.3e-5, gmm 4.2e-13)
CHECK_REL_TOL = 1e-3

HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(add_completion=False, no_args_is_help=True, help="Fast ODE solvers for diffusion models, and FID benchmarks.",
                  context_settings=HELP_OPTIONS)
console = Console()
err_console = Console(stderr=True)
TIMESTEPS_HELP = "a tuned time grid (`dpms tune-grid --out FILE`) of this model, solver and NFE, instead of --skip/--t-end"


def _usage_errors() -> tuple[type[Exception], ...]:
    """click's ClickException, and typer's own copy of it (typer ≥ 0.26 vendors click as typer._click)."""
    import importlib

    found = []
    for module in ("click.exceptions", "typer._click.exceptions"):
        try:
            found.append(importlib.import_module(module).ClickException)
        except (ImportError, AttributeError):
            pass
    return tuple(found)


def _plain_one_line(message: str) -> str:
    """The message as one line of plain text: terminal escape codes (torch's errors carry bold markers)
    removed and line breaks folded, so the error stays one line whatever raised it."""
    return " ".join(strip_ansi(message).split())


def _print_error(error: DpmsError) -> None:
    """`error: MESSAGE` on stderr. The message is escaped: rich would read "[model, optimizer]" or a
    path like run[1]/ckpt.pth as markup tags and silently drop them."""
    err_console.print("[bold red]error:[/] " + escape(_plain_one_line(str(error))), highlight=False, soft_wrap=True)


_WARNED: set[str] = set()


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """A library warning (a codebase list's repeated index, a singular covariance) as one line, not
    Python's two (its source line is the library's, of no use to a user), and once per command, not
    once per batch."""
    text = f"warning: {_plain_one_line(str(message))}\n"
    if text in _WARNED:
        return ""
    _WARNED.add(text)
    return text


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script and of `python -m dpms`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    warnings.formatwarning = _one_line_warning
    # torchrun passes everything after `-m dpms --` through; drop a leading "--" separator.
    if argv and argv[0] == "--":
        argv = argv[1:]
    try:
        # With standalone_mode=False click returns (not raises) the code of a `raise typer.Exit(code)`.
        code = app(args=argv, prog_name="dpms", standalone_mode=False)
    except DpmsError as e:
        _print_error(e)
        return 2
    except typer.Exit as e:
        return e.exit_code
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("interrupted")
        return 130
    except _usage_errors() as e:  # bad options or arguments: click's one-paragraph usage message
        e.show()
        return e.exit_code if isinstance(e.exit_code, int) and e.exit_code else 2
    except OSError as e:  # a full disk or a forbidden folder met where no command said what was kept
        from .outputs import write_failure

        failure = write_failure(e, "files written before it are kept")
        if failure is None:
            raise
        _print_error(failure)
        return 2
    return code if isinstance(code, int) else 0


def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        console.print(f"dpms {__version__}", highlight=False)
        raise typer.Exit(0)


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", "-V", metavar="", callback=_print_version, is_eager=True, help="print the dpms version and exit"),
) -> None:
    """Fast ODE solvers for diffusion models, and FID benchmarks."""


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
    for col in ("name", "order", "NFE rule", "options", "paper", "default grid"):
        table.add_column(col)
    for name, spec in solvers().items():
        skip = spec.default_skip if isinstance(spec.default_skip, str) else "discrete_uniform (discrete) / time_uniform"
        options = ", ".join(f"{k}={v}" for k, v in spec.options.items())
        table.add_row(name, spec.order_text, spec.rule, options, spec.paper, skip)
    console.print(table)
    from .sampler.protocols import CODEBASE_SOLVERS

    loops = "; ".join(f"{protocol}: {', '.join(names)}" for protocol, names in CODEBASE_SOLVERS.items())
    console.print(f"--protocol runs a codebase's own loop (discrete models, skip discrete_uniform/discrete_quadratic) — {loops}", highlight=False)


def _parse_batch(batch: str) -> int | str:
    """--batch: a positive integer or 'auto'."""
    if batch == "auto":
        return batch
    if not batch.isdigit() or int(batch) < 1:
        raise DpmsError(f"--batch takes a positive integer or 'auto', got {batch!r}")
    return int(batch)


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


def _parse_labels(labels: Optional[str]) -> Optional[list[int]]:
    """--labels 3,207,980 → [3, 207, 980]; whether they fit the model's classes is checked by `generate`."""
    if not labels:
        return None
    try:
        return [int(v) for v in labels.split(",")]
    except ValueError:
        raise DpmsError(f"--labels takes comma-separated class indices such as 3,207,980, got {labels!r}") from None


@app.command("sample")
def sample_command(
    model: str = typer.Option("gmm", help="'gmm' (the exact model), 'digits', or a checkpoint preset (see `dpms models`)"),
    solver: str = typer.Option("dpm3", help="solver name (see `dpms solvers`)"),
    nfe: Optional[int] = typer.Option(10, help="network evaluations per sample (ignored by adaptive solvers)"),
    num: int = typer.Option(64, help="number of samples"),
    batch: str = typer.Option("64", help="samples per batch, or 'auto' (CUDA: the largest that fits with the solver's state; CPU: best samples/s)"),
    seed: int = typer.Option(0, help="sample i uses noise derived from (seed, i), so samples do not depend on --batch (up to round-off)"),
    out: Path = typer.Option(Path("out/samples"), help="output folder"),
    checkpoint: Optional[str] = typer.Option(None, help="checkpoint file or folder (default: look up the preset's file)"),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, ..."),
    dtype: str = typer.Option("fp32", help="network precision: fp32, fp16 or bf16 (autocast)"),
    compile: bool = typer.Option(False, "--compile", metavar="", help="torch.compile the network"),
    cuda_graphs: bool = typer.Option(False, "--cuda-graphs", metavar="", help="torch.compile(mode='reduce-overhead'): CUDA graphs for the network (CUDA only)"),
    channels_last: bool = typer.Option(False, "--channels-last", metavar="", help="channels_last memory format for network and batch"),
    skip: Optional[str] = typer.Option(None, help="time grid: logSNR, time_uniform, time_quadratic, discrete_uniform, discrete_quadratic, karras (EDM's; --option rho=7)"),
    t_end: Optional[float] = typer.Option(None, help="end time ε of the grid, inside the schedule's range (default: the schedule's: 1/N for discrete models, the smallest time they have; 1e-3 for score_sde's continuous VP, where DPM-Solver uses 1e-4 above 15 NFE)"),
    classifier: Optional[str] = typer.Option(None, help="noisy classifier checkpoint for classifier guidance"),
    guidance_scale: float = typer.Option(0.0, help="classifier guidance scale s"),
    labels: Optional[str] = typer.Option(None, help="class labels, comma-separated (default: random from the seed)"),
    no_png: bool = typer.Option(False, "--no-png", metavar="", help="write only the .npz"),
    no_verify: bool = typer.Option(False, "--no-verify", metavar="", help="skip the published-hash check (your own weights in a preset's format)"),
    option: list[str] = typer.Option([], help="solver option key=value, repeatable (e.g. order_plan=fixed; for any solver afs=true, denoise_to_zero=true, rho=7)"),
    force: bool = typer.Option(False, "--force", metavar="", help="replace the samples of an earlier run in --out (its PNGs are removed first)"),
    threads: Optional[int] = typer.Option(None, help=THREADS_HELP),
    protocol: Optional[str] = typer.Option(None, help="run a codebase's own loop instead of dpms's grid: ddim-code (ermongroup/ddim) or pndm-code (luping-liu/PNDM); discrete models, skip discrete_uniform/discrete_quadratic"),
    timesteps: Optional[Path] = typer.Option(None, help=TIMESTEPS_HELP),
) -> None:
    """Sample a model with one solver; writes samples.npz (and PNGs + grid.png for images)."""
    from .generate import generate, load_target
    from .sampler import get_solver

    set_threads(threads)
    check_device(device)
    get_solver(solver)  # unknown solver: fail before loading anything
    options = _parse_options(option)
    if protocol is not None:
        options["protocol"] = protocol
    if timesteps is not None:
        options["timesteps"] = _tuned_grid(timesteps, model, solver, nfe, skip=skip, t_end=t_end, protocol=protocol)
    class_labels = _parse_labels(labels)
    batch_size = _parse_batch(batch)
    target = load_target(model, checkpoint, device, dtype, classifier, guidance_scale, verify_hash=not no_verify,
                         channels_last=channels_last, compile=compile, cuda_graphs=cuda_graphs)
    if batch_size == "auto":
        from .generate import auto_batch_size

        batch = auto_batch_size(target, solver, nfe, device)
        console.print(f"--batch auto: {batch}", highlight=False)
    else:
        batch = batch_size
    summary = generate(
        target, solver, nfe, num, batch, seed, out, device=device, skip=skip, t_end=t_end,
        class_labels=class_labels, save_png=not no_png, console=console, force=force, **options,
    )
    used = ", ".join(map(str, summary["nfe_used_per_batch"]))
    console.print(
        f"{summary['num']} samples from {model} with {solver}: NFE used {used}, t_end {summary['t_end']:g}, "
        f"{summary['seconds']:.2f} s ({summary['seconds'] / summary['num'] * 1000:.2f} ms/sample) → {out}"
    )
    if summary["interrupted"]:  # what was finished is saved, but the run did not do what was asked
        raise typer.Exit(130)


def _tuned_grid(path: Optional[Path], model: str, solver: str, nfe: Optional[int], **conflicting) -> Optional[list[float]]:
    """--timesteps FILE: the grid's times; a grid of another model, solver or NFE, or given with an option that
    would also set the grid (--skip, --t-end, --protocol), is refused in one line."""
    if path is None:
        return None
    given = [f"--{name.replace('_', '-')}" for name, value in conflicting.items() if value is not None]
    if given:
        raise DpmsError(f"--timesteps fixes the whole grid; drop {' and '.join(given)}")
    from .sampler.tuning import load_grid

    return load_grid(path, model, solver, nfe).timesteps


# ---------------------------------------------------------------------------------------------
# dpms tune-grid  (a time grid tuned for one model, solver and NFE; dpms/tune.py)
# ---------------------------------------------------------------------------------------------
@app.command("tune-grid")
def tune_grid_command(
    model: str = typer.Option("gmm", help="'gmm' (the exact model), 'digits', or a checkpoint preset (see `dpms models`)"),
    solver: str = typer.Option("dpm2m", help="a solver with one network call per step (NFE = steps): ddim, dpm2m, dpmpp2m, dpmpp3m, ipndm, unipc3, deis3, ..."),
    nfe: int = typer.Option(5, help="network evaluations (= steps) of the grid"),
    out: Path = typer.Option(..., "--out", help="grid file to write (JSON), for --timesteps and configs' grid:"),
    method: str = typer.Option("gits", help="gits (dynamic programming over teacher-measured step costs) or dmn (model-free λ optimisation)"),
    num: int = typer.Option(256, help="gits: tuning samples (x_T of (seed, i))"),
    seed: int = typer.Option(0, help="gits: seed of the tuning x_T (measure the grid on another seed)"),
    candidates: int = typer.Option(60, help="gits: steps of the fine candidate grid"),
    skip: Optional[str] = typer.Option(None, help="gits: skip type of the candidate grid (default: the solver's)"),
    coeff: float = typer.Option(1.15, help="gits: GITS's coefficient scaling each later step's cost (1.15 in GITS)"),
    teacher: str = typer.Option("dpm3", help="gits: teacher solver between candidates, or 'ode' (DOP853, rtol 1e-8)"),
    teacher_substeps: int = typer.Option(4, help="gits: teacher steps per candidate interval"),
    refine: int = typer.Option(0, help="gits: sweeps of coordinate descent on the full solver's error to the teacher (0: GITS as published)"),
    trunc: Optional[int] = typer.Option(None, help="dmn: first steps whose error terms add as root-sum-squares (default 3 for NFE ≤ 7, else 0)"),
    power: float = typer.Option(2.0, help="dmn: error proxy σ^power/α per node (DMN: 2; 1 for pixel-space models)"),
    t_end: Optional[float] = typer.Option(None, help="end time of the grid (default: the schedule's)"),
    checkpoint: Optional[str] = typer.Option(None, help="checkpoint file or folder (default: the preset's file)"),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, ..."),
    threads: Optional[int] = typer.Option(None, help=THREADS_HELP),
    force: bool = typer.Option(False, "--force", metavar="", help="replace an existing --out file"),
    option: list[str] = typer.Option([], help="solver option key=value, repeatable"),
) -> None:
    """Tune the time grid of one solver at one NFE for a model (GITS or DMN); writes a grid file for --timesteps."""
    from .sampler.tuning import check_tunable
    from .tune import tune_grid

    set_threads(threads)
    check_device(device)
    check_tunable(solver, nfe, method)  # bad input: fail before loading anything
    if out.exists() and not force:
        raise DpmsError(f"{out} exists; choose another --out or pass --force")
    grid = tune_grid(model, solver, nfe, num=num, method=method, seed=seed, candidates=candidates, skip=skip, coeff=coeff,
                     teacher=teacher, teacher_substeps=teacher_substeps, refine=refine, trunc=trunc, power=power, t_end=t_end,
                     checkpoint=checkpoint, device=device, console=err_console, **_parse_options(option))
    grid.write(out, overwrite=force)
    times = ", ".join(f"{t:.4g}" for t in grid.timesteps)
    console.print(f"{method} grid for {model} {solver} NFE {nfe}: [{times}], cost {grid.cost:.4g} → {escape(str(out))}",
                  highlight=False, soft_wrap=True)


# ---------------------------------------------------------------------------------------------
# dpms train digits / dpms train digits-classifier  (reproduce checkpoints/digits)
# ---------------------------------------------------------------------------------------------
train_app = typer.Typer(no_args_is_help=True, help="Reproduce the small models that ship in checkpoints/digits.", context_settings=HELP_OPTIONS)
app.add_typer(train_app, name="train")


def _positive(**values: int) -> None:
    """Counts a command cannot run with zero or fewer of: one line naming the option."""
    for name, value in values.items():
        if value < 1:
            raise DpmsError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


@train_app.command("digits")
def train_digits_command(
    steps: int = typer.Option(SHIPPED_RECIPE["steps"], help="optimizer steps (batch 128)"),
    seed: int = typer.Option(0, help="seeds initialisation, dropout, data order, dequantisation, steps n and noise"),
    out: Optional[Path] = typer.Option(None, help="output folder (default: checkpoints/digits)"),
    threads: int = typer.Option(SHIPPED_RECIPE["threads"], help="torch CPU threads (the shipped weights were made with 1; the float result depends on it)"),
    held_out: bool = typer.Option(SHIPPED_RECIPE["held_out"], "--held-out/--all-digits", help="train on the 1,437 train-split digits (default, as the shipped weights; the 360 others stay unseen) or on all 1,797"),
    dequantise: str = typer.Option(SHIPPED_RECIPE["dequantisation"], help="spread each pixel around its grey level in every batch: none, uniform (over its bin), gaussian (std --dequantise-std) or gaussian-conditional (the same spread folded into the noise, regressing on E[eps | x_n, levels]; the shipped recipe)"),
    dequantise_std: float = typer.Option(SHIPPED_RECIPE["dequantisation_std"], help="std of the gaussian and gaussian-conditional spreads, in data units ([-1, 1]; one grey level is 1/8)"),
    dropout: float = typer.Option(SHIPPED_RECIPE["dropout"], help="the U-Net's dropout rate in training, 0 to below 1"),
    shift_augment: float = typer.Option(SHIPPED_RECIPE["shift_probability"], help="share of the digits shifted by one pixel in each batch, 0 to 1; the network is told the shift (non-leaking augmentation: unshifted at sampling)"),
    lr: float = typer.Option(SHIPPED_RECIPE["lr"], help="peak learning rate (AdamW), reached after 500 warm-up steps"),
    lr_decay: str = typer.Option(SHIPPED_RECIPE["lr_decay"], help="learning rate after warm-up: constant or cosine (to 0 at the last step)"),
    lambda_share: float = typer.Option(SHIPPED_RECIPE["lambda_share"], help="share of the training steps n drawn uniformly in half-log-SNR λ instead of uniformly in n (more of the low-noise end), 0 to 1"),
    snapshot_every: int = typer.Option(0, help="also write the EMA weights every N steps to OUT/snapshots/ (0: never)"),
    device: str = typer.Option("cpu", help="where the network trains: cpu (as the shipped weights) or cuda[:N] (same draws, other floats; the card records the GPU)"),
    check_only: bool = typer.Option(False, "--check-only", metavar="", help="no training: redo the card's sample check of the weights in --out"),
    check_samples: int = typer.Option(500, help="DDIM-50 samples of the card's check"),
    force: bool = typer.Option(False, "--force", metavar="", help="replace weights already in --out (by default the shipped ones are kept)"),
) -> None:
    """Train the digits DDPM (ε-prediction, L_simple), write the EMA weights, card and a DDIM-50 sample grid.

    The defaults reproduce the shipped weights (checkpoints/digits/digits_ddpm.json records the recipe). The run
    writes its state to OUT/train_state.pt every 1,000 steps; the same command resumes an interrupted run."""
    from .digits import DDPM_FILE, DIGITS_DIR, check_digits_ddpm, reproduce_digits_ddpm
    from .outputs import refuse_to_replace

    _positive(steps=steps, check_samples=check_samples)
    if lr <= 0:
        raise DpmsError(f"--lr must be positive, got {lr}")
    if not 0.0 <= lambda_share <= 1.0:
        raise DpmsError(f"--lambda-share must be between 0 and 1, got {lambda_share}")
    if not 0.0 < dequantise_std <= 0.5:
        raise DpmsError(f"--dequantise-std must be above 0 and at most 0.5 (data units; one grey level is 0.125), got {dequantise_std}")
    if not 0.0 <= dropout < 1.0:
        raise DpmsError(f"--dropout must be at least 0 and below 1, got {dropout}")
    if not 0.0 <= shift_augment <= 1.0:
        raise DpmsError(f"--shift-augment must be between 0 and 1 (the share of shifted digits), got {shift_augment}")
    set_threads(threads)
    check_device(device)
    if not check_only:
        refuse_to_replace([Path(out or DIGITS_DIR) / DDPM_FILE], force, "trained weights", "pass --out DIR to train into another folder")
    if check_only:
        check_digits_ddpm(directory=out, console=console, check_samples=check_samples, seed=seed)
        return
    from .training.diffusion import LR_DECAYS

    from .digits import DEQUANTISATIONS

    if dequantise not in DEQUANTISATIONS:
        raise DpmsError(f"--dequantise must be one of {', '.join(DEQUANTISATIONS)}, got {dequantise!r}")
    if lr_decay not in LR_DECAYS:
        raise DpmsError(f"--lr-decay must be one of {', '.join(LR_DECAYS)}, got {lr_decay!r}")
    card = reproduce_digits_ddpm(steps=steps, seed=seed, directory=out, console=console, check_samples=check_samples,
                                 snapshot_every=snapshot_every, held_out=held_out, dequantisation=dequantise,
                                 dequantisation_std=dequantise_std, dropout=dropout, shift_probability=shift_augment, lr=lr,
                                 lr_decay=lr_decay, lambda_share=lambda_share, device=device)
    check = card[f"check_ddim50_{check_samples}_samples"]
    console.print(f"final loss {card['final_loss_last_500_steps']:.4f}, {card['wall_time_s']:.0f} s; "
                  f"FD (digits features) of {check_samples} DDIM-50 samples {check['fd_samples_vs_real']:.3f} "
                  f"(held-out real floor {check['fd_floor_held_out_vs_rest']:.3f})")


@train_app.command("digits-classifier")
def train_digits_classifier_command(
    epochs: int = typer.Option(30, help="passes over the 1,437 training digits"),
    seed: int = typer.Option(0, help="seeds initialisation, dropout, data order and augmentation"),
    out: Optional[Path] = typer.Option(None, help="output folder (default: checkpoints/digits)"),
    threads: int = typer.Option(1, help="torch CPU threads (the shipped files were made with 1; results depend on it)"),
    force: bool = typer.Option(False, "--force", metavar="", help="replace files already in --out (by default the shipped ones are kept)"),
) -> None:
    """Train the digit classifier behind "FD (digits features)" and write its weights and the real-data stats."""
    from .digits import CLASSIFIER_FILE, DIGITS_DIR, STATS_FILE, reproduce_digits_classifier
    from .outputs import refuse_to_replace

    _positive(epochs=epochs)
    set_threads(threads)
    refuse_to_replace([Path(out or DIGITS_DIR) / name for name in (CLASSIFIER_FILE, STATS_FILE)], force,
                      "trained weights and statistics", "pass --out DIR to train into another folder")
    info = reproduce_digits_classifier(epochs=epochs, seed=seed, directory=out, console=console)
    console.print(f"held-out accuracy {info['held_out_accuracy']:.4f} ({info['split']['held_out']} digits)")


# ---------------------------------------------------------------------------------------------
# dpms models / dpms download  (checkpoint presets of checkpoints/registry.yaml)
# ---------------------------------------------------------------------------------------------
@app.command("models")
def models_command() -> None:
    """List the model presets: architecture, image shape, parameters, and whether the file is present."""
    import os

    from rich.table import Table

    from .models import checkpoints

    env = os.environ.get(checkpoints.ENV_VAR)
    table = Table(
        title="dpms models",
        caption=(
            f"dpms looks for a preset's file at --checkpoint PATH, then ${checkpoints.ENV_VAR}/<file> "
            f"({env or 'unset'}), then ./checkpoints/<file> and {checkpoints.REPO_ROOT / 'checkpoints'}/<file>"
        ),
    )
    # at 80 columns seven columns cut every word: names stay whole, the rest folds into two columns
    table.add_column("name", no_wrap=True)
    table.add_column("model", overflow="fold")
    table.add_column("file, status", overflow="fold", ratio=1)
    for name, preset in checkpoints.presets().items():
        params = f"{preset.params:,} params" if preset.params else "no params"
        shape = "×".join(map(str, preset.image_shape))
        table.add_row(name, f"{preset.kind}, {preset.arch}, {shape}, {params}", f"{escape(preset.file or '—')} — {_file_status(preset)}")
    console.print(table)


def _file_status(preset) -> str:
    """'present: PATH', or the command that gets this preset's file (paths escaped: rich markup)."""
    from .models import checkpoints

    if preset.file is None:
        return "built in (no file)"
    found = checkpoints.find_checkpoint(preset)
    if found is not None:
        return f"[green]present[/]: {escape(str(found))}"
    if preset.download == "direct":
        return f"[yellow]missing[/]: `dpms download {preset.name}`"
    if preset.download == "manual":
        return f"[yellow]missing[/]: by hand (`dpms download {preset.name}` says from where)"
    return f"[yellow]missing[/]: `{preset.reproduce}`" if preset.reproduce else "[yellow]missing[/]"


@app.command("download")
def download_command(
    name: str = typer.Argument(..., help="model preset (see `dpms models`)"),
    to: Optional[Path] = typer.Option(None, help="checkpoint root folder (default: $DPMS_CHECKPOINTS, else checkpoints/)"),
) -> None:
    """Download a preset's checkpoint, verify its published hash, and move it into place atomically."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    from .models import checkpoints
    from .models.download import download

    preset = checkpoints.get_preset(name)
    # The bar starts with the first byte, so refusals (manual or shipped presets) print only their error.
    bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=console)
    tasks = {}

    def progress(file_name: str, done: int, total: int | None) -> None:
        if not tasks:
            bar.start()
        if file_name not in tasks:
            tasks[file_name] = bar.add_task(file_name, total=total)
        bar.update(tasks[file_name], completed=done)

    try:
        path = download(preset, to=to, progress=progress)
    finally:
        if tasks:
            bar.stop()
    console.print(f"{name}: {escape(str(path))}", highlight=False, soft_wrap=True)
    if to is not None and not _is_searched(preset, path):
        console.print(
            f"note: dpms sample looks there only with {checkpoints.ENV_VAR}={escape(str(to))} or "
            f"--checkpoint {escape(str(path))}", highlight=False, soft_wrap=True,
        )


def _is_searched(preset, path: Path) -> bool:
    """Whether `load` would find `path` without --checkpoint (it is among the preset's search paths)."""
    from .models import checkpoints

    return path.resolve() in [p.resolve() for p in checkpoints.search_paths(preset)]


# ---------------------------------------------------------------------------------------------
# dpms bench  (FID / FD tables over solvers × NFE; dpms/bench)
# ---------------------------------------------------------------------------------------------
def _comma_list(value: Optional[str], cast=str) -> Optional[list]:
    if value is None:
        return None
    try:
        return [cast(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise DpmsError(f"expected a comma-separated list of integers, got {value!r}") from None


@app.command("bench")
def bench_command(
    config: Path = typer.Option(Path("configs/digits.yaml"), help="benchmark config (YAML); see configs/"),
    model: Optional[str] = typer.Option(None, help="replace the config's model preset ('gmm': the exact model)"),
    checkpoint: Optional[str] = typer.Option(None, help="checkpoint file or folder of the model"),
    solvers: Optional[str] = typer.Option(None, help="comma-separated solver names or config labels to run"),
    nfe: Optional[str] = typer.Option(None, help="comma-separated NFE list (replaces the config's columns)"),
    num: Optional[int] = typer.Option(None, help="samples per cell"),
    batch: Optional[int] = typer.Option(None, help="samples per batch (results do not depend on it up to round-off: < 1e-4 relative, see --rel-tol)"),
    seed: Optional[int] = typer.Option(None, help="sample i of every cell uses noise derived from (seed, i)"),
    out: Optional[Path] = typer.Option(None, help="output folder (default: the config's, else results/<name>)"),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, ... (under torchrun: cuda = one GPU per local rank)"),
    threads: Optional[int] = typer.Option(None, help=THREADS_HELP),
    save_images: bool = typer.Option(False, "--save-images", metavar="", help="also write every sample as a PNG under OUT/images/"),
    compile: bool = typer.Option(False, "--compile", metavar="", help="torch.compile the network (results are the same cells)"),
    cuda_graphs: bool = typer.Option(False, "--cuda-graphs", metavar="", help="torch.compile(mode='reduce-overhead'): CUDA graphs for the network (CUDA only)"),
    channels_last: bool = typer.Option(False, "--channels-last", metavar="", help="channels_last memory format for network and batch"),
    features: Optional[str] = typer.Option(None, help="inception, digits or exact (replaces the config's)"),
    ref_stats: Optional[str] = typer.Option(None, help="reference statistics .npz (mu, sigma)"),
    inception_weights: Optional[str] = typer.Option(None, help="pytorch-fid Inception weights file (pt_inception-2015-12-05-6726825d.pth)"),
    ode_error: Optional[bool] = typer.Option(None, "--ode-error/--no-ode-error", show_default=False, metavar="",
                                             help="also measure each sample's mean L2 distance to the model's own converged ODE solution "
                                                  "from the same x_T (default: the config's ode_error)"),
    check: Optional[Path] = typer.Option(None, help="baseline results.json: exit 1 if a cell moved beyond --tol or is missing"),
    tol: float = typer.Option(0.0, help="absolute tolerance of --check"),
    rel_tol: float = typer.Option(CHECK_REL_TOL, help="relative tolerance of --check (a cell may move by max(tol, rel_tol·|baseline|)); "
                                  "the default covers the round-off of another --batch, --threads or process count (measured < 1e-4: benchmarks/roundoff.py); 0: exact"),
    check_subset: bool = typer.Option(False, "--check-subset", metavar="", help="--check only the cells this run has (a reduced grid against a full table)"),
    force: bool = typer.Option(False, "--force", metavar="", help="replace a report of another grid or settings already in --out"),
    timesteps: list[Path] = typer.Option([], help="tuned grid file (`dpms tune-grid --out`), repeatable: the grid of the cells of its solver and NFE"),
) -> None:
    """Run a benchmark config (default: the digits model, every solver × NFE, < 10 min on 2 CPU cores).

    Finished cells are kept in OUT/cells/ and skipped by a rerun; results.json/csv/md and fid_vs_nfe.png
    (ode_error_vs_nfe.png with --ode-error) are rewritten after every cell. A report of another grid or settings in OUT is kept: pass --out or --force.
    """
    from .bench import Overrides, apply_overrides, load_config, run_benchmark
    from .bench.check import compare, load_baseline, print_check

    overrides = Overrides(
        model=model, checkpoint=checkpoint, solvers=_comma_list(solvers), nfe=_comma_list(nfe, int), num=num,
        batch=batch, seed=seed, features=features, reference_stats=ref_stats, inception_weights=inception_weights,
        ode_error=ode_error,
    )
    settings = apply_overrides(load_config(config), overrides)
    if timesteps:
        from .bench.grids import apply_grid_files

        apply_grid_files(settings, timesteps)
    baseline = load_baseline(check) if check is not None else None  # a bad baseline fails before sampling
    set_threads(threads)
    check_device(device)
    acceleration = {"compile": compile, "cuda_graphs": cuda_graphs, "channels_last": channels_last}
    result = run_benchmark(settings, out, device=device, save_images=save_images, console=console, acceleration=acceleration,
                           force=force)
    if result.document is None:  # not rank 0 of a torchrun group: rank 0 reports
        return
    console.print(result.table)
    console.print(f"{len(result.computed)} cells run now, {len(result.records) - len(result.computed)} loaded → {result.out_dir}", highlight=False)
    if baseline is not None:
        outcome = compare(result.records, baseline, tol, rel_tol, subset=check_subset)
        print_check(outcome, check, tol, rel_tol, console)
        if not outcome.ok:
            raise typer.Exit(1)


# ---------------------------------------------------------------------------------------------
# dpms stats / dpms fid
# ---------------------------------------------------------------------------------------------
_FEATURES_HELP = "feature network: " + ", ".join(f"{kind.name} ({kind.help})" for kind in FEATURE_KINDS.values())


@app.command("stats")
def stats_command(
    source: Path = typer.Argument(..., help="folder of images, or an .npz with 'samples' (uint8 NHWC or floats in [-1, 1])"),
    out: Path = typer.Option(..., "--out", help="statistics file to write (.npz with mu, sigma, num)"),
    inception_weights: Optional[Path] = typer.Option(None, "--inception-weights", help="pt_inception-2015-12-05-6726825d.pth (default: $DPMS_INCEPTION, then $TORCH_HOME/hub/checkpoints)"),
    features: str = typer.Option("inception", help=_FEATURES_HELP),
    batch: int = typer.Option(50, help="images per batch"),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, ..."),
    threads: Optional[int] = typer.Option(None, help=THREADS_HELP),
) -> None:
    """Feature statistics (mu, sigma) of images or samples, in the format of the FID reference files."""
    from .evaluation import write_stats
    from .outputs import check_out_dir

    set_threads(threads)
    check_device(device)
    check_out_dir(out.parent, "--out's folder")  # before any image is read
    if out.is_dir():
        raise DpmsError(f"--out {out} is a folder; pass the path of the statistics file to write, e.g. {out / 'stats.npz'}")

    stats = write_stats(source, out, features, inception_weights, batch, device, progress=console.is_terminal)
    console.print(f"{stats.num} samples, {stats.dims}-d features → {out}", highlight=False, soft_wrap=True)


@app.command("fid")
def fid_command(
    samples: Path = typer.Argument(..., help="folder of images, samples .npz, or statistics .npz"),
    ref: Path = typer.Argument(..., help="reference statistics .npz (e.g. fid_stats_cifar10_train.npz) or folder of images"),
    inception_weights: Optional[Path] = typer.Option(None, "--inception-weights", help="pt_inception-2015-12-05-6726825d.pth (default: $DPMS_INCEPTION, then $TORCH_HOME/hub/checkpoints)"),
    features: str = typer.Option("inception", help=_FEATURES_HELP),
    batch: int = typer.Option(50, help="images per batch"),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, ..."),
    threads: Optional[int] = typer.Option(None, help=THREADS_HELP),
) -> None:
    """Print the FID (or Fréchet distance in other features) between samples and a reference."""
    from .evaluation import fid_of_paths

    set_threads(threads)
    check_device(device)
    name, value = fid_of_paths(samples, ref, features, inception_weights, batch, device, progress=console.is_terminal)
    console.print(f"{name}: {value:.6f}", highlight=False, soft_wrap=True)


# ---------------------------------------------------------------------------------------------
# dpms speed  (loop time against NFE × forward, and against diffusers; dpms/speed.py)
# ---------------------------------------------------------------------------------------------
@app.command("speed")
def speed_command(
    model: str = typer.Option("digits", help="'gmm', 'digits' or a checkpoint preset (see `dpms models`)"),
    solver: str = typer.Option("dpm3", help="fixed-NFE ODE solver (see `dpms solvers`)"),
    nfe: int = typer.Option(10, help="network evaluations per sample"),
    batch: str = typer.Option("256", help="samples per batch, or 'auto' (CUDA: largest that fits; CPU: best images/s)"),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, ..."),
    dtype: str = typer.Option("fp32", help="network precision: fp32, fp16 or bf16 (autocast)"),
    compile: bool = typer.Option(False, "--compile", metavar="", help="torch.compile the network"),
    cuda_graphs: bool = typer.Option(False, "--cuda-graphs", metavar="", help="torch.compile(mode='reduce-overhead'): CUDA graphs for the network"),
    channels_last: bool = typer.Option(False, "--channels-last", metavar="", help="channels_last memory format for network and batch"),
    repeats: int = typer.Option(5, help="timed repeats of each loop (median reported)"),
    checkpoint: Optional[str] = typer.Option(None, help="checkpoint file or folder (default: the preset's file)"),
    random_weights: bool = typer.Option(False, "--random-weights", metavar="", help="time the preset's architecture with random weights (no file needed)"),
    no_diffusers: bool = typer.Option(False, "--no-diffusers", metavar="", help="skip the diffusers comparison"),
    threads: Optional[int] = typer.Option(None, help=THREADS_HELP),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the report as JSON (atomically)"),
    timesteps: Optional[Path] = typer.Option(None, help=TIMESTEPS_HELP),
) -> None:
    """Time the sampling loop against NFE × one forward pass and against diffusers' scheduler."""
    import json

    from .atomic import atomic_write_text
    from .speed import format_report, measure_speed

    set_threads(threads)
    check_device(device)
    report = measure_speed(
        model, solver, nfe, _parse_batch(batch), device, dtype, compile=compile, cuda_graphs=cuda_graphs,
        channels_last=channels_last, repeats=repeats, checkpoint=checkpoint, random_weights=random_weights,
        diffusers=not no_diffusers, timesteps=_tuned_grid(timesteps, model, solver, nfe),
    )
    for line in format_report(report):
        console.print(line, highlight=False, soft_wrap=True)
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(report.to_dict(), indent=2) + "\n")
        console.print(f"→ {json_out}", highlight=False)
