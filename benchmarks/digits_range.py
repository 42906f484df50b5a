"""Where does the digits model's own ODE solution leave the data range? (issue 17, criterion (i))

For each weights file (default: the shipped checkpoints/digits/digits_ddpm.pt; snapshots written by
`dpms train digits --snapshot-every N` work too), draws `--num` samples of seed 0 with DDIM at `--nfe` steps
(the card's check: `dpms.digits.ode_range_statistics`) and prints its `range_statistics` (fraction of pixels within
±1.1, range, RMS spread beyond −1 and beyond 1; the data's is the dequantisation's std, `--data-std`) and, along the same DDIM
trajectory, the fraction of the x₀ prediction (x − σ ε)/α beyond ±1.1 at a few values of σ/α — which
stretch of the ODE makes the overshoot.

    python benchmarks/digits_range.py [WEIGHTS ...] [--num 200] [--nfe 1000] [--data-std D]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from dpms.digits import DDPM_FILE, DIGITS_DIR, SHIPPED_RECIPE, digits_ddpm_from_weights, range_statistics
from dpms.digits.model import PRESET
from dpms.target import load_target

REPORT_AT = (0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 1.0)  # fractions of the DDIM steps done


@torch.no_grad()
def trajectory(weights: Path, num: int, nfe: int) -> tuple[dict, list[tuple[float, float]]]:
    """range_statistics of the DDIM-`nfe` samples and [(σ/α, fraction of x₀ predictions beyond ±1.1)] along the way."""
    model = digits_ddpm_from_weights(torch.load(weights, map_location="cpu", weights_only=True)).eval()
    target = load_target(PRESET, network=model)
    schedule, eps_fn = target.schedule, target.make_noise_fn()
    x = target.initial_noise(list(range(num)), 0, "cpu")
    t = torch.linspace(1.0, schedule.t_end, nfe + 1, dtype=torch.float64)  # DDIM's default time-uniform grid
    report = {max(1, round(f * nfe)) for f in REPORT_AT}
    path = []
    for i in range(nfe):  # DDIM, Song et al. 2021 Eq. 12 with σ_t = 0: x_u = α_u x̂₀ + σ_u ε
        a_s, s_s, a_u, s_u = (schedule.alpha(t[i]).item(), schedule.sigma(t[i]).item(),
                              schedule.alpha(t[i + 1]).item(), schedule.sigma(t[i + 1]).item())
        eps = eps_fn(x, t[i].float().expand(num))
        x0 = (x - s_s * eps) / a_s
        x = a_u * x0 + s_u * eps
        if i + 1 in report:
            path.append((s_s / a_s, (x0.abs() > 1.1).float().mean().item()))
    return range_statistics(x), path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", nargs="*", type=Path, default=[DIGITS_DIR / DDPM_FILE])
    parser.add_argument("--num", type=int, default=200)
    parser.add_argument("--nfe", type=int, default=1000)
    parser.add_argument("--data-std", type=float, default=SHIPPED_RECIPE["dequantisation_std"],
                        help="the training data's spread per level, printed beside the samples' (default: the shipped recipe's)")
    args = parser.parse_args()
    for weights in args.weights:
        stats, path = trajectory(weights, args.num, args.nfe)
        print(f"{weights}: DDIM-{args.nfe}, {args.num} samples: within ±1.1 {stats['fraction_pixels_within_1.1']:.5f}, "
              f"range {stats['pixel_range'][0]:.3f} … {stats['pixel_range'][1]:.3f}, spread beyond −1 / 1 "
              f"{stats['rms_beyond_-1'] or 0:.4f} / {stats['rms_beyond_1'] or 0:.4f} (data {args.data_std:.4f})")
        print("  x₀ prediction beyond ±1.1 along the way: " + ", ".join(f"σ/α {r:.3g}: {f:.4f}" for r, f in path))


if __name__ == "__main__":
    main()
