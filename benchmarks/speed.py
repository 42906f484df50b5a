"""Speed figures of dpms's sampling loop: overhead over NFE × bare forward, vs diffusers, solver cost
with a null network, the time of a 50k-sample FID run, peak memory.

    python benchmarks/speed.py                      # CPU grid → results/speed/cpu.{json,md}
    python benchmarks/speed.py --device cuda        # GPU grid → results/speed/cuda.{json,md}
    python benchmarks/speed.py --device cuda --models cifar10-ddpm --solvers ddim,dpm3 --max-batch 2048 --resume

Rows are written as they finish (atomically); --resume keeps the rows already written and runs the rest, so
a run stopped by a time limit loses at most the row in progress.

Every row is one `dpms.speed.measure_speed` call (the same as `dpms speed ...`): the dpms loop, one bare
forward pass and diffusers' equivalent scheduler on the same network, batch and NFE, and both loops with a
null network, interleaved, `--repeats` times, medians reported. Run it on an otherwise idle machine: other load inflates every figure.
The targets (issue 6): overhead ≤ 1.05 on CPU with the digits model, ≤ 1.02 for the CIFAR-10 network on a
GPU; vs_diffusers ≥ 1.0 everywhere.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dpms.atomic import atomic_write_text  # noqa: E402
from dpms.speed import measure_speed  # noqa: E402

SOLVERS = [("ddim", 10), ("dpm3", 10), ("dpm2m", 10), ("dpmpp2m", 10), ("dpmpp3m", 10), ("pndm", 15)]

# (model, random weights, batch, dtypes, solvers)
CPU_GRID = [
    ("digits", False, 256, ["fp32"], SOLVERS),
    ("gmm", False, 1000, ["fp32"], SOLVERS[:3]),
    ("cifar10-ddpm", True, 8, ["fp32"], [("ddim", 10), ("dpm3", 10)]),
]
# The issue's GPU figures first (the CIFAR-10 network at NFE 10 in bf16 and fp32), so that a run cut short by
# a device's time limit has them; --resume continues with the rest.
CUDA_GRID = [
    ("cifar10-ddpm", True, "auto", ["bf16", "fp32"], [("ddim", 10), ("dpm3", 10)]),
    ("cifar10-ddpm", True, "auto", ["bf16", "fp32"], [("dpm2m", 10), ("dpmpp2m", 10)]),
    ("digits", False, 4096, ["fp32"], SOLVERS),
]


def machine(device: str) -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine()}
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def num(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def interval(ci) -> str:
    return "–" if not ci else f"{ci[0]:.3f}–{ci[1]:.3f}"


def verdicts(rows: list[dict], info: dict) -> list[str]:
    """The targets' status, computed from the rows (nothing here is typed in by hand)."""
    name = lambda r: f"{r['model']} {r['solver']} {r['dtype']}"  # noqa: E731
    out = []
    cpu = "gpu" not in info
    target_model, target = ("digits", 1.05) if cpu else ("cifar10-ddpm", 1.02)
    mine = [r for r in rows if r["model"] == target_model]
    if mine:
        worst = max(mine, key=lambda r: r["overhead"])
        met = all(r["overhead"] <= target for r in mine)
        out.append(f"- overhead ≤ {target} ({target_model}, {'CPU' if cpu else 'GPU'}): {'met' if met else 'NOT met'} — "
                   f"largest median {worst['overhead']:.3f} ({name(worst)})" + ("" if met else ": " + ", ".join(
                       f"{name(r)} {r['overhead']:.3f}" for r in mine if r["overhead"] > target)))
    paired = [r for r in rows if r["vs_diffusers"] is not None]
    if paired:
        below = [r for r in paired if r["vs_diffusers"] < 1.0]
        slower = [r for r in below if r.get("vs_diffusers_ci") and r["vs_diffusers_ci"][1] < 1.0]
        out.append(f"- vs_diffusers ≥ 1.0 (whole loop): median ≥ 1 in {len(paired) - len(below)} of {len(paired)} rows; "
                   + ("below 1 but with 1 inside the 95 % CI (not distinguishable from equal speed): "
                      + ", ".join(f"{name(r)} {r['vs_diffusers']:.3f}" for r in below if r not in slower) if below else "none below 1")
                   + ("; significantly slower than diffusers (CI below 1): " + ", ".join(f"{name(r)} {r['vs_diffusers']:.3f}" for r in slower) if slower else "; in no row is dpms significantly slower"))
        null_below = [r for r in paired if r["vs_diffusers_null"] < 1.0]
        out.append(f"- solver's own cost (null network) ≤ diffusers': {len(paired) - len(null_below)} of {len(paired)} rows"
                   + (" — not in: " + ", ".join(f"{name(r)} {r['vs_diffusers_null']:.2f}×" for r in null_below) if null_below else ""))
    if cpu:
        out.append("- GPU targets (overhead ≤ 1.02 for the CIFAR-10 network, images/s and the 50k-FID time in bf16/fp32): "
                   "not measured on this machine; `python benchmarks/speed.py --device cuda` writes them to results/speed/cuda.md.")
    return out


