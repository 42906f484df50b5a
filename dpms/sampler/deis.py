"""DEIS (Zhang & Chen 2023, arXiv 2204.13902): the exponential integrator with a polynomial extrapolation of ε.

With ρ = σ/α = e^{−λ} and v = x/α the probability-flow ODE is dv/dρ = ε (DEIS Eq. 11 / Prop. 2), so exactly

    x_{i+1} = (α_{i+1}/α_i) x_i + α_{i+1} ∫_{ρ_i}^{ρ_{i+1}} ε dρ.

DEIS-k (tAB-k, DEIS Eq. 14) replaces ε by the degree-k Lagrange polynomial through the last k + 1 network
outputs ε_i, ε_{i−1}, …, ε_{i−k}, as a function of an interpolation variable u:

    x_{i+1} = (α_{i+1}/α_i) x_i + α_{i+1} Σ_j C_ij ε_{i−j},   C_ij = ∫_{ρ_i}^{ρ_{i+1}} ℓ_ij(u(ρ)) dρ,

ℓ_ij the Lagrange basis on the nodes u_i, …, u_{i−k}. `variant`: "tab" (u = t, the official tAB; its C_ij
written in t is the official ∫ ψ(τ, t_{i+1}) · (−½ d log ᾱ/dτ)/√(1 − ᾱ_τ) · ℓ_j(τ) dτ), "rhoab" (u = ρ, the
official ρAB) and "logrho" (u = log ρ, the variant diffusers' DEISMultistepScheduler implements). Steps
0, …, k − 1 use degrees 0, …, k − 1 while the history fills (official `get_ab_eps_coef`); degree 0 is DDIM.

The official code computes C_ij by a 10,000-point left Riemann sum in t. Here they are composite
Gauss–Legendre sums in λ (dρ = −e^{−λ} dλ, a smooth integrand): each step's λ-interval is cut into
PANELS equal panels, and for "tab" on a discrete schedule also at the table's points, where t(λ) has
kinks; GL_NODES nodes per panel. tests/test_deis.py checks them against scipy's adaptive quadrature in t.
All coefficients depend only on the grid and are computed before the loop.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..errors import DpmsError
from .registry import register
from .steps import combine, eval_at

PAPER = "DEIS (Zhang & Chen 2023)"
VARIANTS = ("tab", "rhoab", "logrho")
PANELS = 8
GL_NODES = 12


def _panels(schedule, lam: Tensor, variant: str) -> tuple[list[int], Tensor, Tensor]:
    """(step of each panel, panel start λ, panel end λ): PANELS equal panels per step, also cut at the
    table points of a discrete schedule where the interpolation variable is t."""
    cuts = None
    if variant == "tab" and schedule.is_discrete:
        cuts = schedule.lambda_(schedule.t_array.to(torch.float64)).sort().values
    step_of, starts, ends = [], [], []
    for i in range(len(lam) - 1):
        edges = torch.linspace(float(lam[i]), float(lam[i + 1]), PANELS + 1, dtype=torch.float64)
        if cuts is not None:
            lo, hi = sorted((float(lam[i]), float(lam[i + 1])))
            inside = cuts[(cuts > lo) & (cuts < hi)]
            edges = torch.cat([edges, inside]).sort(descending=bool(lam[i + 1] < lam[i])).values
        step_of += [i] * (len(edges) - 1)
        starts.append(edges[:-1])
        ends.append(edges[1:])
    return step_of, torch.cat(starts), torch.cat(ends)


def _interpolation_variable(schedule, variant: str, lam: Tensor) -> Tensor:
    if variant == "tab":
        return schedule.inverse_lambda(lam)
    return torch.exp(-lam) if variant == "rhoab" else -lam


def deis_coefficients(schedule, timesteps: Tensor, order: int, variant: str) -> list[list[float]]:
    """C_ij (module docstring) for every step i of the grid, j = 0 … degree of step i (float64)."""
    ts = timesteps.detach().to("cpu", torch.float64)
    lam = schedule.lambda_(ts)
    u_grid = ts if variant == "tab" else _interpolation_variable(schedule, variant, lam)
    step_of, a, b = _panels(schedule, lam, variant)
    x, w = np.polynomial.legendre.leggauss(GL_NODES)
    x, w = torch.from_numpy(x), torch.from_numpy(w)
    half = (b - a)[:, None] / 2
    nodes = (a[:, None] + b[:, None]) / 2 + half * x  # (panels, GL_NODES) in λ
    weights = half * w * -torch.exp(-nodes)  # dρ = −e^{−λ} dλ
    u = _interpolation_variable(schedule, variant, nodes.reshape(-1)).reshape(nodes.shape)
    step_of = torch.tensor(step_of)
    coefficients = []
    for i in range(len(ts) - 1):
        degree = min(order, i)
        ui = u_grid[i - degree : i + 1].flip(0)  # u_i, u_{i−1}, …, u_{i−degree}
        rows = step_of == i
        un, wn = u[rows], weights[rows]
        row = []
        for j in range(degree + 1):
            basis = torch.ones_like(un)
            for m in range(degree + 1):
                if m != j:
                    basis = basis * (un - ui[m]) / (ui[j] - ui[m])
            row.append(float((basis * wn).sum()))
        coefficients.append(row)
    return coefficients


def deis(noise_fn, schedule, x: Tensor, timesteps: Tensor, order: int, variant: str) -> Tensor:
    """Run DEIS-`order` (AB with a degree-`order` polynomial) over `timesteps` (NFE = steps)."""
    if variant not in VARIANTS:
        raise DpmsError(f"unknown DEIS variant {variant!r}; use one of {', '.join(VARIANTS)}")
    coefficients = deis_coefficients(schedule, timesteps, order, variant)
    alpha = schedule.alpha(timesteps).tolist()  # on the host before the first network call
    history: list[Tensor] = []  # ε_i, ε_{i−1}, …
    for i, row in enumerate(coefficients):
        history.insert(0, eval_at(noise_fn, x, timesteps[i]))
        del history[order + 1 :]
        x = combine((alpha[i + 1] / alpha[i], x), *((alpha[i + 1] * c, eps) for c, eps in zip(row, history)))
    return x


def _register(order: int):
    @register(
        f"deis{order}",
        order=order + 1,
        order_steps=(48, 96) if order == 1 else (96, 192),  # deis2/3 reach their order past 96 steps (2.7, 3.7 at 48 → 96)
        paper=PAPER,
        default_skip="time_quadratic",
    )
    def solver(noise_fn, schedule, x, timesteps, variant: str = "tab"):
        return deis(noise_fn, schedule, x, timesteps, order, variant)

    solver.__doc__ = f"DEIS tAB-{order}: ε as the degree-{order} Lagrange polynomial through the last {order + 1} outputs."
    return solver


deis1, deis2, deis3 = (_register(order) for order in (1, 2, 3))
