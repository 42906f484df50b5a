"""UniPC (Zhao et al. 2023, arXiv 2302.04867): the multistep UniP-p predictor with the UniC corrector, B(h) form.

One step from s (λ_s, model output m₀) to t, h = λ_t − λ_s, with the k − 1 older outputs m₋ⱼ at λ₋ⱼ,
r_j = (λ₋ⱼ − λ_s)/h and D_j = (m₋ⱼ − m₀)/r_j (paper Alg. 2/3; official `multistep_uni_pc_bh_update`):

    data prediction (m = x₀), ĥ = −h:   x̃ = (σ_t/σ_s) x − α_t (e^{ĥ} − 1) m₀,           x_t = x̃ − α_t B(h) Σ_j a_j D_j
    noise prediction (m = ε), ĥ = h:    x̃ = (α_t/α_s) x − σ_t (e^{ĥ} − 1) m₀,           x_t = x̃ − σ_t B(h) Σ_j a_j D_j

with B(h) = ĥ ("bh1") or e^{ĥ} − 1 ("bh2"). The weights a solve R a = g (paper Thm 3.1, official recursion):
R's row i holds r_j^{i−1} (j = 1…k, r_k = 1) and g_i = i!·φ̂_i/B(h) with φ̂₁ = (e^{ĥ} − 1)/ĥ − 1,
φ̂_{i+1} = φ̂_i/ĥ − 1/(i+1)!. The predictor UniP-k uses the k − 1 older outputs (a = ½ for k = 2, else the
leading (k−1)×(k−1) system); the corrector UniC-k adds D_k = m_t − m₀ from the new output m_t = m(x_t^pred, t)
(a = ½ for k = 1, else the full k×k system), and
that m_t — at the predicted point — is what later steps keep, so the corrector costs no network call.
No corrector after the last step: NFE = steps.

Orders: warm-up steps 1, …, p − 1 use orders 1, …, p − 1 (with the corrector); then order p, lowered at
the end of the run by `lower_order_final` (default "always": the official UniPC code lowers the last steps
of every run, order min(p, steps left), as diffusers' UniPCMultistepScheduler does).

Every coefficient depends only on the λ-grid, so all of them are computed before the loop (in float64),
and a step is a few batch-sized multiply-adds.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import DpmsError
from .multistep import lowers_final_order
from .registry import DiffusersEquivalent, LOWER_ORDER_FINAL_AS_DPMS, register
from .steps import combine, eval_at, to_data

PAPER = "UniPC (Zhao et al. 2023)"
VARIANTS = ("bh1", "bh2")
PREDICTIONS = ("data", "noise")
# measured on the exact model between λ-uniform grids of 48 and 96 steps: UniP-p + UniC is order p + 1 (unipc1:
# 2, unipc2: 3, unipc3: 4). Asymptotically the 1st-order last step without corrector (lower_order_final='always')
# bounds them by 2; on the exact model its error constant is tiny, and only unipc3 shows it within 384 steps
# (measured 2.4 between 192 and 384 steps).
ORDERS = {1: 2, 2: 3, 3: 4}
ORDER_NOTES = {1: "", 2: "", 3: "measured from 48 to 96 steps; 2.4 from 192 to 384 steps (the 1st-order last step)"}


def step_orders(order: int, steps: int, lower_order_final: bool | str) -> list[int]:
    """The official schedule of orders: warm-up 1, …, p − 1, then p, lowered to min(p, steps left) at the end."""
    lower = lowers_final_order(lower_order_final, steps)
    orders = []
    for i in range(steps):
        if i + 1 < order:
            orders.append(i + 1)
        else:
            orders.append(min(order, steps - i) if lower else order)
    return orders


def _weights(r: list[float], h_hat: float, b_h: float, k: int) -> tuple[list[float], list[float]]:
    """(predictor weights a_1…a_{k−1}, corrector weights a_1…a_k) of a step of order k (module docstring)."""
    g, phi, factorial = [], math.expm1(h_hat) / h_hat - 1.0, 1
    for i in range(1, k + 1):
        g.append(phi * factorial / b_h)
        factorial *= i + 1
        phi = phi / h_hat - 1.0 / factorial
    nodes = torch.tensor(r + [1.0], dtype=torch.float64)
    R = torch.stack([nodes**i for i in range(k)])
    rhs = torch.tensor(g, dtype=torch.float64)
    if k == 1:
        predictor = []
    elif k == 2:
        predictor = [0.5]
    else:
        predictor = torch.linalg.solve(R[:-1, :-1], rhs[:-1]).tolist()
    corrector = [0.5] if k == 1 else torch.linalg.solve(R, rhs).tolist()
    return predictor, corrector


def unipc_coefficients(lam: list[float], alpha: list[float], sigma: list[float], orders: list[int], variant: str, data_prediction: bool):
    """Per step i, the coefficients of x_{i+1} as combinations of (x_i, m_i, m_{i−1}, …) for the predictor, and
    of (x_i, m_i, m_{i−1}, …, m_{i+1}) for the corrector (m_{i+1}: the output at the predicted point)."""
    predictor_steps, corrector_steps = [], []
    for i, k in enumerate(orders):
        h = lam[i + 1] - lam[i]
        h_hat = -h if data_prediction else h
        b_h = h_hat if variant == "bh1" else math.expm1(h_hat)
        r = [(lam[i - j] - lam[i]) / h for j in range(1, k)]
        a_p, a_c = _weights(r, h_hat, b_h, k)
        if data_prediction:
            c_x, c_out = sigma[i + 1] / sigma[i], alpha[i + 1]
        else:
            c_x, c_out = math.exp(math.log(alpha[i + 1]) - math.log(alpha[i])), sigma[i + 1]
        c_m0 = -c_out * math.expm1(h_hat)
        scale = -c_out * b_h
        # x̃ + scale·Σ a_j (m₋ⱼ − m₀)/r_j, as weights of x, m₀, m₋₁, …
        pred = [c_x, c_m0 - scale * sum(a / rj for a, rj in zip(a_p, r))] + [scale * a / rj for a, rj in zip(a_p, r)]
        r_c = r + [1.0]
        corr = [c_x, c_m0 - scale * sum(a / rj for a, rj in zip(a_c, r_c))] + [scale * a / rj for a, rj in zip(a_c, r_c)]
        predictor_steps.append(pred)
        corrector_steps.append(corr)
    return predictor_steps, corrector_steps


def unipc(noise_fn, schedule, x: Tensor, timesteps: Tensor, order: int, variant: str, prediction: str, corrector: bool,
          lower_order_final: bool | str) -> Tensor:
    """Run multistep UniPC of order `order` over `timesteps` (NFE = steps)."""
    if variant not in VARIANTS:
        raise DpmsError(f"unknown UniPC variant {variant!r}; use one of {', '.join(VARIANTS)}")
    if prediction not in PREDICTIONS:
        raise DpmsError(f"unknown UniPC prediction {prediction!r}; use one of {', '.join(PREDICTIONS)}")
    data_prediction = prediction == "data"
    steps = len(timesteps) - 1
    orders = step_orders(order, steps, lower_order_final)
    # the grid's λ, α, σ on the host once, before the first network call (the loop then never syncs)
    lam, alpha, sigma = (schedule.lambda_(timesteps).tolist(), schedule.alpha(timesteps).tolist(), schedule.sigma(timesteps).tolist())
    predictor, corrected = unipc_coefficients(lam, alpha, sigma, orders, variant, data_prediction)

    def model(y: Tensor, t: Tensor) -> Tensor:
        eps = eval_at(noise_fn, y, t)
        return to_data(y, eps, schedule, t) if data_prediction else eps

    history = [model(x, timesteps[0])]  # newest last
    for i, k in enumerate(orders):
        recent = history[::-1][:k]  # m_i, m_{i−1}, …
        x_pred = combine(*zip(predictor[i], [x, *recent]))
        if i == steps - 1:
            return x_pred  # no corrector, and no network call, after the last step
        m_next = model(x_pred, timesteps[i + 1])
        x = combine(*zip(corrected[i], [x, *recent, m_next])) if corrector else x_pred
        history.append(m_next)
        del history[:-order]
    return x


def _register(order: int):
    name = f"unipc{order}"

    @register(
        name,
        order=ORDERS[order],
        order_note=ORDER_NOTES[order],
        paper=PAPER,
        nfe_rule="NFE = steps (the corrector reuses the next step's call; none after the last step)",
        default_skip="time_uniform",
        data_prediction=True,
        diffusers=DiffusersEquivalent("UniPCMultistepScheduler", {"solver_order": order, "solver_type": "bh1", "predict_x0": True,
                                                                 "lower_order_final": LOWER_ORDER_FINAL_AS_DPMS, "final_sigmas_type": "sigma_min"}),
    )
    def solver(noise_fn, schedule, x, timesteps, variant: str = "bh1", prediction: str = "data", corrector: bool = True,
               lower_order_final: bool | str = "always"):
        return unipc(noise_fn, schedule, x, timesteps, order, variant, prediction, corrector, lower_order_final)

    solver.__doc__ = f"Multistep UniPC-{order}: UniP-{order} predictor, UniC corrector (official multistep_uni_pc_bh_update)."
    return solver


unipc1, unipc2, unipc3 = (_register(order) for order in (1, 2, 3))
