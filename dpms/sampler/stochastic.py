"""Stochastic baselines: Euler–Maruyama on the reverse SDE, and DDPM ancestral sampling.

Both draw fresh Gaussian noise every step from `randn(x)` (given by `dpms.sample`), which by
default gives every sample its own generator seeded from (seed, sample index): a sample does not
depend on the batch it was drawn in.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .registry import register
from .steps import eval_at, to_data

LISTING_POSITION = 90  # last in `dpms solvers`: the SDE baselines


@register("euler-sde", order=None, order_note="1 (weak), 0.5 (strong)", paper="score_sde (Song et al. 2021b)", default_skip="time_uniform", stochastic=True)
def euler_sde(noise_fn, schedule, x: Tensor, timesteps: Tensor, randn) -> Tensor:
    """Euler–Maruyama on the reverse-time SDE (score_sde Eq. 6), ∇ log q_t = −ε/σ_t:

        dx = [f(t) x − g²(t) ∇ log q_t(x)] dt + g(t) dw̄,

    where for a VP schedule g²(t) = dσ²/dt − 2fσ² = −2f(α² + σ²) = −2f, f = d log α/dt.
    The last step returns the noise-free mean, as score_sde does.
    """
    steps = len(timesteps) - 1
    for i, (s, t) in enumerate(zip(timesteps[:-1], timesteps[1:])):
        dt = s - t  # > 0: we step backwards in time
        f = schedule.d_log_alpha_dt(s)
        sigma = schedule.sigma(s)
        g2 = -2.0 * f
        eps = eval_at(noise_fn, x, s)
        mean = x - (f * x + g2 * eps / sigma) * dt
        x = mean if i == steps - 1 else mean + torch.sqrt(g2 * dt) * randn(x)
    return x


@register("ddpm", order=None, order_note="1 (weak)", paper="DDPM (Ho et al. 2020)", default_skip="time_uniform", stochastic=True)
def ddpm(noise_fn, schedule, x: Tensor, timesteps: Tensor, randn) -> Tensor:
    """Ancestral sampling from the DDPM posterior q(x_t | x_s, x₀) between grid times s > t
    (Ho et al. 2020 Eq. 6–7, for arbitrary gaps as in DDIM with η = 1):

        α_{s|t} = α_s/α_t,  σ²_{s|t} = σ_s² − α_{s|t}² σ_t²
        mean = α_{s|t} σ_t²/σ_s² · x_s + α_t σ²_{s|t}/σ_s² · x̂₀,   var = σ²_{s|t} σ_t²/σ_s²

    No noise is added on the last step (DDPM returns the mean at its final step).
    """
    steps = len(timesteps) - 1
    for i, (s, t) in enumerate(zip(timesteps[:-1], timesteps[1:])):
        alpha_s, sigma_s = schedule.alpha(s), schedule.sigma(s)
        alpha_t, sigma_t = schedule.alpha(t), schedule.sigma(t)
        alpha_st = alpha_s / alpha_t
        var_st = sigma_s**2 - alpha_st**2 * sigma_t**2
        x0 = to_data(x, eval_at(noise_fn, x, s), schedule, s)
        mean = alpha_st * sigma_t**2 / sigma_s**2 * x + alpha_t * var_st / sigma_s**2 * x0
        x = mean if i == steps - 1 else mean + torch.sqrt(var_st * sigma_t**2 / sigma_s**2) * randn(x)
    return x
