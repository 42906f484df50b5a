"""How far do bench cells move with the batch size, the thread count and the process count? (issue 16, item 8)

Sample i of a cell always starts from the same x_T, so a cell's samples do not depend on the batch or on
how the work is shared — up to floating-point round-off: a batched matrix product or convolution may sum
in another order for another batch size or thread count, and feature statistics are merged in another
order across processes. This measures that round-off, cell by cell, on a config (each variant runs the
config in its own folder, one process per variant) and prints the largest relative and absolute change of
the metric against the first variant. `dpms bench --check`'s default tolerance is chosen to cover it.

    python benchmarks/roundoff.py [--config configs/digits.yaml] [--solvers ddim,dpm3,dpmpp2m] [--nfe 10,20] [--num 200]
                                  [--out /tmp/dpms_roundoff] [--torchrun]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(config: str, solvers: str, nfe: str, num: int, out: Path, batch: int, threads: int, processes: int) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    args = ["bench", "--config", config, "--solvers", solvers, "--nfe", nfe, "--num", str(num), "--batch", str(batch),
            "--threads", str(threads), "--out", str(out)]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), "-m", "dpms", "--", *args]
    else:
        command = [sys.executable, "-m", "dpms", *args]
    subprocess.run(command, check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
    cells = json.loads((out / "results.json").read_text())["cells"]
    return {f"{c['label']}@{c['column']}": c["fid"] for c in cells}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/digits.yaml")
    parser.add_argument("--solvers", default="ddim,dpm3,dpmpp2m")
    parser.add_argument("--nfe", default="10,20")
    parser.add_argument("--num", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("/tmp/dpms_roundoff"))
    parser.add_argument("--torchrun", action="store_true", help="also 2 processes (torchrun)")
    args = parser.parse_args()
    variants = [("batch num, 1 thread", args.num, 1, 1), ("batch 64, 1 thread", 64, 1, 1), ("batch 7, 1 thread", 7, 1, 1),
                ("batch 64, 2 threads", 64, 2, 1)]
    if args.torchrun:
        variants.append(("batch 64, 2 processes", 64, 1, 2))
    results = {}
    for name, batch, threads, processes in variants:
        folder = args.out / name.replace(" ", "_").replace(",", "")
        results[name] = run(args.config, args.solvers, args.nfe, args.num, folder, batch, threads, processes)
    first_name, first = next(iter(results.items()))
    worst_rel = worst_abs = 0.0
    for name, values in list(results.items())[1:]:
        rel = max(abs(values[k] - v) / abs(v) for k, v in first.items())
        absolute = max(abs(values[k] - v) for k, v in first.items())
        worst_rel, worst_abs = max(worst_rel, rel), max(worst_abs, absolute)
        print(f"{name:>24} vs {first_name}: max relative change {rel:.2e}, max absolute {absolute:.2e} ({len(first)} cells)")
    print(f"largest: relative {worst_rel:.2e}, absolute {worst_abs:.2e}")


if __name__ == "__main__":
    main()
