"""One-step updates shared by the solvers: the exact solution of the linear part of the diffusion ODE.

The probability-flow ODE of a VP diffusion, written with the noise prediction ε_θ, is
semi-linear (DPM-Solver Eq. 2.4 / 3.1):

    dx/dt = f(t) x + g²(t)/(2σ_t) ε_θ(x, t),   f = d log α/dt,  g² = −2σ_t² dλ/dt.

Its exact solution from s to t (Eq. 3.4) is

    x_t = (α_t/α_s) x_s − α_t ∫_{λ_s}^{λ_t} e^{−λ} ε̂_θ(x̂_λ, λ) dλ.

Every update below evaluates that integral with ε̂ replaced by a Taylor polynomial in λ
(noise prediction, DPM-Solver) or, for the data prediction x₀ = (x − σ ε)/α, the equivalent form
(DPM-Solver++ Eq. 9)

    x_t = (σ_t/σ_s) x_s + σ_t ∫_{λ_s}^{λ_t} e^{λ} x̂₀(λ) dλ.

Coefficients are computed per step from the schedule (one place owns α, σ, λ) as 0-d tensors, so
nothing in a sampling loop synchronises with the host; at the grid's points (and at the intermediate
times a solver registers) α, σ, λ are precomputed (`NoiseSchedule.on_grid`). An update a·x + b·ε is
applied as `torch.addcmul(a * x, ε, b)`: the cost of a loop of small updates is its number of
batch-sized operations.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..schedule import NoiseSchedule


def eval_at(noise_fn, x: Tensor, t: Tensor) -> Tensor:
    """ε_θ(x, t) with the scalar time t broadcast to one time per sample."""
    return noise_fn(x, t.expand(x.shape[0]))


def combine(*terms: tuple[float, Tensor]) -> Tensor:
    """Σ c_k v_k for (c_k, v_k) pairs with Python-number c_k: one batch-sized operation per term
    (a loop of small updates costs its number of batch-sized operations, not its arithmetic)."""
    (c0, v0), *rest = terms
    out = v0 * c0
    for c, v in rest:
        out.add_(v, alpha=c)
    return out


def to_data(x: Tensor, eps: Tensor, schedule: NoiseSchedule, t: Tensor) -> Tensor:
    """Data prediction x₀ = (x − σ_t ε)/α_t (DPM-Solver++ Sec. 3)."""
    inv_alpha = 1.0 / schedule.alpha(t)
    return torch.addcmul(x * inv_alpha, eps, -schedule.sigma(t) * inv_alpha)


def dpm_solver_1(x: Tensor, eps_s: Tensor, schedule: NoiseSchedule, s: Tensor, t: Tensor) -> Tensor:
    """DPM-Solver-1 (Eq. 3.7): x_t = (α_t/α_s) x_s − σ_t (e^h − 1) ε_s, h = λ_t − λ_s. Equals DDIM."""
    h = schedule.lambda_(t) - schedule.lambda_(s)
    return torch.addcmul(torch.exp(schedule.log_alpha(t) - schedule.log_alpha(s)) * x, eps_s, -schedule.sigma(t) * torch.expm1(h))


def ddim_step(x: Tensor, eps_s: Tensor, schedule: NoiseSchedule, s: Tensor, t: Tensor) -> Tensor:
    """DDIM with η = 0 (Song et al. 2021, Eq. 12): predict x₀ = (x − σ_s ε)/α_s, then re-noise it to
    time t, x_t = α_t x₀ + σ_t ε; applied as x_t = (α_t/α_s) x + (σ_t − α_t σ_s/α_s) ε, two
    batch-sized operations instead of five (the scalars are 0-d tensors).

    Algebraically identical to DPM-Solver-1 (DPM-Solver Sec. 4.1); written in DDIM's own terms (α, σ,
    no λ) so the two are independent implementations. It is also PNDM's transfer φ (PNDM Eq. 11).
    """
    ratio = schedule.alpha(t) / schedule.alpha(s)
    return torch.addcmul(ratio * x, eps_s, schedule.sigma(t) - ratio * schedule.sigma(s))


def heun_step(noise_fn, x: Tensor, eps_s: Tensor, schedule: NoiseSchedule, s: Tensor, t: Tensor) -> Tensor:
    """Heun's method in σ = e^{−λ} on x/α, one step s → t, one call at t (ε_s given).

    On v = x/α the probability-flow ODE is dv/dσ = ε (EDM Eq. 3/4 with s(t) = 1), and the DDIM step is
    its Euler step; Heun averages the slopes at both ends of an Euler predictor (EDM Algorithm 1 with
    S_churn = 0):

        x' = φ(x, ε_s, s → t),  x_t = φ(x, (ε_s + ε(x', t))/2, s → t),   φ = `ddim_step`.

    It is also S-PNDM's pseudo improved-Euler step (PNDM Sec. 3.3), which feeds the same average
    through the same transfer.
    """
    # ε(x', t) is not named: it is freed once averaged, before the transfer's temporaries exist (peak memory)
    eps = combine((0.5, eps_s), (0.5, eval_at(noise_fn, ddim_step(x, eps_s, schedule, s, t), t)))
    return ddim_step(x, eps, schedule, s, t)


def dpmpp_1(x: Tensor, x0_s: Tensor, schedule: NoiseSchedule, s: Tensor, t: Tensor) -> Tensor:
    """First-order DPM-Solver++ (Eq. 9 with x̂₀ constant): x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) x₀_s."""
    h = schedule.lambda_(t) - schedule.lambda_(s)
    return torch.addcmul((schedule.sigma(t) / schedule.sigma(s)) * x, x0_s, -schedule.alpha(t) * torch.expm1(-h))


def dpm_solver_2(
    noise_fn, x: Tensor, schedule: NoiseSchedule, s: Tensor, t: Tensor, r1=0.5, eps_s: Tensor | None = None, s1: Tensor | None = None
):
    """DPM-Solver-2 (Algorithm 1; official "dpmsolver" form), one step s → t, 2 network calls.

        s₁ = t_λ(λ_s + r₁h),  u = (α_{s₁}/α_s) x − σ_{s₁}(e^{r₁h} − 1) ε_s
        x_t = (α_t/α_s) x − σ_t (e^h − 1) ε_s − σ_t/(2r₁) (e^h − 1) (ε(u, s₁) − ε_s)

    Returns (x_t, ε_s, ε_{s₁}) so the adaptive solver can reuse the evaluations. s₁ may be passed in
    (a singlestep loop computes every step's s₁ = t_λ(λ_s + r₁h) before the loop).
    """
    lam_s, lam_t = schedule.lambda_(s), schedule.lambda_(t)
    h = lam_t - lam_s
    if s1 is None:
        s1 = schedule.inverse_lambda(lam_s + r1 * h)
    if eps_s is None:
        eps_s = eval_at(noise_fn, x, s)
    u = dpm_solver_1(x, eps_s, schedule, s, s1)
    eps_s1 = eval_at(noise_fn, u, s1)
    phi_1 = torch.expm1(h)
    x_t = dpm_solver_1(x, eps_s, schedule, s, t) - schedule.sigma(t) / (2.0 * r1) * phi_1 * (eps_s1 - eps_s)
    return x_t, eps_s, eps_s1


def dpm_solver_3(
    noise_fn,
    x: Tensor,
    schedule: NoiseSchedule,
    s: Tensor,
    t: Tensor,
    r1=1.0 / 3.0,
    r2=2.0 / 3.0,
    eps_s: Tensor | None = None,
    eps_s1: Tensor | None = None,
    s1: Tensor | None = None,
    s2: Tensor | None = None,
) -> Tensor:
    """DPM-Solver-3 (Algorithm 2; official "dpmsolver" form), one step s → t, 3 network calls.

        u₁ = (α_{s₁}/α_s) x − σ_{s₁}(e^{r₁h} − 1) ε_s,                         D₁ = ε(u₁, s₁) − ε_s
        u₂ = (α_{s₂}/α_s) x − σ_{s₂}(e^{r₂h} − 1) ε_s − σ_{s₂} (r₂/r₁)((e^{r₂h} − 1)/(r₂h) − 1) D₁
        x_t = (α_t/α_s) x − σ_t(e^h − 1) ε_s − (σ_t/r₂)((e^h − 1)/h − 1) (ε(u₂, s₂) − ε_s)

    ε_s and ε(u₁, s₁) may be passed in (the adaptive DPM-Solver-23 computes them in its 2nd-order step),
    and so may s₁ = t_λ(λ_s + r₁h), s₂ = t_λ(λ_s + r₂h) (a singlestep loop computes them before the loop).
    """
    lam_s, lam_t = schedule.lambda_(s), schedule.lambda_(t)
    h = lam_t - lam_s
    if s1 is None:
        s1 = schedule.inverse_lambda(lam_s + r1 * h)
    if s2 is None:
        s2 = schedule.inverse_lambda(lam_s + r2 * h)
    if eps_s is None:
        eps_s = eval_at(noise_fn, x, s)
    if eps_s1 is None:
        eps_s1 = eval_at(noise_fn, dpm_solver_1(x, eps_s, schedule, s, s1), s1)
    phi_22 = torch.expm1(r2 * h) / (r2 * h) - 1.0
    u2 = dpm_solver_1(x, eps_s, schedule, s, s2) - schedule.sigma(s2) * (r2 / r1) * phi_22 * (eps_s1 - eps_s)
    eps_s2 = eval_at(noise_fn, u2, s2)
    phi_2 = torch.expm1(h) / h - 1.0
    return dpm_solver_1(x, eps_s, schedule, s, t) - schedule.sigma(t) / r2 * phi_2 * (eps_s2 - eps_s)


def dpmpp_2s(noise_fn, x: Tensor, schedule: NoiseSchedule, s: Tensor, t: Tensor, r1=0.5, s1: Tensor | None = None) -> Tensor:
    """DPM-Solver++(2S) (Algorithm 1 of the DPM-Solver++ paper), one step s → t, 2 network calls.

        u = (σ_{s₁}/σ_s) x − α_{s₁}(e^{−r₁h} − 1) x₀_s
        x_t = (σ_t/σ_s) x − α_t(e^{−h} − 1) x₀_s − α_t/(2r₁) (e^{−h} − 1)(x₀(u, s₁) − x₀_s)

    s₁ = t_λ(λ_s + r₁h) may be passed in, as in `dpm_solver_2`.
    """
    lam_s, lam_t = schedule.lambda_(s), schedule.lambda_(t)
    h = lam_t - lam_s
    if s1 is None:
        s1 = schedule.inverse_lambda(lam_s + r1 * h)
    x0_s = to_data(x, eval_at(noise_fn, x, s), schedule, s)
    u = dpmpp_1(x, x0_s, schedule, s, s1)
    x0_s1 = to_data(u, eval_at(noise_fn, u, s1), schedule, s1)
    return dpmpp_1(x, x0_s, schedule, s, t) - schedule.alpha(t) / (2.0 * r1) * torch.expm1(-h) * (x0_s1 - x0_s)
