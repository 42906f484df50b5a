"""The exact model: Gaussian-mixture data, whose noise prediction is known in closed form.

If x₀ ~ Σ_k π_k N(μ_k, C_k), the VP marginal at time t is q_t = Σ_k π_k N(α_t μ_k, α_t² C_k + σ_t² I)
(DPM-Solver Eq. 2.1 applied per component), so the score and the ideal noise prediction are

    ∇ log q_t(x) = Σ_k w_k(x) · (−(α_t² C_k + σ_t² I)⁻¹ (x − α_t μ_k)),   ε*(x, t) = −σ_t ∇ log q_t(x),

with posterior weights w_k(x) ∝ π_k N(x; α_t μ_k, α_t² C_k + σ_t² I). With C_k = U_k diag(d_k) U_kᵀ every
inverse and determinant is diagonal in U_k, so one evaluation costs O(K D²) per sample.

This is the ground truth for tests and benchmarks: the exact data moments give a Fréchet distance with
no feature network, and a high-accuracy ODE solution of ε* gives each solver's true error.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..schedule import NoiseSchedule


class GaussianMixture:
    """A mixture of K full-covariance Gaussians in D dimensions, with its exact ε*(x, t).

    Calling the object is the noise predictor: `gmm(x, t)` with x (B, D) and t (B,).
    """

    def __init__(self, means, covs, weights=None, schedule: NoiseSchedule | None = None):
        self.means = torch.as_tensor(means, dtype=torch.float64)  # (K, D)
        self.covs = torch.as_tensor(covs, dtype=torch.float64)  # (K, D, D)
        k, d = self.means.shape
        w = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.weights = w / w.sum()
        self.schedule = schedule if schedule is not None else NoiseSchedule.linear()
        evals, evecs = torch.linalg.eigh(self.covs)
        if bool((evals <= 0).any()):
            raise ValueError("GaussianMixture covariances must be positive definite")
        self.eigvals, self.eigvecs = evals, evecs  # C_k = U diag(d) Uᵀ
        self.dim = d

    @classmethod
    def default(cls, dim: int = 8, components: int = 4, seed: int = 0, schedule: NoiseSchedule | None = None) -> "GaussianMixture":
        """A fixed random mixture with data roughly in [−1, 1]: well-separated modes, anisotropic covariances."""
        g = torch.Generator().manual_seed(seed)
        means = 0.6 * torch.randn(components, dim, generator=g, dtype=torch.float64)
        a = torch.randn(components, dim, dim, generator=g, dtype=torch.float64) / math.sqrt(dim)
        covs = 0.04 * a @ a.transpose(1, 2) + 0.01 * torch.eye(dim, dtype=torch.float64)
        weights = 0.5 + torch.rand(components, generator=g, dtype=torch.float64)
        return cls(means, covs, weights, schedule)

    # ------------------------------------------------------------------ data
    @property
    def mean(self) -> Tensor:
        """Exact E[x₀]."""
        return self.weights @ self.means

    @property
    def cov(self) -> Tensor:
        """Exact Cov[x₀] = Σ π_k (C_k + μ_k μ_kᵀ) − μ μᵀ."""
        second = torch.einsum("k,kij->ij", self.weights, self.covs + self.means[:, :, None] * self.means[:, None, :])
        return second - torch.outer(self.mean, self.mean)

    def sample_data(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n exact draws of x₀ (float64)."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        scale = self.eigvecs[comp] * self.eigvals[comp].sqrt()[:, None, :]
        return self.means[comp] + torch.einsum("nij,nj->ni", scale, z)

    # ------------------------------------------------------------------ ε*
    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        """ε*(x, t) = −σ_t ∇ log q_t(x), computed in float64 and returned in x's dtype."""
        xd = x.to(torch.float64)
        td = t.to(torch.float64).reshape(-1).expand(x.shape[0])
        alpha = self.schedule.alpha(td)[:, None, None]  # (B, 1, 1)
        sigma = self.schedule.sigma(td)[:, None, None]
        dev = xd.device
        means, evecs, evals = self.means.to(dev), self.eigvecs.to(dev), self.eigvals.to(dev)
        diff = xd[:, None, :] - alpha * means[None]  # (B, K, D)
        y = torch.einsum("kdj,bkd->bkj", evecs, diff)  # rotate into each component's eigenbasis
        var = alpha**2 * evals[None] + sigma**2  # (B, K, D)
        log_w = torch.log(self.weights.to(dev))[None] - 0.5 * (y**2 / var).sum(-1) - 0.5 * torch.log(var).sum(-1)
        w = torch.softmax(log_w, dim=1)  # (B, K)
        score_k = -torch.einsum("kdj,bkj->bkd", evecs, y / var)  # (B, K, D)
        score = (w[:, :, None] * score_k).sum(1)
        return (-sigma[:, :, 0] * score).to(x.dtype)

    def prior(self, n: int, generator: torch.Generator | None = None, dtype=torch.float64) -> Tensor:
        """x_T ~ N(0, I) (the VP prior; q_T is within e^{2λ_T} of it)."""
        return torch.randn(n, self.dim, generator=generator, dtype=dtype)
