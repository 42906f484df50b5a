"""EDM's Heun sampler (Karras et al. 2022, Algorithm 1 with S_churn = 0): second-order Heun in
σ = e^{−λ} on x/α, a correction on every step (`steps.heun_step`). NFE = 2·steps.

EDM's own sampler ends differently: its last step goes from σ_min to σ = 0 with an Euler step and no
correction, which returns the data prediction D(x, σ_min). That is `denoise_to_zero=True` here (see
`dpms.sample`): EDM's 18-point run is `solver="heun", skip="karras", nfe=35, denoise_to_zero=True`.
"""

from __future__ import annotations

from torch import Tensor

from .registry import Steps, register
from .steps import eval_at, heun_step

PAPER = "EDM (Karras et al. 2022)"
LISTING_POSITION = 45  # after PNDM


@register("heun", order=2, paper=PAPER, plan=Steps(2), default_skip="karras")
def heun(noise_fn, schedule, x: Tensor, timesteps: Tensor) -> Tensor:
    """Heun's method in σ on x/α over the grid (EDM Algorithm 1, S_churn = 0, correction on every step)."""
    for s, t in zip(timesteps[:-1], timesteps[1:]):
        x = heun_step(noise_fn, x, eval_at(noise_fn, x, s), schedule, s, t)
    return x
