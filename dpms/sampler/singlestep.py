"""Singlestep solvers: DDIM, DPM-Solver-1/2/3, DPM-Solver++(2S), and adaptive DPM-Solver-12/23."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import DpmsError
from .registry import ADAPTIVE, DiffusersEquivalent, NfePlan, register
from .steps import ddim_step, dpm_solver_1, dpm_solver_2, dpm_solver_3, dpmpp_2s, eval_at

PAPER_DPM = "DPM-Solver (Lu et al. 2022)"
LISTING_POSITION = 10  # first in `dpms solvers`: DDIM and the DPM-Solver paper's own solvers


# ----------------------------------------------------------------------------------- order plans
def fast_orders(nfe: int, order: int) -> list[int]:
    """The DPM-Solver-fast order plan (paper Sec. 3.4, App. D.3; official
    `get_orders_and_timesteps_for_singlestep_solver`): K = ⌊M/3⌋ + 1 steps for order 3.

    order 3: M = 3K → [3]*(K−2) + [2, 1];  M = 3K + 1 → [3]*K + [1];  M = 3K + 2 → [3]*K + [2]
    order 2: M even → [2]*(M/2);  M odd → [2]*⌊M/2⌋ + [1]
    """
    if order == 3:
        k = nfe // 3 + 1
        if nfe % 3 == 0:
            return [3] * (k - 2) + [2, 1]
        if nfe % 3 == 1:
            return [3] * (k - 1) + [1]
        return [3] * (k - 1) + [2]
    if order == 2:
        return [2] * (nfe // 2) + [1] * (nfe % 2)
    return [1] * nfe


@dataclass(frozen=True)
class SinglestepSteps:
    """A singlestep run's per-step plan: each step's order and, where the grid gives them, its inner points
    (the step's own k-step grid from s to t, whose λ-fractions are r₁, r₂; None: λ-uniform fractions)."""

    orders: tuple[int, ...]
    inner: tuple[Tensor, ...] | None = None


@dataclass(frozen=True)
class SinglestepPlan(NfePlan):
    """NFE → (outer time grid, per-step orders, inner points); option order_plan = "fast" | "fixed".

    As the official `sample(method="singlestep"/"singlestep_fixed")`, a step of order k from s to t
    evaluates at the k − 1 intermediate points of the same skip type's grid of k steps between s and
    t: λ-uniform fractions ½ or ⅓, ⅔ on the logSNR grid (inner=None), and the points of the uniform /
    quadratic grid otherwise (r₁ = (λ_{s₁} − λ_s)/h then depends on the step). An explicit grid runs the
    solver's order on every step.
    """

    order: int
    makes_steps = True
    options = {"order_plan": "fast"}

    def rule(self) -> str:
        if self.order == 2:
            return "any NFE ≥ 1 (fast plan: ⌊M/2⌋ 2nd-order steps, +1 first-order if M odd); fixed plan: M even"
        return "any NFE ≥ 1 (fast plan: K = ⌊M/3⌋+1 λ-uniform steps, orders 3,…,3 then 2/1); fixed plan: M % 3 = 0"

    def grid(self, nfe: int, make_grid, skip: str, options: dict):
        order, order_plan = self.order, options["order_plan"]
        if order_plan == "fixed":
            if nfe % order:
                raise DpmsError(_fixed_nfe_message(order, nfe))
            orders = [order] * (nfe // order)
        elif order_plan == "fast":
            orders = fast_orders(nfe, order)
        else:
            raise DpmsError(f"unknown order_plan {order_plan!r}; use 'fast' or 'fixed'")
        inner = None
        if skip == "logSNR" or order_plan == "fixed":
            timesteps = make_grid(len(orders))  # outer steps uniform in the skip type (λ-uniform: the paper)
            if skip in ("time_uniform", "time_quadratic"):
                inner = tuple(make_grid(k, float(s), float(t)) for k, s, t in zip(orders, timesteps[:-1], timesteps[1:]))
        else:
            # official: a grid of M steps, keeping the points where each outer step ends; the points in
            # between are the step's inner points (for time_uniform / time_quadratic exactly the official
            # inner grid of each outer step)
            fine = make_grid(nfe)
            ends = torch.cumsum(torch.tensor([0] + orders), 0).tolist()
            timesteps = fine[ends]
            inner = tuple(fine[a : b + 1] for a, b in zip(ends[:-1], ends[1:]))
        return timesteps, SinglestepSteps(tuple(orders), inner)

    def explicit(self, timesteps: Tensor, options: dict) -> SinglestepSteps:
        return SinglestepSteps((self.order,) * (len(timesteps) - 1))

    def nfe(self, timesteps: Tensor, steps: SinglestepSteps) -> int:
        return sum(steps.orders)


def _fixed_nfe_message(order: int, nfe: int) -> str:
    lo, hi = (nfe // order) * order, (nfe // order + 1) * order
    near = " or ".join(str(m) for m in (lo, hi) if m >= order)
    return f"order_plan='fixed' with order {order} needs an NFE divisible by {order}, got {nfe}; nearest valid: {near}"


def _intermediate_times(schedule, timesteps: Tensor, orders: list[int], inner, r1, r2) -> tuple[Tensor, Tensor]:
    """(r, s_mid), both (steps, 2): each step's λ-fractions r₁, r₂ and intermediate times
    s_k = t_λ(λ_s + r_k h), computed for all steps at once before the loop.

    The fractions are those of the step's inner points, (λ_{s_k} − λ_s)/h, or the λ-uniform ½ and ⅓, ⅔
    when it has none (logSNR grid, explicit timesteps); r1/r2, if given, replace them in the steps of the
    solver's own (highest) order. As the official solver, s_k is then t_λ(λ_s + r_k h) (for inner
    points equal to them up to round-off). Unused entries (a 2nd-order step's r₂, a 1st-order step's
    both) are 1, i.e. s_k = t.
    """
    lam = schedule.lambda_(timesteps)
    lam_s, h = lam[:-1], lam[1:] - lam[:-1]
    like = dict(dtype=timesteps.dtype, device=timesteps.device)
    if inner is None:
        r = torch.tensor([[k / o if k < o else 1.0 for k in (1, 2)] for o in orders], **like)
    else:  # the inner points, padded with the step's end, in one gather
        points = torch.stack([pts[k] if k < order else pts[-1] for pts, order in zip(inner, orders) for k in (1, 2)])
        r = (schedule.lambda_(points).reshape(-1, 2) - lam_s[:, None]) / h[:, None]
    top = max(orders)
    given = [(k, v) for k, v in enumerate((r1, r2)[: top - 1]) if v is not None]
    if given:
        rows = torch.tensor([o == top for o in orders], device=timesteps.device)
        for k, value in given:
            r[:, k] = torch.where(rows, torch.as_tensor(float(value), **like), r[:, k])
    return r, schedule.inverse_lambda(lam_s[:, None] + r * h[:, None]).contiguous()


def _singlestep(noise_fn, schedule, x, timesteps, steps: SinglestepSteps, r1=None, r2=None, data_prediction=False):
    """Singlestep steps of the given orders. r1/r2, if given, replace the grid's fractions in the
    steps of the solver's own (highest) order. The intermediate times of all steps, and α, σ, λ there,
    are computed once before the loop (`_intermediate_times`, `NoiseSchedule.on_grid`)."""
    orders, inner = steps.orders, steps.inner
    r, s_mid = _intermediate_times(schedule, timesteps, orders, inner, r1, r2)
    schedule = schedule.on_grid(s_mid)
    for i, order in enumerate(orders):
        s, t = timesteps[i], timesteps[i + 1]
        if order == 1:
            eps = eval_at(noise_fn, x, s)
            x = ddim_step(x, eps, schedule, s, t) if data_prediction else dpm_solver_1(x, eps, schedule, s, t)
        elif data_prediction:
            x = dpmpp_2s(noise_fn, x, schedule, s, t, r1=r[i, 0], s1=s_mid[i, 0])
        elif order == 2:
            x = dpm_solver_2(noise_fn, x, schedule, s, t, r1=r[i, 0], s1=s_mid[i, 0])[0]
        else:
            x = dpm_solver_3(noise_fn, x, schedule, s, t, r1=r[i, 0], r2=r[i, 1], s1=s_mid[i, 0], s2=s_mid[i, 1])
    return x


def _diffusers_singlestep(order: int, algorithm: str) -> DiffusersEquivalent:
    return DiffusersEquivalent("DPMSolverSinglestepScheduler", {"solver_order": order, "algorithm_type": algorithm, "lower_order_final": True, "final_sigmas_type": "sigma_min"})


@register("ddim", order=1, paper="DDIM (Song et al. 2021)", default_skip="time_uniform", diffusers=DiffusersEquivalent("DDIMScheduler"))
def ddim(noise_fn, schedule, x: Tensor, timesteps: Tensor) -> Tensor:
    """DDIM, deterministic (η = 0; Song et al. 2021, Eq. 12): x₀-prediction then re-noising, one call per step."""
    for s, t in zip(timesteps[:-1], timesteps[1:]):
        x = ddim_step(x, eval_at(noise_fn, x, s), schedule, s, t)
    return x


@register("dpm1", order=1, paper=PAPER_DPM, default_grid=False, diffusers=DiffusersEquivalent("DDIMScheduler"))
def dpm1(noise_fn, schedule, x: Tensor, timesteps: Tensor) -> Tensor:
    """DPM-Solver-1 (Eq. 3.7) on every step; equal to DDIM (paper Sec. 4.1)."""
    for s, t in zip(timesteps[:-1], timesteps[1:]):
        x = dpm_solver_1(x, eval_at(noise_fn, x, s), schedule, s, t)
    return x


@register("dpm2", order=2, paper=PAPER_DPM, plan=SinglestepPlan(2), diffusers=_diffusers_singlestep(2, "dpmsolver"))
def dpm2(noise_fn, schedule, x, timesteps, steps: SinglestepSteps, r1: float | None = None):
    """Singlestep DPM-Solver-2 (Algorithm 1) with the paper's DPM-Solver-fast order plan
    (r₁ = ½ on the logSNR grid; r1= overrides the 2nd-order steps' fraction)."""
    return _singlestep(noise_fn, schedule, x, timesteps, steps, r1=r1)


@register("dpm3", order=3, paper=PAPER_DPM, plan=SinglestepPlan(3), diffusers=_diffusers_singlestep(3, "dpmsolver"))
def dpm3(noise_fn, schedule, x, timesteps, steps: SinglestepSteps, r1: float | None = None, r2: float | None = None):
    """Singlestep DPM-Solver-3 (Algorithm 2) with the paper's DPM-Solver-fast order plan (App. D.3):
    NFE 10 → orders 3,3,3,1; 12 → 3,3,3,2,1; 15 → 3,3,3,3,2,1; 20 → 3,3,3,3,3,3,2. On the logSNR grid
    3rd-order steps use r₁ = ⅓, r₂ = ⅔ and 2nd-order steps r₁ = ½ (r1=/r2= override the 3rd-order steps')."""
    return _singlestep(noise_fn, schedule, x, timesteps, steps, r1=r1, r2=r2)


@register(
    "dpmpp2s",
    order=2,
    nfe_rule="any NFE ≥ 1 (as dpm2: 2nd-order steps, +1 first-order if M odd); fixed plan: M even",
    paper="DPM-Solver++ (Lu et al. 2022b)",
    default_skip="time_uniform",
    plan=SinglestepPlan(2),
    data_prediction=True,
    default_grid=False,
    diffusers=_diffusers_singlestep(2, "dpmsolver++"),
)
def dpmpp2s(noise_fn, schedule, x, timesteps, steps: SinglestepSteps, r1: float | None = None):
    """Singlestep DPM-Solver++(2S) (data prediction), with a first-order last step for odd NFE."""
    return _singlestep(noise_fn, schedule, x, timesteps, steps, r1=r1, data_prediction=True)


# ----------------------------------------------------------------------------------- adaptive
def _rms(v: Tensor) -> Tensor:
    return torch.sqrt(torch.square(v.reshape(v.shape[0], -1)).mean(dim=-1))


def _adaptive(noise_fn, schedule, x, t_start, t_end, order, rtol, atol, h_init, theta, t_err, max_nfe):
    """Adaptive step size DPM-Solver (paper Sec. 3.4 and App. C, Algorithm 4; official
    `dpm_solver_adaptive`). Each try runs a lower-order step x_lower and a higher-order step
    x_higher from the same s and accepts when E = ‖(x_higher − x_lower)/δ‖ ≤ 1 with
    δ = max(atol, rtol·max(|x_lower|, |x_prev|)); the next h = min(θ h E^{−1/order}, λ_ε − λ_s).
    DPM-Solver-12 pairs orders 1 and 2 (r₁ = ½), DPM-Solver-23 orders 2 and 3 (r₁ = ⅓, r₂ = ⅔);
    the higher step reuses the lower step's evaluations, so a try costs `order` calls.
    E is the maximum over the batch, as in the official code: the batch shares one step size.
    """
    s = t_start
    lam_s = schedule.lambda_(s)
    lam_end = schedule.lambda_(t_end)
    h = torch.full_like(lam_s, h_init)
    x_prev = x
    nfe = 0
    while torch.abs(s - t_end) > t_err:
        if nfe + order > max_nfe:
            raise DpmsError(f"adaptive dpm{order - 1}{order} used {nfe} NFE without reaching t_end; raise max_nfe or loosen rtol/atol")
        t = schedule.inverse_lambda(lam_s + h)
        if order == 2:
            eps_s = eval_at(noise_fn, x, s)
            x_lower = dpm_solver_1(x, eps_s, schedule, s, t)
            x_higher = dpm_solver_2(noise_fn, x, schedule, s, t, r1=0.5, eps_s=eps_s)[0]
        else:
            x_lower, eps_s, eps_s1 = dpm_solver_2(noise_fn, x, schedule, s, t, r1=1 / 3)
            x_higher = dpm_solver_3(noise_fn, x, schedule, s, t, r1=1 / 3, r2=2 / 3, eps_s=eps_s, eps_s1=eps_s1)
        nfe += order
        delta = torch.clamp(rtol * torch.maximum(x_lower.abs(), x_prev.abs()), min=atol)
        err = _rms((x_higher - x_lower) / delta).max()
        if err <= 1.0:
            x, s, x_prev = x_higher, t, x_lower
            lam_s = schedule.lambda_(s)
        h = torch.minimum(theta * h * err.to(h.dtype) ** (-1.0 / order), lam_end - lam_s)
    return x


@register("dpm12", order=None, order_note="adaptive 1/2", paper=PAPER_DPM, plan=ADAPTIVE)
def dpm12(noise_fn, schedule, x, timesteps, rtol=0.05, atol=0.0078, h_init=0.05, theta=0.9, t_err=1e-5, max_nfe=10_000):
    """Adaptive DPM-Solver-12 (Algorithm 4 with orders 1 and 2)."""
    return _adaptive(noise_fn, schedule, x, timesteps[0], timesteps[-1], 2, rtol, atol, h_init, theta, t_err, max_nfe)


@register("dpm23", order=None, order_note="adaptive 2/3", paper=PAPER_DPM, plan=ADAPTIVE)
def dpm23(noise_fn, schedule, x, timesteps, rtol=0.05, atol=0.0078, h_init=0.05, theta=0.9, t_err=1e-5, max_nfe=10_000):
    """Adaptive DPM-Solver-23 (Algorithm 4 with orders 2 and 3)."""
    return _adaptive(noise_fn, schedule, x, timesteps[0], timesteps[-1], 3, rtol, atol, h_init, theta, t_err, max_nfe)
