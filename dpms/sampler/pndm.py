"""Pseudo numerical methods (PNDM; Liu et al. 2022, arXiv 2202.09778).

PNDM keeps DDIM's update as a "transfer" φ(x_t, ε, t → t') (PNDM Eq. 11, which equals the DDIM
step and DPM-Solver-1) and only changes the ε it is fed: a combination of network outputs taken
from a classical method.

* F-PNDM (Eq. 12–13): three pseudo Runge–Kutta warm-up steps, each of 4 calls —
  e₁ = ε(x, t); x₁ = φ(x, e₁, t → t−δ/2); e₂ = ε(x₁, t−δ/2); x₂ = φ(x, e₂, t → t−δ/2);
  e₃ = ε(x₂, t−δ/2); x₃ = φ(x, e₃, t → t−δ); e₄ = ε(x₃, t−δ); e' = (e₁ + 2e₂ + 2e₃ + e₄)/6 —
  then the 4th-order Adams–Bashforth combination e' = (55e₀ − 59e₋₁ + 37e₋₂ − 9e₋₃)/24 with one call
  per step. NFE = steps + 9 (4·steps for 3 steps or fewer).
* S-PNDM: a pseudo improved-Euler warm-up step (2 calls: e' = (ε(x, t) + ε(φ(x, ε, t → t'), t'))/2)
  then 2nd-order Adams–Bashforth e' = (3e₀ − e₋₁)/2. NFE = steps + 1.

* FON (PNDM's `gen_fon`, its "fourth-order numerical" method): the same warm-up/AB4 structure on x
  itself, with the slope D(x, e) = (φ(x, e, s → s − δ) − x)/δ of one table step δ = 1/N (PNDM's
  `transfer(x, t, t − 1, ε) − x` per index) and x_{n+1} = x + h D̄, h = s − t. Every Runge–Kutta stage
  reads its ε at the stage point but its linear part at the step's base point x: D₁ = D(x, ε(x, s)),
  D₂ = D(x, ε(x + D₁h/2, s − h/2)), D₃ = D(x, ε(x + D₂h/2, s − h/2)), D₄ = D(x, ε(x + D₃h, t)),
  D̄ = (D₁ + 2D₂ + 2D₃ + D₄)/6 for three steps, then D̄ = (55D₀ − 59D₋₁ + 37D₋₂ − 9D₋₃)/24 with
  D₀ = D(x, ε(x, s)). NFE = steps + 9 (4·steps for 3 steps or fewer). The frozen linear part makes the
  warm-up first order, so FON converges with order 2 (like F-PNDM); on a discrete table its slope is a
  one-step difference, which moves its limit O(1/N) away from the ODE. A continuous schedule has no table:
  there D is the δ → 0 limit, −f(s)(x − e/σ_s). Classical RK4 in t is `rk4-t`.

The midpoint t − δ/2 is taken in continuous time (PNDM's code uses the mean of the two indices; with
`protocol="pndm-code"` the loops run on PNDM's own indices, dpms.sampler.protocols).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import DpmsError
from .registry import DiffusersEquivalent, NfePlan, Steps, register
from .steps import combine, ddim_step, eval_at, heun_step

PAPER = "PNDM (Liu et al. 2022)"
LISTING_POSITION = 40


def _discrete_or_uniform(schedule) -> str:
    return "discrete_uniform" if schedule.is_discrete else "time_uniform"


class PndmPlan(NfePlan):
    """F-PNDM: NFE = 4·steps for steps ≤ 3 (all warm-up), steps + 9 after."""

    def rule(self) -> str:
        return "NFE = steps + 9 (4·steps when ≤ 3 steps)"

    def grid(self, nfe: int, make_grid, skip: str, options: dict):
        if nfe >= 13:
            return make_grid(nfe - 9), None
        if nfe in (4, 8, 12):
            return make_grid(nfe // 4), None
        near = {1: "4", 2: "4", 3: "4", 5: "4", 6: "4 or 8", 7: "8", 9: "8", 10: "8 or 12", 11: "12"}.get(nfe, "4")
        raise DpmsError(f"NFE {nfe} is impossible ({self.rule()}); nearest valid: {near}")

    def nfe(self, timesteps, steps) -> int:
        n = len(timesteps) - 1
        return 4 * n if n <= 3 else n + 9


# diffusers' PNDMScheduler (skip_prk_steps=False) runs the same 3 pseudo-RK steps of 4 calls; it needs at least 4 steps (NFE 13)
@register("pndm", order=2, order_note="AB4 on ε through the 1st-order transfer", paper=PAPER, plan=PndmPlan(), default_skip=_discrete_or_uniform,
          diffusers=DiffusersEquivalent("PNDMScheduler", {"skip_prk_steps": False}, lambda nfe: nfe - 9 if nfe >= 13 else 0))
def pndm(noise_fn, schedule, x: Tensor, timesteps: Tensor) -> Tensor:
    """F-PNDM: pseudo Runge–Kutta warm-up (3 steps × 4 calls), then pseudo linear multistep (AB4)."""
    history: list[Tensor] = []
    # the warm-up steps' midpoints, and α, σ, λ there, once before the loop
    mids = ((timesteps[:-1] + timesteps[1:]) / 2)[:3].contiguous()
    schedule = schedule.on_grid(mids)
    for i, (s, t) in enumerate(zip(timesteps[:-1], timesteps[1:])):
        if i < 3:
            mid = mids[i]
            e1 = eval_at(noise_fn, x, s)
            e2 = eval_at(noise_fn, ddim_step(x, e1, schedule, s, mid), mid)
            e3 = eval_at(noise_fn, ddim_step(x, e2, schedule, s, mid), mid)
            e4 = eval_at(noise_fn, ddim_step(x, e3, schedule, s, t), t)
            history.append(e1)
            eps = combine((1 / 6, e1), (1 / 3, e2), (1 / 3, e3), (1 / 6, e4))  # (e₁ + 2e₂ + 2e₃ + e₄)/6
        else:
            history.append(eval_at(noise_fn, x, s))
            del history[:-4]
            eps = combine(*zip((55 / 24, -59 / 24, 37 / 24, -9 / 24), history[::-1]))  # (55e₀ − 59e₋₁ + 37e₋₂ − 9e₋₃)/24
        x = ddim_step(x, eps, schedule, s, t)
    return x


@register("spndm", order=2, paper=PAPER, plan=Steps(1, extra_calls=1), default_skip=_discrete_or_uniform)
def spndm(noise_fn, schedule, x: Tensor, timesteps: Tensor) -> Tensor:
    """S-PNDM: pseudo improved Euler on the first step, then pseudo linear multistep (AB2)."""
    prev = None
    for s, t in zip(timesteps[:-1], timesteps[1:]):
        e0 = eval_at(noise_fn, x, s)
        if prev is None:
            prev = e0
            x = heun_step(noise_fn, x, e0, schedule, s, t)  # ε' = (ε(x, s) + ε(φ(x, ε, s → t), t))/2
        else:
            eps = combine((1.5, e0), (-0.5, prev))  # (3e₀ − e₋₁)/2
            prev = e0  # before the step: e₋₁ is freed before the transfer's temporaries exist (peak memory)
            x = ddim_step(x, eps, schedule, s, t)
    return x


@register("fon", order=2, order_note="first-order RK warm-up (linear part frozen at the base point), then AB4; on a discrete table within O(1/N) of the ODE",
          paper="PNDM (Liu et al. 2022), FON (gen_fon)", plan=PndmPlan(), default_skip=_discrete_or_uniform, default_grid=False)
def fon(noise_fn, schedule, x: Tensor, timesteps: Tensor) -> Tensor:
    """PNDM's FON: Runge–Kutta warm-up (3 steps × 4 calls) then AB4 on the slope of one table step (module doc)."""
    mids = ((timesteps[:-1] + timesteps[1:]) / 2)[:3].contiguous()
    if schedule.is_discrete:
        delta = 1.0 / schedule.N  # one table step: PNDM's transfer(x, t, t − 1, ε)
        lows = (timesteps[:-1] - delta).contiguous()
        schedule = schedule.on_grid(mids, lows)
        if not bool(torch.isfinite(schedule.sigma(lows)).all()):
            raise DpmsError(f"fon: a step starts less than one table step (1/N = {delta:g}) above where the schedule is defined; raise t_end or take fewer steps")
    else:
        schedule = schedule.on_grid(mids)
    history: list[Tensor] = []
    for i, (s, t) in enumerate(zip(timesteps[:-1], timesteps[1:])):
        h = s - t

        def slope(eps: Tensor, i=i, s=s, x=x) -> Tensor:
            """−dx/dt with the linear part at the base point x: (φ(x, ε, s → s − δ) − x)/δ, or its δ → 0 limit."""
            if schedule.is_discrete:
                return (ddim_step(x, eps, schedule, s, lows[i]) - x) / delta
            return schedule.d_log_alpha_dt(s) * (eps / schedule.sigma(s) - x)  # −f(s)(x − ε/σ_s)

        d1 = slope(eval_at(noise_fn, x, s))
        history.append(d1)
        if i < 3:
            d2 = slope(eval_at(noise_fn, x + d1 * (h / 2), mids[i]))
            d3 = slope(eval_at(noise_fn, x + d2 * (h / 2), mids[i]))
            d4 = slope(eval_at(noise_fn, x + d3 * h, t))
            d = combine((1 / 6, d1), (1 / 3, d2), (1 / 3, d3), (1 / 6, d4))  # (D₁ + 2D₂ + 2D₃ + D₄)/6
        else:
            del history[:-4]
            d = combine(*zip((55 / 24, -59 / 24, 37 / 24, -9 / 24), history[::-1]))  # (55D₀ − 59D₋₁ + 37D₋₂ − 9D₋₃)/24
        x = x + d * h
    return x
