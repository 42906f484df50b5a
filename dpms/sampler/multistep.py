"""Multistep DPM-Solver and DPM-Solver++ (2M, 3M): one network call per step, reusing past calls.

With the previous model outputs m_{i-1}, m_{i-2}, … at λ_{i-1}, λ_{i-2}, … and h = λ_t − λ_{i-1},
r₀ = h₀/h, r₁ = h₁/h (h₀, h₁ the previous step sizes), the divided differences
D1₀ = (m_{i-1} − m_{i-2})/r₀ and D1₁ = (m_{i-2} − m_{i-3})/r₁ estimate h·m' and h²·m'' (official
`multistep_dpm_solver_{second,third}_update`, DPM-Solver++ Algorithm 2 and App. B):

noise prediction (DPM-Solver, m = ε):
    x_t = (α_t/α_s) x − σ_t φ₁ m − σ_t φ₂ D1 − σ_t φ₃ D2,  φ₁ = e^h − 1, φ₂ = φ₁/h − 1, φ₃ = φ₂/h − ½
data prediction (DPM-Solver++, m = x₀):
    x_t = (σ_t/σ_s) x − α_t φ₁ m + α_t φ₂ D1 − α_t φ₃ D2,  φ₁ = e^{−h} − 1, φ₂ = φ₁/h + 1, φ₃ = φ₂/h − ½
with, at second order, D1 = D1₀/2 ("dpmsolver" form, φ₂ replaced by φ₁/2, D2 = 0), and at third order
D1 = D1₀ + r₀/(r₀ + r₁)(D1₀ − D1₁), D2 = (D1₀ − D1₁)/(r₀ + r₁).

The first steps have too few past values and use orders 1, 2, …. `lower_order_final` also lowers the
order of the last steps (the last step is 1st order, the one before it at most 2nd), which stabilises
the large final λ-steps of few-step runs; codebases differ on when:

    "official" (= True): runs of fewer than 10 steps (LuChengTHU/dpm-solver `dpm_solver_pytorch.py`)
    "diffusers":         runs of fewer than 15 steps (diffusers' DPMSolverMultistepScheduler, and
                          earlier releases of the official code)
    "always":            every run (the DPM-Solver-v3 and UniPC codebases, whose re-runs of DPM-Solver++
                          are in the DPM-Solver-v3 paper)
    "never" (= False):   full order to the end
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import DpmsError
from .registry import LOWER_ORDER_FINAL_AS_DPMS, DiffusersEquivalent, register
from .steps import eval_at, to_data

PAPER_DPM = "DPM-Solver (Lu et al. 2022)"
PAPER_PP = "DPM-Solver++ (Lu et al. 2022b)"
LISTING_POSITION = 20
WARM_UP_3 = "3 in the steps after warm-up; the 1st-order first step makes the global order 2"


def _diffusers_multistep(order: int, algorithm: str) -> DiffusersEquivalent:
    # diffusers lowers the final orders below 15 steps, dpms's default ("official") below 10: the speed
    # table runs diffusers with what dpms does at that NFE; both step to sigma_min, dpms's t_end
    return DiffusersEquivalent("DPMSolverMultistepScheduler", {"solver_order": order, "algorithm_type": algorithm,
                                                               "lower_order_final": LOWER_ORDER_FINAL_AS_DPMS, "final_sigmas_type": "sigma_min"})


def _multistep_update(x, models, lambdas, schedule, s, t, lam_t, order, data_prediction):
    h = lam_t - lambdas[-1]
    m0 = models[-1]
    if data_prediction:
        phi_1 = torch.expm1(-h)
        x_t = (schedule.sigma(t) / schedule.sigma(s)) * x - schedule.alpha(t) * phi_1 * m0
    else:
        phi_1 = torch.expm1(h)
        x_t = torch.exp(schedule.log_alpha(t) - schedule.log_alpha(s)) * x - schedule.sigma(t) * phi_1 * m0
    if order == 1:
        return x_t
    r0 = (lambdas[-1] - lambdas[-2]) / h
    d1_0 = (m0 - models[-2]) / r0
    coef = schedule.alpha(t) if data_prediction else schedule.sigma(t)
    if order == 2:
        return x_t - 0.5 * coef * phi_1 * d1_0
    r1 = (lambdas[-2] - lambdas[-3]) / h
    d1_1 = (models[-2] - models[-3]) / r1
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    if data_prediction:
        phi_2 = phi_1 / h + 1.0
        phi_3 = phi_2 / h - 0.5
        return x_t + coef * phi_2 * d1 - coef * phi_3 * d2
    phi_2 = phi_1 / h - 1.0
    phi_3 = phi_2 / h - 0.5
    return x_t - coef * phi_2 * d1 - coef * phi_3 * d2


LOWER_ORDER_FINAL_BELOW = {"official": 10, "diffusers": 15, "always": None, "never": 0}


def lowers_final_order(lower_order_final: bool | str, steps: int) -> bool:
    """Whether a run of `steps` steps lowers the order of its last steps (see the module docstring)."""
    mode = lower_order_final
    if isinstance(mode, bool):
        mode = "official" if mode else "never"
    if mode not in LOWER_ORDER_FINAL_BELOW:
        raise DpmsError(f"unknown lower_order_final {lower_order_final!r}; use one of {', '.join(LOWER_ORDER_FINAL_BELOW)} (or true/false)")
    below = LOWER_ORDER_FINAL_BELOW[mode]
    return below is None or steps < below


def multistep(noise_fn, schedule, x: Tensor, timesteps: Tensor, order: int, data_prediction: bool, lower_order_final: bool | str = "official") -> Tensor:
    """Run a multistep solver over `timesteps` (NFE = number of steps)."""
    steps = len(timesteps) - 1
    lower_final = lowers_final_order(lower_order_final, steps)
    lambdas = schedule.lambda_(timesteps)
    models, lams = [], []
    for i in range(steps):
        s, t = timesteps[i], timesteps[i + 1]
        eps = eval_at(noise_fn, x, s)
        models.append(to_data(x, eps, schedule, s) if data_prediction else eps)
        lams.append(lambdas[i])
        del models[:-order], lams[:-order]  # keep only what the order needs
        step_order = min(order, i + 1)  # warm-up: not enough history yet
        if lower_final:
            step_order = min(step_order, steps - i)
        x = _multistep_update(x, models, lams, schedule, s, t, lambdas[i + 1], step_order, data_prediction)
    return x


@register("dpm2m", order=2, nfe_rule="NFE = steps (first step 1st order)", paper=PAPER_DPM, diffusers=_diffusers_multistep(2, "dpmsolver"))
def dpm2m(noise_fn, schedule, x, timesteps, lower_order_final: bool | str = "official"):
    """Multistep DPM-Solver-2 (noise prediction)."""
    return multistep(noise_fn, schedule, x, timesteps, 2, False, lower_order_final)


@register("dpm3m", order=2, order_note=WARM_UP_3, nfe_rule="NFE = steps (warm-up orders 1, 2)", paper=PAPER_DPM, diffusers=_diffusers_multistep(3, "dpmsolver"))
def dpm3m(noise_fn, schedule, x, timesteps, lower_order_final: bool | str = "official"):
    """Multistep DPM-Solver-3 (noise prediction)."""
    return multistep(noise_fn, schedule, x, timesteps, 3, False, lower_order_final)


@register("dpmpp2m", order=2, nfe_rule="NFE = steps (first step 1st order)", paper=PAPER_PP, default_skip="time_uniform", data_prediction=True,
          diffusers=_diffusers_multistep(2, "dpmsolver++"))
def dpmpp2m(noise_fn, schedule, x, timesteps, lower_order_final: bool | str = "official"):
    """DPM-Solver++(2M) (data prediction; DPM-Solver++ Algorithm 2)."""
    return multistep(noise_fn, schedule, x, timesteps, 2, True, lower_order_final)


@register("dpmpp3m", order=2, order_note=WARM_UP_3, nfe_rule="NFE = steps (warm-up orders 1, 2)", paper=PAPER_PP, default_skip="time_uniform",
          data_prediction=True, diffusers=_diffusers_multistep(3, "dpmsolver++"))
def dpmpp3m(noise_fn, schedule, x, timesteps, lower_order_final: bool | str = "official"):
    """DPM-Solver++(3M) (data prediction)."""
    return multistep(noise_fn, schedule, x, timesteps, 3, True, lower_order_final)