def markdown(rows: list[dict], info: dict, command: str) -> str:
    mib = lambda b: "–" if b is None else f"{b / 2**20:.1f}"  # noqa: E731
    lines = [
        f"# dpms speed on {info.get('gpu', info['cpu'])}",
        "",
        f"Generated by `{command}` (torch {info['torch']}, {info['threads']} CPU threads). Times: medians of the",
        "repeats. forward = one bare network call net(x, t_in) at the batch, without dpms's model wrapper (the floor);",
        "overhead = dpms loop / (NFE × forward), the wrapper counted as dpms's cost; vs_diffusers = diffusers' loop",
        "time / dpms's for the same bare network, batch, NFE and solver (> 1: dpms faster); both ratios are medians of",
        "the per-repeat ratios (the runs of one repeat are back to back, in reverse order every other repeat), with a",
        "distribution-free 95 % confidence interval of that median (CI). null ms = one loop with a network that returns",
        "a precomputed prediction: the solver's (dpms: and wrapper's) own cost, free of the network's timing noise;",
        "null × = diffusers' null loop / dpms's. dtype: what the network ran in (gmm: its closed-form ε, float64).",
        "FID 50k = sampling 50,000 images + their features (8-bit images as `dpms bench` quantises them, then",
        "pytorch-fid's InceptionV3 at 299×299 with random weights — the same cost — or the digits feature network;",
        "gmm: data space), timed at min(batch, 50) on CPU and min(batch, 500) on CUDA. Memory: the peak of one",
        "forward pass and of the whole loop; solver state = their difference in copies of the batch.",
        "",
        "| model | solver | NFE | batch | dtype | forward ms | loop ms | overhead | diffusers scheduler | diffusers ms | vs_diffusers | vs_diffusers CI "
        "| null ms dpms | null ms diffusers | null × | images/s | sampling 50k (min) | features 50k (min) | FID 50k (min) "
        "| peak fwd MiB | peak loop MiB | solver state (batches) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']}{' (random weights)' if r.get('random_weights') else ''} | {r['solver']} | {r['nfe']} | {r['batch']} | {r['dtype']} | "
            f"{r['forward_seconds'] * 1e3:.2f} | {r['loop_seconds'] * 1e3:.1f} | {r['overhead']:.3f} | {r['diffusers_scheduler'] or '–'} | "
            f"{num(r['diffusers_seconds'] and r['diffusers_seconds'] * 1e3, '.1f')} | {num(r['vs_diffusers'], '.3f')} | {interval(r.get('vs_diffusers_ci'))} | "
            f"{num(r['null_loop_ms_dpms'], '.2f')} | {num(r['null_loop_ms_diffusers'], '.2f')} | {num(r['vs_diffusers_null'], '.2f')} | "
            f"{r['images_per_second']:.1f} | {r['sampling_50k_seconds'] / 60:.1f} | {r['features_50k_seconds'] / 60:.1f} | "
            f"{r['fid50k_seconds'] / 60:.1f} | {mib(r['peak_forward_bytes'])} | "
            f"{mib(r['peak_loop_bytes'])} | {num(r['solver_state_batches'], '.1f')} |"
        )
    features = sorted({(r['model'], r['feature_network']) for r in rows})
    lines += ["", "Feature networks: " + "; ".join(f"{model}: {network}" for model, network in features) + "."]
    lines += ["", "## Targets (issue 6), read off the table above", "", *verdicts(rows, info)]
    return "\n".join(lines) + "\n"


