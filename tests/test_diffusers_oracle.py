"""Agreement with diffusers' schedulers where their conventions coincide with dpms's (test-only oracle).

Discrete step n of a DDPM table sits at continuous time t = (n + 1)/N in dpms, where α_t equals
sqrt(ᾱ_n) exactly, so a diffusers run over integer timesteps is a dpms run over those times.
"""

import pytest
import torch

import dpms
from dpms import NoiseSchedule
from dpms.models import GaussianMixture

diffusers = pytest.importorskip("diffusers")

N = 1000


@pytest.fixture(scope="module")
def model():
    return GaussianMixture.default(schedule=NoiseSchedule.discrete_linear(N))


def run_diffusers(scheduler, model, x, steps):
    scheduler.set_timesteps(steps)
    for n in scheduler.timesteps:
        t = torch.full((x.shape[0],), (int(n) + 1) / N, dtype=torch.float64)
        eps = model(x.double(), t).to(x.dtype)
        x = scheduler.step(eps, n, x).prev_sample
    return x, [int(n) for n in scheduler.timesteps]


def test_ddim_matches_diffusers_ddim_scheduler(model):
    x_T = model.prior(16, torch.Generator().manual_seed(0), dtype=torch.float32)
    scheduler = diffusers.DDIMScheduler(
        num_train_timesteps=N, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
        clip_sample=False, set_alpha_to_one=False, timestep_spacing="leading", steps_offset=0,
    )
    ref, ns = run_diffusers(scheduler, model, x_T.clone(), 10)
    assert ns == list(range(900, -1, -100))
    # diffusers' last step goes from ᾱ_0 to ᾱ_0 (set_alpha_to_one=False): the identity, one wasted call
    ts = torch.tensor([(n + 1) / N for n in ns], dtype=torch.float64)
    ours = dpms.sample(model, model.schedule, x_T.double(), solver="ddim", timesteps=ts)
    assert torch.allclose(ours.float(), ref, atol=2e-4), (ours.float() - ref).abs().max()
    ours_dpm1 = dpms.sample(model, model.schedule, x_T.double(), solver="dpm1", timesteps=ts)
    assert torch.allclose(ours_dpm1.float(), ref, atol=2e-4)


@pytest.mark.parametrize("steps,lower_order_final", [(20, "official"), (8, "official"), (10, "diffusers"), (12, "diffusers"), (14, "diffusers")])
@pytest.mark.parametrize("algorithm,solver,order", [("dpmsolver++", "dpmpp2m", 2), ("dpmsolver", "dpm2m", 2),
                                                   ("dpmsolver++", "dpmpp3m", 3), ("dpmsolver", "dpm3m", 3)])
def test_multistep_matches_diffusers_dpm_solver_multistep(model, algorithm, solver, order, steps, lower_order_final):
    """diffusers lowers the final orders below 15 steps, the official code below 10: they agree at 20
    and below 10 steps with dpms's default, and at 10-14 steps with lower_order_final="diffusers"."""
    x_T = model.prior(16, torch.Generator().manual_seed(1), dtype=torch.float32)
    scheduler = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=N, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
        algorithm_type=algorithm, solver_order=order, solver_type="midpoint", lower_order_final=True,
        timestep_spacing="linspace", final_sigmas_type="sigma_min", use_karras_sigmas=False,
    )
    ref, ns = run_diffusers(scheduler, model, x_T.clone(), steps)
    ts = torch.tensor([(n + 1) / N for n in ns] + [1 / N], dtype=torch.float64)
    ours = dpms.sample(model, model.schedule, x_T.double(), solver=solver, timesteps=ts, lower_order_final=lower_order_final)
    assert torch.allclose(ours.float(), ref, atol=5e-4), (ours.float() - ref).abs().max()


def test_singlestep_matches_diffusers_dpm_solver_singlestep(model):
    """DPMSolverSinglestepScheduler, order 2, noise prediction ("dpmsolver", midpoint)."""
    x_T = model.prior(16, torch.Generator().manual_seed(2), dtype=torch.float32)
    scheduler = diffusers.DPMSolverSinglestepScheduler(
        num_train_timesteps=N, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
        algorithm_type="dpmsolver", solver_order=2, solver_type="midpoint", lower_order_final=False,
        final_sigmas_type="sigma_min", use_karras_sigmas=False,
    )
    steps = 20
    ref, ns = run_diffusers(scheduler, model, x_T.clone(), steps)
    # diffusers evaluates every timestep; an order-2 singlestep step spans two of them, with its
    # intermediate point at the middle timestep (r₁ = the λ-fraction of that point)
    grid = [(n + 1) / N for n in ns] + [1 / N]
    lam = model.schedule.lambda_(torch.tensor(grid, dtype=torch.float64))
    x = x_T.double()
    from dpms.sampler.steps import dpm_solver_2

    for k in range(0, steps, 2):
        s, t = torch.tensor(grid[k], dtype=torch.float64), torch.tensor(grid[k + 2], dtype=torch.float64)
        r1 = float((lam[k + 1] - lam[k]) / (lam[k + 2] - lam[k]))
        x = dpm_solver_2(model, x, model.schedule, s, t, r1=r1)[0]
    assert torch.allclose(x.float(), ref, atol=5e-4), (x.float() - ref).abs().max()


@pytest.mark.parametrize("steps", [6, 10, 20])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("prediction", ["data", "noise"])
def test_unipc_matches_diffusers_unipc_multistep(model, order, variant, prediction, steps):
    """UniPCMultistepScheduler: lower_order_final=True lowers the last steps of every run, as unipc's default."""
    x_T = model.prior(16, torch.Generator().manual_seed(3), dtype=torch.float32)
    scheduler = diffusers.UniPCMultistepScheduler(
        num_train_timesteps=N, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", solver_order=order,
        solver_type=variant, predict_x0=prediction == "data", lower_order_final=True, timestep_spacing="linspace",
        final_sigmas_type="sigma_min", use_karras_sigmas=False,
    )
    ref, ns = run_diffusers(scheduler, model, x_T.clone(), steps)
    ts = torch.tensor([(n + 1) / N for n in ns] + [1 / N], dtype=torch.float64)
    ours = dpms.sample(model, model.schedule, x_T.double(), solver=f"unipc{order}", timesteps=ts, variant=variant, prediction=prediction)
    assert torch.allclose(ours.float(), ref, atol=5e-4), (ours.float() - ref).abs().max()


@pytest.mark.parametrize("steps", [6, 10, 20])
@pytest.mark.parametrize("solver,order", [("deis1", 2), ("deis2", 3)])
def test_deis_logrho_matches_diffusers_deis_multistep(model, solver, order, steps):
    """DEISMultistepScheduler implements DEIS's log-ρ variant (Lagrange polynomial in log ρ, integrated in ρ);
    its solver_order counts points, ours the polynomial degree (deis1 = order 2). Its last step goes to ᾱ_0, dpms's t_end."""
    x_T = model.prior(16, torch.Generator().manual_seed(4), dtype=torch.float32)
    scheduler = diffusers.DEISMultistepScheduler(
        num_train_timesteps=N, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", solver_order=order,
        lower_order_final=False, timestep_spacing="linspace", use_karras_sigmas=False,
    )
    ref, ns = run_diffusers(scheduler, model, x_T.clone(), steps)
    ts = torch.tensor([(n + 1) / N for n in ns] + [1 / N], dtype=torch.float64)
    ours = dpms.sample(model, model.schedule, x_T.double(), solver=solver, timesteps=ts, variant="logrho")
    assert torch.allclose(ours.float(), ref, atol=5e-4), (ours.float() - ref).abs().max()
