"""The Fréchet distance between two Gaussians, as every FID number in the papers computes it."""

from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg

from ..errors import DpmsError

SINGULAR_PRODUCT_EPS = 1e-6


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = SINGULAR_PRODUCT_EPS) -> float:
    """d² = ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^½)   (Heusel et al. 2017, Eq. 6).

    The arithmetic follows pytorch-fid's `calculate_frechet_distance` (the FID tool of the DPM-Solver,
    PNDM and DDIM evaluations) step by step, so both give the same float: the square root is
    scipy's Schur-method `sqrtm` of the product Σ₁·Σ₂; if that is not finite (a singular product),
    `eps`·I is added to both covariances and the root is taken again; a complex root is accepted
    only when the imaginary parts of its diagonal are within 1e-3 of zero, and its real part is used.
    """
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise DpmsError(f"cannot compare statistics of different feature sizes: mean {mu1.shape} vs {mu2.shape}, "
                        f"covariance {sigma1.shape} vs {sigma2.shape}; use reference statistics of the same feature network")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        warnings.warn(f"Fréchet distance: singular covariance product; adding {eps} to the diagonal of both covariances",
                      RuntimeWarning, stacklevel=2)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise DpmsError(f"Fréchet distance: the covariance square root has an imaginary component "
                            f"{np.max(np.abs(covmean.imag)):.3g}; use more samples than feature dimensions")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))