def plan(grid, models=None, solvers=None, dtypes=None) -> list[tuple]:
    """The grid's rows (model, random weights, batch, dtype, solver, nfe), in order, filtered."""
    return [(model, rw, batch, dtype, solver, nfe)
            for model, rw, batch, model_dtypes, model_solvers in grid for dtype in model_dtypes for solver, nfe in model_solvers
            if (not models or model in models) and (not solvers or solver in solvers) and (not dtypes or dtype in dtypes)]


def row_key(row: dict) -> tuple:
    return (row["model"], row["solver"], row["nfe"], row["dtype"] if row["model"] != "gmm" else "fp32")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "speed")
    parser.add_argument("--models", help="comma-separated subset of the grid's models")
    parser.add_argument("--solvers", help="comma-separated subset of the grid's solvers")
    parser.add_argument("--dtypes", help="comma-separated subset of the grid's dtypes")
    parser.add_argument("--max-batch", type=int, default=8192, help="cap of --batch auto (CUDA: the largest power of two that fits)")
    parser.add_argument("--resume", action="store_true", help="keep the rows already in OUT/<device>.json and run the others")
    args = parser.parse_args()
    split = lambda v: set(v.split(",")) if v else None  # noqa: E731
    grid = CUDA_GRID if args.device.startswith("cuda") else CPU_GRID
    todo = plan(grid, split(args.models), split(args.solvers), split(args.dtypes))
    name = "cuda" if args.device.startswith("cuda") else "cpu"
    info = machine(args.device)
    command = "python benchmarks/speed.py" + (f" --device {args.device}" if name == "cuda" else "") + (f" --repeats {args.repeats}" if args.repeats != 5 else "")
    rows = []
    if args.resume and (args.out / f"{name}.json").exists():
        rows = json.loads((args.out / f"{name}.json").read_text())["rows"]
    done = {row_key(r) for r in rows}
    for model, random_weights, batch, dtype, solver, nfe in todo:
        if (model, solver, nfe, dtype) in done:
            continue
        report = measure_speed(model, solver, nfe, batch, args.device, dtype, repeats=args.repeats,
                               random_weights=random_weights, max_batch=args.max_batch).to_dict()
        report["random_weights"] = random_weights
        rows.append(report)
        print(f"{model:14s} {solver:8s} NFE {nfe:3d} batch {report['batch']:5d} {dtype}: overhead {report['overhead']:.3f}, "
              f"vs_diffusers {report['vs_diffusers'] if report['vs_diffusers'] is None else round(report['vs_diffusers'], 3)}, "
              f"null loop {report['null_loop_ms_dpms']:.2f} ms (diffusers {num(report['null_loop_ms_diffusers'], '.2f')}), "
              f"{report['images_per_second']:.1f} images/s, solver state {report['solver_state_batches']:.1f} batches", flush=True)
        # after every row, atomically: a run cut short (a device's time limit) keeps its rows, and --resume goes on
        atomic_write_text(args.out / f"{name}.json", json.dumps({"machine": info, "command": command, "rows": rows}, indent=1) + "\n")
        atomic_write_text(args.out / f"{name}.md", markdown(rows, info, command))
    print(f"→ {args.out / f'{name}.md'}")


if __name__ == "__main__":
    main()
