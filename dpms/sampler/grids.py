"""Time grids ("skip types"): where a solver evaluates the network between t_start = T and t_end.

All grids are decreasing tensors of steps + 1 times, t_start first and t_end last, in the dtype
and on the device of the samples (float64 samples get float64 grids).

* ``logSNR``: uniform in λ, t_i = t_λ(λ_T + i(λ_ε − λ_T)/M) — DPM-Solver's choice (paper Sec. 3.3).
* ``time_uniform``: uniform in t (DDIM; DPM-Solver++ for guided sampling).
* ``time_quadratic``: uniform in √t, t_i = (√T + i(√ε − √T)/M)² (DDIM's quadratic grid on CIFAR-10).
* ``discrete_uniform``, ``discrete_quadratic``: the integer index grids of the DDIM and PNDM
  codebases — range(0, N, N // M) and (linspace(0, √(0.8 N), M)²).astype(int) — mapped to continuous
  time with t = (n + 1)/N (the official DPM-Solver discrete convention). Those codebases start
  their first step at the largest index and finish by predicting x₀ (ᾱ = 1); in continuous time the
  first step starts at t_start and the last index maps to n = 0, i.e. t_end = 1/N.
* ``karras``: EDM's ρ-polynomial grid (Karras et al. 2022, Eq. 5) in σ = e^{−λ} (EDM's σ, the noise
  level of x/α): σ_i = (σ_max^{1/ρ} + i/M (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ with σ_max, σ_min those of
  t_start, t_end, mapped to time by t_i = t_λ(−log σ_i); ρ = `rho` (default 7, EDM's choice).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..errors import DpmsError
from ..schedule import NoiseSchedule

SKIP_TYPES = ("logSNR", "time_uniform", "time_quadratic", "discrete_uniform", "discrete_quadratic", "karras")
DEFAULT_RHO = 7.0  # EDM's ρ (Karras et al. 2022, Sec. 3)


def discrete_indices(skip: str, steps: int, n_total: int) -> list[int]:
    """The DDIM/PNDM codebases' increasing index sequences with `steps` entries."""
    if skip == "discrete_uniform":
        stride = n_total // steps
        if stride < 1:
            raise DpmsError(f"discrete_uniform cannot place {steps} steps on {n_total} discrete times; use at most {n_total}")
        return list(range(0, n_total, stride))[:steps]
    seq = (np.linspace(0, np.sqrt(n_total * 0.8), steps) ** 2).astype(int)
    if len(set(seq.tolist())) != steps:
        raise DpmsError(f"discrete_quadratic gives repeated indices for {steps} steps; use fewer steps or another skip")
    return seq.tolist()


def karras_sigmas(sigma_max: float, sigma_min: float, steps: int, rho: float = DEFAULT_RHO) -> Tensor:
    """EDM's σ_i = (σ_max^{1/ρ} + i/M (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, i = 0 … M (Karras et al. 2022 Eq. 5), float64."""
    i = torch.arange(steps + 1, dtype=torch.float64)
    return (sigma_max ** (1 / rho) + i / steps * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def karras_times(schedule: NoiseSchedule, steps: int, t_start: float, t_end: float, rho: float = DEFAULT_RHO) -> Tensor:
    """The karras grid in time: σ = e^{−λ} of t_start and t_end, EDM's σ grid between them, t = t_λ(−log σ)."""
    if not rho > 0:
        raise DpmsError(f"rho must be positive (EDM uses 7), got {rho}")
    kw = dict(dtype=torch.float64, device="cpu")
    lam_start = float(schedule.lambda_(torch.tensor(t_start, **kw)))
    lam_end = float(schedule.lambda_(torch.tensor(t_end, **kw)))
    sigmas = karras_sigmas(math.exp(-lam_start), math.exp(-lam_end), steps, float(rho))
    ts = schedule.inverse_lambda(-torch.log(sigmas))
    ts[0], ts[-1] = t_start, t_end  # exact end points (inverse_lambda round-off)
    if not bool((ts[1:] < ts[:-1]).all()):
        raise DpmsError(f"the karras grid with {steps} steps and rho={rho} is not strictly decreasing in t; use fewer steps or another skip")
    return ts


def make_grid(
    schedule: NoiseSchedule,
    skip: str,
    steps: int,
    t_start: float,
    t_end: float,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    rho: float = DEFAULT_RHO,
) -> Tensor:
    """A decreasing grid of `steps` + 1 times from t_start to t_end (`rho`: the karras grid's ρ)."""
    if steps < 1:
        raise DpmsError(f"a time grid needs at least 1 step, got {steps}")
    kw = dict(dtype=torch.float64, device="cpu")  # build in float64, then cast: grids are tiny
    if skip == "logSNR":
        lam_T = schedule.lambda_(torch.tensor(t_start, **kw))
        lam_0 = schedule.lambda_(torch.tensor(t_end, **kw))
        ts = schedule.inverse_lambda(torch.linspace(float(lam_T), float(lam_0), steps + 1, **kw))
        ts[0], ts[-1] = t_start, t_end  # exact end points (inverse_lambda round-off)
    elif skip == "time_uniform":
        ts = torch.linspace(t_start, t_end, steps + 1, **kw)
    elif skip == "time_quadratic":
        ts = torch.linspace(t_start**0.5, t_end**0.5, steps + 1, **kw) ** 2
    elif skip == "karras":
        ts = karras_times(schedule, steps, t_start, t_end, rho)
    elif skip in ("discrete_uniform", "discrete_quadratic"):
        if not schedule.is_discrete:
            raise DpmsError(f"skip {skip!r} needs a discrete schedule; use time_uniform or time_quadratic for {schedule!r}")
        idx = discrete_indices(skip, steps, schedule.N)
        inner = [(n + 1) / schedule.N for n in reversed(idx[1:])]
        ts = torch.tensor([t_start, *inner, t_end], **kw)
        if not bool((ts[1:] < ts[:-1]).all()):
            raise DpmsError(f"skip {skip!r} with {steps} steps does not fit between t_start={t_start} and t_end={t_end}")
    else:
        raise DpmsError(f"unknown skip type {skip!r}; use one of {', '.join(SKIP_TYPES)}")
    return ts.to(dtype=dtype, device=device)
