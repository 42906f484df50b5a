"""Improved PNDM (iPNDM; Zhang & Chen 2023, DEIS App.; Zhou et al. 2024, zju-pi diff-sampler).

PNDM's linear multistep idea without its Runge–Kutta warm-up: Euler in σ = e^{−λ} on x/α (the DDIM
transfer φ, `steps.ddim_step`) fed with an Adams–Bashforth combination of the past noise
predictions, the order rising 1, 2, 3, 4 as the history fills (one call per step, NFE = steps):

    x_{i+1} = φ(x_i, Σ_j c_j ε_{i−j}, t_i → t_{i+1})

* ``ipndm``: the fixed (equal-step) Adams–Bashforth weights c = (1), (3, −1)/2, (23, −16, 5)/12,
  (55, −59, 37, −9)/24 whatever the grid — diff-sampler's `ipndm_sampler` and DEIS's
  `get_sampler_ipndm`. Option `max_order` (1–4, default 4).
* ``ipndm-v``: weights that depend on the step sizes h in σ, diff-sampler's `ipndm_v_sampler`
  (`_variable_weights`). Their second order is the exact variable-step AB2. Their third- and
  fourth-order corrections are diff-sampler's own rational functions of the steps, reproduced as
  they are: on equal steps the third-order weights are AB3's but the fourth-order ones are
  (57, −65, 43, −11)/24 = AB4 + Δ³/12 (AB4 is (55, −59, 37, −9)/24), and on unequal steps the
  fourth-order weights do not sum to 1. The measured orders (tests/test_ipndm_heun.py) state what
  that does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import DpmsError
from .registry import register
from .steps import combine, ddim_step, eval_at

PAPER = "iPNDM (Zhang & Chen 2023; Zhou et al. 2024, diff-sampler)"
LISTING_POSITION = 45  # after PNDM

# Adams–Bashforth weights on equal steps, newest ε first (Hairer, Nørsett & Wanner, Sec. III.1).
AB_WEIGHTS = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def _check_max_order(max_order) -> int:
    if isinstance(max_order, bool) or max_order not in (1, 2, 3, 4):
        raise DpmsError(f"max_order must be 1, 2, 3 or 4, got {max_order!r}")
    return int(max_order)


def _variable_weights(h: list[float]) -> tuple[float, ...]:
    """diff-sampler's variable-step weights from the σ-steps h = [h_n, h_{n−1}, …] (newest first;
    as many past steps as the order needs), newest ε first.

    Order 2 is AB2 with r = h_n/h_{n−1}: (1 + r/2, −r/2). Order 3 adds u₃·(1, −(1 + a), a) and
    order 4 further u₄·(1, −(1 + a + q), a + q(1 + b), −a q), with a = h_{n−1}/h_{n−2},
    b = h_{n−2}/h_{n−3}, q = h_{n−1}(h_{n−1} + h_{n−2})/(h_{n−2}(h_{n−2} + h_{n−3})) and

        u₃ = ½ − h_n²/(6 h_{n−1}(h_{n−1} + h_{n−2}))
        u₄ = [½(1 − h_n/(3 s₁)) + (1 − h_n/(2 s₁)) h_n/(6 s₂)] · h_n s₁ s₂/(h_{n−1}(h_{n−1} + h_{n−2})(h_{n−1} + h_{n−2} + h_{n−3}))

    where s₁ = h_n + h_{n−1}, s₂ = s₁ + h_{n−2}.
    """
    order = len(h)
    if order == 1:
        return (1.0,)
    r = h[0] / h[1]
    w = [1 + r / 2, -r / 2, 0.0, 0.0]
    if order >= 3:
        a = h[1] / h[2]
        u3 = 0.5 - h[0] ** 2 / (6 * h[1] * (h[1] + h[2]))
        w[0] += u3
        w[1] -= (1 + a) * u3
        w[2] += a * u3
    if order == 4:
        b = h[2] / h[3]
        q = h[1] * (h[1] + h[2]) / (h[2] * (h[2] + h[3]))
        s1 = h[0] + h[1]
        s2 = s1 + h[2]
        u4 = (0.5 * (1 - h[0] / (3 * s1)) + (1 - h[0] / (2 * s1)) * h[0] / (6 * s2)) * h[0] * s1 * s2 / (h[1] * (h[1] + h[2]) * (h[1] + h[2] + h[3]))
        w[0] += u4
        w[1] -= (1 + a + q) * u4
        w[2] += (a + q * (1 + b)) * u4
        w[3] -= a * q * u4
    return tuple(w[:order])


def _adams_bashforth(noise_fn, schedule, x: Tensor, timesteps: Tensor, max_order: int, weights) -> Tensor:
    """The iPNDM loop; weights(i, order) gives step i's weights, newest ε first."""
    max_order = _check_max_order(max_order)
    history: list[Tensor] = []
    for i, (s, t) in enumerate(zip(timesteps[:-1], timesteps[1:])):
        history.append(eval_at(noise_fn, x, s))
        del history[:-max_order]
        eps = combine(*zip(weights(i, len(history)), reversed(history)))
        x = ddim_step(x, eps, schedule, s, t)
    return x


@register("ipndm", order=2, order_note="equal-step AB weights on steps unequal in σ: AB3 and AB4 fall to 2", nfe_rule="NFE = steps (warm-up orders 1, 2, 3)",
          paper=PAPER, default_skip="karras")
def ipndm(noise_fn, schedule, x: Tensor, timesteps: Tensor, max_order: int = 4) -> Tensor:
    """iPNDM: fixed Adams–Bashforth weights of order min(max_order, steps so far)."""
    return _adams_bashforth(noise_fn, schedule, x, timesteps, max_order, lambda i, order: AB_WEIGHTS[order])


@register("ipndm-v", order=2, order_note="diff-sampler's 4th-order weights: 2.2 at 48→96 λ-steps, towards 3 on the λ-uniform grid, 2 on karras",
          nfe_rule="NFE = steps (warm-up orders 1, 2, 3)", paper=PAPER, default_skip="karras")
def ipndm_v(noise_fn, schedule, x: Tensor, timesteps: Tensor, max_order: int = 4) -> Tensor:
    """iPNDM with diff-sampler's variable-step Adams–Bashforth weights in σ = e^{−λ}."""
    sigma = torch.exp(-schedule.lambda_(timesteps)).tolist()  # EDM's σ of the grid (host floats: weights are per step)
    h = [b - a for a, b in zip(sigma[:-1], sigma[1:])]  # h[i]: step i in σ (negative)

    def weights(i: int, order: int):
        return _variable_weights([h[i - k] for k in range(order)])

    return _adams_bashforth(noise_fn, schedule, x, timesteps, max_order, weights)
