"""`dpms bench`: Fréchet-distance tables over solvers × NFE that reproduce the papers' tables.

    config = load_config("configs/digits.yaml")
    result = run_benchmark(config, "results/digits")           # resumable; rank 0 writes under torchrun
    result.records[0]["fid"], result.records[0]["metric"]        # e.g. 3.1, "FD (digits features)"

Modules: `config` (YAML schema, flag overrides), `cells` (the solver × NFE grid, keys), `runner`
(streaming samples into feature statistics, sharded over processes), `ode_reference` (ode_error: the
model's converged ODE solution, checked and cached), `report` (cell files, results.json /
csv / md, the figure), `check` (comparison with a baseline run), `distributed` (torchrun).
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from .check import CheckResult, compare, load_baseline
from .config import DEFAULT_CONFIG, BenchConfig, Overrides, apply_overrides, load_config, parse_config
from .distributed import init_world
from .runner import BenchResult, check_save_images, prepare, run_cells

__all__ = ["run_benchmark", "load_config", "parse_config", "apply_overrides", "Overrides", "BenchConfig",
           "BenchResult", "compare", "load_baseline", "CheckResult", "DEFAULT_CONFIG", "default_out_dir"]


def default_out_dir(config: BenchConfig) -> Path:
    """The config's `out`, else results/<config name>."""
    return Path(config.out or f"results/{config.name}")


def run_benchmark(
    config: BenchConfig,
    out_dir: str | Path | None = None,
    device: str = "cpu",
    save_images: bool = False,
    console: Console | None = None,
    acceleration: dict | None = None,
    force: bool = False,
) -> BenchResult:
    """Check the config and its files, then run every unfinished cell, writing into out_dir.

    acceleration: channels_last / compile / cuda_graphs for the network (`dpms.models.acceleration`);
    how the network runs, not what a cell measures, so not part of the cells' keys.

    Under torchrun (WORLD_SIZE > 1) the samples of each cell are shared between the processes; only
    rank 0 writes, and only rank 0's result carries the JSON document. A report of another grid or settings
    already in out_dir is refused unless `force`.
    """
    from contextlib import nullcontext

    from .lock import folder_lock

    check_save_images(config, save_images)
    console = console or Console()
    world = init_world(device)
    out = Path(out_dir) if out_dir else default_out_dir(config)
    if world.is_main:
        from ..outputs import check_out_dir

        check_out_dir(out)  # an existing file or an unwritable folder fails now, not after the first cell
    try:
        prep = prepare(config, world.device, acceleration)  # every check before the folder is touched
        with folder_lock(out) if world.is_main else nullcontext():  # one writing run per folder
            return run_cells(prep, out, world, save_images, console, force=force)
    finally:
        world.close()
