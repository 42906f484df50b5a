"""Noise schedules of variance-preserving (VP) diffusion: the one place that owns α, σ and λ.

A VP forward process has marginals q(x_t | x_0) = N(α_t x_0, σ_t² I) with α_t² + σ_t² = 1.
DPM-Solver (Lu et al. 2022, arXiv 2206.00927) works in the half log-SNR

    λ_t = log(α_t / σ_t)                                   (paper, Sec. 3.1)

which is strictly decreasing in t, so it has an inverse t_λ(·) (paper, Eq. 3.5 and App. D).
Every solver in dpms sees the schedule only through `alpha`, `sigma`, `lambda_`,
`inverse_lambda` and `d_log_alpha_dt`; none of them knows whether it is discrete or continuous.

Three families, following the official `dpm_solver_pytorch.py` conventions:

* ``discrete``: a table of N betas or cumulative alphas. Discrete step n ∈ {0..N-1} sits at
  t_n = (n + 1) / N, log α is linear between neighbouring steps (App. D.1), and trailing steps whose
  λ < -5.1 are dropped first (official ``numerical_clip_alpha``; it matters for cosine tables whose
  last α is ≈ 0). T = 1, default end time t_end = 1/N.
* ``linear``: continuous VP of score_sde, log α_t = -(β₁-β₀)t²/4 - β₀t/2, with closed-form inverse.
* ``cosine``: continuous cosine schedule of improved DDPM as in the DPM-Solver paper (App. D.2),
  T = 0.9946 so that β stays bounded.
* ``edm``: the variance-exploding noise levels of EDM (Karras et al. 2022) as a VP schedule: t = σ_VE,
  α_t = 1/√(1+t²), σ_t = t/√(1+t²), so λ_t = −log t and x_VP = α x_VE; T = σ_max = 80, t_end = σ_min = 0.002.

All methods take tensors of any float dtype and device and return the same dtype and device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from .errors import DpmsError

CLIPPED_LAMBDA = -5.1  # official DPM-Solver: drop trailing discrete steps whose λ is below this


def _as_tensor(t, like: Tensor | None = None) -> Tensor:
    if isinstance(t, Tensor):
        return t
    dtype = like.dtype if like is not None else torch.get_default_dtype()
    device = like.device if like is not None else None
    return torch.as_tensor(t, dtype=dtype, device=device)


def interpolate(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear interpolation of (xp, fp) at x, extrapolating linearly past both ends.

    xp must be increasing. Differentiable, works for any shape of x.
    """
    xp = xp.to(device=x.device, dtype=x.dtype)
    fp = fp.to(device=x.device, dtype=x.dtype)
    n = xp.numel()
    idx = torch.searchsorted(xp, x.contiguous(), right=False).clamp(1, n - 1)
    # torch.take, not xp[idx]: indexing with a 0-d tensor reads it to the host (a device sync)
    x0, x1 = torch.take(xp, idx - 1), torch.take(xp, idx)
    f0, f1 = torch.take(fp, idx - 1), torch.take(fp, idx)
    return f0 + (f1 - f0) * (x - x0) / (x1 - x0)


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """A VP noise schedule. Build one with `discrete`, `discrete_linear`, `discrete_cosine`,
    `linear` or `cosine`; do not call the constructor directly."""

    kind: str  # "discrete" | "linear" | "cosine" | "edm"
    T: float
    t_end: float
    N: int | None = None  # discrete steps kept after clipping
    beta_0: float = 0.1
    beta_1: float = 20.0
    cosine_s: float = 0.008
    t_array: Tensor | None = None  # discrete: (N,) increasing, float64
    log_alpha_array: Tensor | None = None  # discrete: (N,), float64
    clipped_steps: int = 0  # discrete: trailing table steps removed (λ < −5.1); a codebase's own loop needs none removed
    name: str = ""
    grid: tuple | None = None  # set by `on_grid`: time grids and log α, α, σ, λ, d log α/dt at their points
    # discrete tables converted to a (device, dtype) once: a copy per α/σ/λ call would be a host-to-device
    # transfer, and a stream synchronisation, on every network call of a GPU sampling loop
    _tables: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def _table(self, name: str, like: Tensor) -> Tensor:
        key = (name, like.device, like.dtype)
        if key not in self._tables:
            base = {
                "t": lambda: self.t_array,
                "log_alpha": lambda: self.log_alpha_array,
                "t_flipped": lambda: torch.flip(self.t_array, [0]),
                "log_alpha_flipped": lambda: torch.flip(self.log_alpha_array, [0]),
                "slope": lambda: (self.log_alpha_array[1:] - self.log_alpha_array[:-1]) / (self.t_array[1:] - self.t_array[:-1]),
            }[name]()
            self._tables[key] = base.to(device=like.device, dtype=like.dtype)
        return self._tables[key]

    # ------------------------------------------------------------------ a sampling loop's grid
    def on_grid(self, *grids: Tensor) -> "NoiseSchedule":
        """This schedule with log α, α, σ, λ and d log α/dt of every point of the time grids computed once.

        A solver steps over 0-d views of a grid (`for s, t in zip(ts[:-1], ts[1:])`); for those, and for a
        whole grid tensor, the methods below return the precomputed values (recognised by storage, offset
        and shape, without reading the tensor, so without a host sync) instead of recomputing the table
        interpolation every step. `sample` registers the outer grid; a solver with intermediate times (a
        singlestep solver's s₁, s₂, PNDM's midpoints) computes them for all steps at once and calls
        `schedule.on_grid(those)`, which keeps the grids already registered. Any other time is computed
        as usual. Every grid must be contiguous: the solver must step over views of the tensors it passed.
        """
        entries = list(self.grid or ())
        for ts in grids:
            if not ts.is_contiguous():
                raise ValueError("on_grid needs contiguous time tensors (their 0-d views are recognised by offset)")
            flat = ts.reshape(-1)
            log_alpha = self.log_alpha(flat)
            values = {"log_alpha": log_alpha, "alpha": torch.exp(log_alpha), "sigma": self.sigma(flat), "lambda": self.lambda_(flat),
                      "d_log_alpha_dt": self.d_log_alpha_dt(flat)}
            # the entry holds the tensor, so its storage (the key) cannot be freed and reused meanwhile
            entries.append({"tensor": ts, "ptr": ts.untyped_storage().data_ptr(), "offset": ts.storage_offset(), "n": ts.numel(),
                            "shape": ts.shape, "dtype": ts.dtype, "device": ts.device, "values": values})
        on = replace(self, grid=tuple(entries))
        object.__setattr__(on, "_tables", self._tables)  # share the converted tables
        return on

    def _cached(self, quantity: str, t) -> Tensor | None:
        if not self.grid or not isinstance(t, Tensor):
            return None
        ptr = t.untyped_storage().data_ptr()
        for grid in self.grid:
            if ptr != grid["ptr"] or t.dtype != grid["dtype"] or t.device != grid["device"]:
                continue
            i = t.storage_offset() - grid["offset"]
            if t.dim() == 0:
                if 0 <= i < grid["n"]:
                    return grid["values"][quantity][i]
            elif i == 0 and t.shape == grid["shape"] and t.is_contiguous():
                return grid["values"][quantity].reshape(t.shape)
        return None

    # ------------------------------------------------------------------ constructors
    @classmethod
    def discrete(cls, betas=None, alphas_cumprod=None, name: str = "discrete") -> "NoiseSchedule":
        """A discrete-time schedule from a beta table or a cumulative-alpha table (App. D.1)."""
        if (betas is None) == (alphas_cumprod is None):
            raise ValueError("NoiseSchedule.discrete needs exactly one of betas= or alphas_cumprod=")
        if betas is not None:
            betas = torch.as_tensor(betas, dtype=torch.float64)
            log_alphas = 0.5 * torch.log1p(-betas).cumsum(0)
        else:
            log_alphas = 0.5 * torch.log(torch.as_tensor(alphas_cumprod, dtype=torch.float64))
        log_sigmas = 0.5 * torch.log(-torch.expm1(2.0 * log_alphas))
        lambdas = log_alphas - log_sigmas
        # Official numerical_clip_alpha: remove the trailing steps with λ < -5.1.
        idx = int(torch.searchsorted(torch.flip(lambdas, [0]), torch.tensor(CLIPPED_LAMBDA, dtype=torch.float64)))
        if idx > 0:
            log_alphas = log_alphas[:-idx]
        n = log_alphas.numel()
        t_array = torch.linspace(0.0, 1.0, n + 1, dtype=torch.float64)[1:]
        return cls(kind="discrete", T=1.0, t_end=1.0 / n, N=n, t_array=t_array, log_alpha_array=log_alphas, clipped_steps=idx, name=name)

    @classmethod
    def discrete_linear(cls, N: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "NoiseSchedule":
        """DDPM's linear beta table (Ho et al. 2020): β_n = linspace(1e-4, 0.02, N) for N = 1000."""
        betas = torch.linspace(beta_start, beta_end, N, dtype=torch.float64)
        return cls.discrete(betas=betas, name=f"discrete_linear(N={N})")

    @classmethod
    def discrete_cosine(cls, N: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> "NoiseSchedule":
        """Improved DDPM's cosine table (Nichol & Dhariwal 2021, Eq. 17), betas clipped at 0.999."""
        steps = torch.arange(N + 1, dtype=torch.float64) / N
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
        return cls.discrete(betas=betas, name=f"discrete_cosine(N={N})")

    @classmethod
    def linear(cls, beta_0: float = 0.1, beta_1: float = 20.0) -> "NoiseSchedule":
        """Continuous VP of score_sde: β(t) = β₀ + t(β₁ - β₀), T = 1, t_end = 1e-3."""
        return cls(kind="linear", T=1.0, t_end=1e-3, beta_0=beta_0, beta_1=beta_1, name=f"linear({beta_0},{beta_1})")

    @classmethod
    def cosine(cls, s: float = 0.008) -> "NoiseSchedule":
        """Continuous cosine schedule (DPM-Solver App. D.2).

        T = 0.9946 as in the official code: close to where β(t) would exceed 999
        (t_max = 2(1+s)/π · atan(999(1+s)/π) - s ≈ 0.998), stopping earlier keeps λ_T moderate.
        """
        return cls(kind="cosine", T=0.9946, t_end=1e-3, cosine_s=s, name=f"cosine({s})")

    @classmethod
    def edm(cls, sigma_min: float = 0.002, sigma_max: float = 80.0) -> "NoiseSchedule":
        """EDM's σ range as a VP schedule (t = σ, α = 1/√(1+σ²)): T = σ_max, t_end = σ_min (EDM paper, Sec. 3)."""
        return cls(kind="edm", T=float(sigma_max), t_end=float(sigma_min), name=f"edm({sigma_min},{sigma_max})")

    @classmethod
    def from_spec(cls, spec: dict | str) -> "NoiseSchedule":
        """Build from a config entry, e.g. {"type": "discrete_linear", "N": 1000} or "linear"."""
        if isinstance(spec, str):
            spec = {"type": spec}
        spec = dict(spec)
        kind = spec.pop("type")
        builders = {
            "discrete_linear": cls.discrete_linear,
            "discrete_cosine": cls.discrete_cosine,
            "linear": cls.linear,
            "cosine": cls.cosine,
            "edm": cls.edm,
        }
        if kind not in builders:
            raise ValueError(f"unknown schedule type {kind!r}; use one of {', '.join(builders)}")
        return builders[kind](**spec)

    @property
    def is_discrete(self) -> bool:
        return self.kind == "discrete"

    @property
    def t_min(self) -> float:
        """The smallest time at which α, σ and λ are defined: a discrete table's first time t_0 = 1/N (below
        it log α would extrapolate above 0, so σ is NaN); continuous schedules are defined on (0, T]."""
        return float(self.t_array[0]) if self.kind == "discrete" else 0.0

    def range_text(self) -> str:
        """The schedule's time range as text, e.g. "[0.001, 1]" (discrete) or "(0, 1]" (continuous)."""
        return f"[{self.t_min:g}, {self.T:g}]" if self.kind == "discrete" else f"(0, {self.T:g}]"

    def check_times(self, t_start: float, t_end: float, what: str = "t_end") -> None:
        """Raise a one-line DpmsError unless t_min ≤ t_end < t_start ≤ T (t_end > 0 for continuous schedules).

        Outside the range the schedule has no α/σ (σ of a discrete table is NaN below 1/N), so a solver
        would silently produce NaN samples; the error names the range instead."""
        low_ok = t_end >= self.t_min * (1 - 1e-12) if self.kind == "discrete" else t_end > 0.0
        if not (math.isfinite(t_end) and math.isfinite(t_start) and low_ok and t_end < t_start <= self.T * (1 + 1e-12)):
            op = "≤" if self.is_discrete else "<"
            raise DpmsError(f"{what}={t_end:g} with t_start={t_start:g} is outside the time range {self.range_text()} of schedule "
                            f"{self.name or self.kind}; use {self.t_min:g} {op} t_end < t_start ≤ {self.T:g}")

    # ------------------------------------------------------------------ α, σ, λ
    def log_alpha(self, t) -> Tensor:
        """log α_t."""
        if (cached := self._cached("log_alpha", t)) is not None:
            return cached
        t = _as_tensor(t)
        if self.kind == "discrete":
            return interpolate(t, self._table("t", t), self._table("log_alpha", t))
        if self.kind == "linear":
            return -0.25 * t**2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0
        if self.kind == "edm":
            return -0.5 * torch.log1p(t**2)
        s = self.cosine_s
        log_alpha_0 = math.log(math.cos(s / (1.0 + s) * math.pi / 2.0))
        return torch.log(torch.cos((t + s) / (1.0 + s) * math.pi / 2.0)) - log_alpha_0

    def d_log_alpha_dt(self, t) -> Tensor:
        """d log α_t / dt (= f(t), the drift coefficient of the forward SDE)."""
        if (cached := self._cached("d_log_alpha_dt", t)) is not None:
            return cached
        t = _as_tensor(t)
        if self.kind == "discrete":
            idx = torch.searchsorted(self._table("t", t), t.contiguous()).clamp(1, self.N - 1)
            return torch.take(self._table("slope", t), idx - 1)
        if self.kind == "linear":
            return -0.5 * t * (self.beta_1 - self.beta_0) - 0.5 * self.beta_0
        if self.kind == "edm":
            return -t / (1.0 + t**2)
        s = self.cosine_s
        return -torch.tan((t + s) / (1.0 + s) * math.pi / 2.0) * math.pi / (2.0 * (1.0 + s))

    def alpha(self, t) -> Tensor:
        """α_t = exp(log α_t)."""
        if (cached := self._cached("alpha", t)) is not None:
            return cached
        return torch.exp(self.log_alpha(t))

    def sigma(self, t) -> Tensor:
        """σ_t = sqrt(1 - α_t²), computed as sqrt(-expm1(2 log α_t)) for accuracy near t = 0."""
        if (cached := self._cached("sigma", t)) is not None:
            return cached
        return torch.sqrt(-torch.expm1(2.0 * self.log_alpha(t)))

    def log_sigma(self, t) -> Tensor:
        return 0.5 * torch.log(-torch.expm1(2.0 * self.log_alpha(t)))

    def lambda_(self, t) -> Tensor:
        """Half log-SNR λ_t = log α_t - log σ_t (paper Sec. 3.1)."""
        if (cached := self._cached("lambda", t)) is not None:
            return cached
        log_alpha = self.log_alpha(t)
        return log_alpha - 0.5 * torch.log(-torch.expm1(2.0 * log_alpha))

    def inverse_lambda(self, lam) -> Tensor:
        """t_λ(λ): the time whose half log-SNR is λ (paper App. D, closed forms per schedule).

        From α² = 1/(1 + e^{-2λ}): log α = -½ log(1 + e^{-2λ}); then invert log α(t).
        """
        lam = _as_tensor(lam)
        if self.kind == "edm":
            return torch.exp(-lam)  # λ = −log σ_VE
        log_alpha = -0.5 * torch.logaddexp(torch.zeros_like(lam), -2.0 * lam)
        if self.kind == "discrete":
            # log α is decreasing in t: interpolate on the flipped (increasing) table.
            return interpolate(log_alpha, self._table("log_alpha_flipped", lam), self._table("t_flipped", lam))
        if self.kind == "linear":
            # Solve (β₁-β₀)/4 t² + β₀/2 t + log α = 0 for t ≥ 0 (numerically stable root).
            tmp = 2.0 * (self.beta_1 - self.beta_0) * torch.logaddexp(-2.0 * lam, torch.zeros_like(lam))
            delta = self.beta_0**2 + tmp
            return tmp / (torch.sqrt(delta) + self.beta_0) / (self.beta_1 - self.beta_0)
        s = self.cosine_s
        log_alpha_0 = math.log(math.cos(s / (1.0 + s) * math.pi / 2.0))
        return torch.arccos(torch.exp(log_alpha + log_alpha_0)) * 2.0 * (1.0 + s) / math.pi - s

    def __repr__(self) -> str:  # tensors in the dataclass make the default repr unreadable
        return f"NoiseSchedule({self.name or self.kind}, T={self.T}, t_end={self.t_end})"
