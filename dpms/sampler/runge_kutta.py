"""Runge–Kutta baselines on the probability-flow ODE, in t and in λ, and scipy's adaptive solvers.

In λ (DPM-Solver Sec. 3 / Table 1 "RK (λ)"), using d log α/dλ = σ²:

    dx/dλ = σ_λ² x − σ_λ ε_θ(x, t_λ(λ))

In t (Eq. 2.4, "RK (t)"), using g² = −2σ² dλ/dt and dλ/dt = f/σ² with f = d log α/dt:

    dx/dt = f(t) x + g²(t)/(2σ_t) ε_θ = f(t) (x − ε_θ(x, t)/σ_t)

These solvers treat the linear term numerically, which is exactly what DPM-Solver avoids; they
are here to reproduce the paper's comparison. Tableaus: explicit midpoint (RK2), Heun's third-order
method (RK3, c = 0, ⅓, ⅔; x + h/4 k₁ + 3h/4 k₃) and classical RK4 (`rk4-t`; PNDM's FON is not this
method but its own pseudo-numerical loop, `fon` in dpms.sampler.pndm).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .registry import ADAPTIVE, Steps, register
from .steps import eval_at

PAPER_DPM = "DPM-Solver (Lu et al. 2022), Table 1"
LISTING_POSITION = 30

# Butcher tableaus: (c, a, b)
MIDPOINT = ((0.0, 0.5), ((), (0.5,)), (0.0, 1.0))
HEUN3 = ((0.0, 1 / 3, 2 / 3), ((), (1 / 3,), (0.0, 2 / 3)), (0.25, 0.0, 0.75))
RK4 = ((0.0, 0.5, 0.5, 1.0), ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), (1 / 6, 1 / 3, 1 / 3, 1 / 6))


def velocity_lambda(noise_fn, schedule, x: Tensor, t: Tensor) -> Tensor:
    """dx/dλ = σ² x − σ ε at the half log-SNR λ of time t (the caller maps λ to t = t_λ(λ))."""
    sigma = schedule.sigma(t)
    return sigma**2 * x - sigma * eval_at(noise_fn, x, t)


def velocity_t(noise_fn, schedule, x: Tensor, t: Tensor) -> Tensor:
    """dx/dt = f(t)(x − ε/σ_t)."""
    return schedule.d_log_alpha_dt(t) * (x - eval_at(noise_fn, x, t) / schedule.sigma(t))


def explicit_rk(velocity, x: Tensor, grid: Tensor, times: Tensor, tableau) -> Tensor:
    """Integrate dx/dv = velocity(x, t) over the grid of v with an explicit Runge–Kutta tableau;
    times[n, i] is the time of stage i of step n (`stage_times`)."""
    c, a, b = tableau
    h = grid[1:] - grid[:-1]
    for n in range(len(h)):
        ks = []
        for i, a_i in enumerate(a):
            x_i = x
            for a_ij, k_j in zip(a_i, ks):
                if a_ij:
                    x_i = x_i + h[n] * a_ij * k_j
            ks.append(velocity(x_i, times[n, i]))
        x = x + h[n] * sum(b_i * k for b_i, k in zip(b, ks) if b_i)
    return x


def stage_times(grid: Tensor, tableau, to_time=None) -> Tensor:
    """(steps, stages): the stage points v_n + c_i h_n of every step at once, mapped to times by
    `to_time` (t_λ for a grid in λ), so that α, σ there are computed once (`NoiseSchedule.on_grid`)."""
    c = torch.tensor(tableau[0], dtype=grid.dtype, device=grid.device)
    stages = grid[:-1, None] + c * (grid[1:] - grid[:-1])[:, None]
    return (stages if to_time is None else to_time(stages)).contiguous()


def _rk_lambda(tableau):
    def solve(noise_fn, schedule, x, timesteps):
        lam = schedule.lambda_(timesteps)
        times = stage_times(lam, tableau, schedule.inverse_lambda)
        on = schedule.on_grid(times)
        return explicit_rk(lambda y, t: velocity_lambda(noise_fn, on, y, t), x, lam, times, tableau)

    return solve


def _rk_t(tableau):
    def solve(noise_fn, schedule, x, timesteps):
        times = stage_times(timesteps, tableau)
        on = schedule.on_grid(times)
        return explicit_rk(lambda y, t: velocity_t(noise_fn, on, y, t), x, timesteps, times, tableau)

    return solve


rk2 = register("rk2", order=2, paper=PAPER_DPM, plan=Steps(2))(_rk_lambda(MIDPOINT))
rk3 = register("rk3", order=3, paper=PAPER_DPM, plan=Steps(3))(_rk_lambda(HEUN3))
rk2_t = register("rk2-t", order=2, paper=PAPER_DPM, plan=Steps(2), default_skip="time_uniform", default_grid=False)(_rk_t(MIDPOINT))
rk3_t = register("rk3-t", order=3, paper=PAPER_DPM, plan=Steps(3), default_skip="time_uniform", default_grid=False)(_rk_t(HEUN3))
rk4_t = register("rk4-t", order=4, paper="classical RK4 in t (Runge–Kutta baseline)", plan=Steps(4), default_skip="time_uniform", default_grid=False)(_rk_t(RK4))


# ----------------------------------------------------------------------------------- scipy
def solve_ivp_torch(noise_fn, schedule, x: Tensor, t_start, t_end, variable: str, method: str, rtol: float, atol: float):
    """Integrate the probability-flow ODE with scipy.integrate.solve_ivp on the flattened batch
    (as score_sde's and PNDM's "PF" sampler do), in t or in λ. Returns (x at t_end, nfev)."""
    from scipy.integrate import solve_ivp

    shape, dtype, device = x.shape, x.dtype, x.device

    def fun(v, y):
        xt = torch.from_numpy(y).reshape(shape).to(device=device, dtype=dtype)
        vt = torch.tensor(v, dtype=dtype, device=device)
        vel = velocity_t(noise_fn, schedule, xt, vt) if variable == "t" else velocity_lambda(noise_fn, schedule, xt, schedule.inverse_lambda(vt))
        return vel.reshape(-1).to("cpu", torch.float64).numpy()

    if variable == "t":
        span = (float(t_start), float(t_end))
    else:
        span = (float(schedule.lambda_(torch.as_tensor(float(t_start), dtype=torch.float64))),
                float(schedule.lambda_(torch.as_tensor(float(t_end), dtype=torch.float64))))
    y0 = x.reshape(-1).to("cpu", torch.float64).numpy()
    sol = solve_ivp(fun, span, y0, method=method, rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"scipy {method} failed: {sol.message}")
    out = torch.from_numpy(np.ascontiguousarray(sol.y[:, -1])).reshape(shape).to(device=device, dtype=dtype)
    return out, sol.nfev


@register("rk45", order=None, order_note="adaptive 4(5)", paper="score_sde / PNDM 'PF' (scipy RK45)", plan=ADAPTIVE, default_skip="time_uniform", default_grid=False)
def rk45(noise_fn, schedule, x, timesteps, rtol: float = 1e-5, atol: float = 1e-5):
    """scipy's adaptive Dormand–Prince RK45 on the probability-flow ODE in t (rtol = atol = 1e-5 as in PNDM)."""
    return solve_ivp_torch(noise_fn, schedule, x, timesteps[0], timesteps[-1], "t", "RK45", rtol, atol)[0]


def ode_reference(noise_fn, schedule, x: Tensor, t_start=None, t_end=None, rtol: float = 1e-10, atol: float = 1e-10) -> Tensor:
    """A high-accuracy solution of the probability-flow ODE: scipy DOP853 in λ, in float64.

    Independent of every registered solver; the ground truth for convergence tests and benchmarks.
    """
    t_start = schedule.T if t_start is None else t_start
    t_end = schedule.t_end if t_end is None else t_end
    out, _ = solve_ivp_torch(noise_fn, schedule, x.double(), t_start, t_end, "lambda", "DOP853", rtol, atol)
    return out.to(x.dtype)
