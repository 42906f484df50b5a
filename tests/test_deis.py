"""DEIS's coefficients against an independent high-accuracy quadrature, and the new solvers' one-line errors."""

import numpy as np
import pytest
import torch
from scipy.integrate import quad

import dpms
from dpms import DpmsError, NoiseSchedule
from dpms.models import GaussianMixture
from dpms.sampler.deis import deis_coefficients


# a discrete table's kinks enter the λ-integrals only through t(λ), i.e. for tAB
@pytest.mark.parametrize("schedule,variant", [(NoiseSchedule.linear(), v) for v in ("tab", "rhoab", "logrho")] + [(NoiseSchedule.discrete_linear(), "tab")],
                         ids=["linear-tab", "linear-rhoab", "linear-logrho", "discrete-tab"])
def test_deis_coefficients_equal_adaptive_quadrature_in_t(schedule, variant):
    """C_ij = ∫ (−f(τ)/(α_τ σ_τ)) ℓ_j(u(τ)) dτ over each step in t (the official integrand divided by α_{t_{i+1}}),
    by scipy's adaptive quadrature (breaking at a discrete table's points), against the Gauss–Legendre sums in λ."""
    ts = torch.linspace(schedule.T, 1e-3, 7, dtype=torch.float64) ** 1.5 / schedule.T**0.5
    coefficients = deis_coefficients(schedule, ts, 3, variant)

    def u(t):
        if variant == "tab":
            return t
        lam = float(schedule.lambda_(torch.tensor([t], dtype=torch.float64)))
        return np.exp(-lam) if variant == "rhoab" else -lam

    worst = 0.0
    for i in range(len(ts) - 1):
        degree = min(3, i)
        nodes = [u(float(ts[i - m])) for m in range(degree + 1)]

        def integrand(t, j):
            tt = torch.tensor([t], dtype=torch.float64)
            weight = -float(schedule.d_log_alpha_dt(tt)) / float(schedule.alpha(tt) * schedule.sigma(tt))
            basis = np.prod([(u(t) - nodes[m]) / (nodes[j] - nodes[m]) for m in range(degree + 1) if m != j])
            return weight * basis

        table = schedule.t_array.numpy() if schedule.is_discrete else np.array([])
        points = table[(table < float(ts[i])) & (table > float(ts[i + 1]))]
        for j in range(degree + 1):
            ref = quad(integrand, float(ts[i]), float(ts[i + 1]), args=(j,), epsabs=1e-15, epsrel=1e-13, limit=3000,
                       points=points if len(points) else None)[0]
            worst = max(worst, abs(coefficients[i][j] - ref) / abs(ref))
    assert worst < 1e-12, worst


@pytest.mark.parametrize("solver,options,message", [
    ("unipc2", {"variant": "bh3"}, "unknown UniPC variant 'bh3'; use one of bh1, bh2"),
    ("unipc2", {"prediction": "x0"}, "unknown UniPC prediction 'x0'; use one of data, noise"),
    ("unipc3", {"lower_order_final": "sometimes"}, "unknown lower_order_final 'sometimes'"),
    ("deis2", {"variant": "ab"}, "unknown DEIS variant 'ab'; use one of tab, rhoab, logrho"),
])
def test_bad_options_are_one_line(solver, options, message):
    gmm = GaussianMixture.default()
    with pytest.raises(DpmsError, match=message) as error:
        dpms.sample(gmm, gmm.schedule, gmm.prior(2), solver=solver, nfe=6, **options)
    assert "\n" not in str(error.value)
