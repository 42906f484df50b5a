"""Turn any trained network into a noise predictor ε(x, t) in continuous time.

Solvers in dpms see only `noise_fn(x, t)`: t is a 1-D tensor of continuous times on the schedule's axis
(one per sample) and the result is the predicted noise ε_θ(x_t, t) (DPM-Solver, Eq. 2.2). This module
is the single place that adapts a network's conventions to that interface (the official
`model_wrapper` of dpm_solver_pytorch.py plays the same role):

* model types — what the network predicts: ε ("noise"), x₀ ("x_start"), v = α ε − σ x₀ ("v") or the
  score ∇ log q_t ("score"); all are converted to ε with the schedule's α_t, σ_t. A "denoiser" is an
  EDM network D(x_VE; σ_VE) in variance-exploding coordinates: it gets x_VE = x/α_t and σ_VE = σ_t/α_t
  = e^{−λ_t} itself (not a time input: the time map and scale are unused) and ε = (x_VE − D)/σ_VE
  (x = α(x₀ + σ_VE ε), EDM paper Eq. 1 and Sec. 2).
* time maps — how continuous t becomes the network's time input (DPM-Solver App. D.1):
  "discrete" (official default) (t − 1/N)·1000, "type1" 1000·max(t − 1/N, 0), "type2" 1000·(N−1)·t/N,
  "continuous" scale·t (score_sde VP networks take 999·t). The 1000 is `time_scale`.
* learned variance: networks that output 2C channels (improved/guided diffusion) — the first C are ε.
* guidance: classifier guidance ε̃ = ε − s·σ_t·∇ₓ log p(y | x_t) (Dhariwal & Nichol 2021; DPM-Solver
  App. E), and classifier-free guidance ε̃ = ε_u + s(ε_c − ε_u) (Ho & Salimans 2022) with one batched
  network call on the conditional and unconditional inputs.
* thresholding of the data prediction x₀ = (x − σ ε)/α (Imagen; DPM-Solver++ Sec. 5): "static" clips to
  [−max, max]; "dynamic" clips each sample to its `ratio`-quantile of |x₀| (at least `max`) and rescales.
  The thresholded x₀ is turned back into ε, so data-prediction solvers see exactly the thresholded x₀.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .errors import DpmsError
from .schedule import NoiseSchedule

NoiseFn = Callable[[Tensor, Tensor], Tensor]

MODEL_TYPES = ("noise", "x_start", "v", "score", "denoiser")
TIME_MAPS = ("discrete", "type1", "type2", "continuous")
GUIDANCE = (None, "classifier", "classifier-free")
THRESHOLDING = (None, "static", "dynamic")


def _bcast(v: Tensor, x: Tensor) -> Tensor:
    """Per-sample coefficients (B,) broadcast against x (B, ...)."""
    return v.reshape((-1,) + (1,) * (x.dim() - 1))


def time_input(schedule: NoiseSchedule, t: Tensor, time_map: str = "discrete", time_scale: float = 1000.0) -> Tensor:
    """The network's time input for continuous times t (DPM-Solver App. D.1)."""
    if time_map == "continuous":
        return t * time_scale
    if not schedule.is_discrete:
        raise DpmsError(f"time map {time_map!r} needs a discrete schedule; use time_map='continuous' for {schedule!r}")
    n = schedule.N
    if time_map == "discrete":
        return (t - 1.0 / n) * time_scale
    if time_map == "type1":
        return time_scale * torch.clamp(t - 1.0 / n, min=0.0)
    if time_map == "type2":
        return time_scale * (n - 1) * t / n
    raise DpmsError(f"unknown time map {time_map!r}; use one of {', '.join(TIME_MAPS)}")


def parameter_dtype(net) -> torch.dtype | None:
    """The floating dtype of a module's parameters (None for plain functions or parameter-free modules)."""
    if not isinstance(net, torch.nn.Module):
        return None
    return next((p.dtype for p in net.parameters() if p.is_floating_point()), None)


def _as_dtype(x: Tensor, dtype: torch.dtype | None) -> Tensor:
    """x in the network's dtype: weights loaded with dtype=torch.bfloat16 need bf16 inputs (the solver keeps
    its own x in float32/64 and gets ε back in that dtype). The time input is not cast: its embedding is
    computed in float32, and bf16 would round 999·t to a multiple of 4."""
    return x if dtype is None or dtype == x.dtype else x.to(dtype)


def _check_choice(what: str, value, choices) -> None:
    if value not in choices:
        raise DpmsError(f"unknown {what} {value!r}; use one of {', '.join(str(c) for c in choices)}")


def wrap_model(
    net: Callable[..., Tensor],
    schedule: NoiseSchedule,
    model_type: str = "noise",
    time_map: str = "discrete",
    time_scale: float = 1000.0,
    learned_sigma: bool = False,
    model_kwargs: dict | None = None,
    guidance: str | None = None,
    guidance_scale: float = 1.0,
    classifier: Callable[..., Tensor] | None = None,
    classifier_kwargs: dict | None = None,
    condition: Tensor | None = None,
    unconditional_condition: Tensor | None = None,
    condition_key: str = "y",
    condition_to_net: bool = True,
    thresholding: str | None = None,
    threshold_ratio: float = 0.995,
    threshold_max: float = 1.0,
    autocast_dtype: torch.dtype | None = None,
) -> NoiseFn:
    """Wrap `net(x, t_input, **kwargs)` into `noise_fn(x, t) -> ε` for the solvers.

    `condition` is passed to the network as `condition_key=` (class labels `y` for ADM) unless
    `condition_to_net` is False (an unconditional network guided by a classifier); for classifier
    guidance it is also the label whose log-probability is ascended.
    `autocast_dtype` (torch.float16 / torch.bfloat16) runs the network under autocast; ε is returned
    in the dtype of x so the solver's arithmetic keeps its precision. A network whose weights were cast
    (`load(..., dtype=torch.bfloat16)`) gets x in its own dtype, and ε comes back in x's.
    """
    _check_choice("model type", model_type, MODEL_TYPES)
    _check_choice("time map", time_map, TIME_MAPS)
    _check_choice("guidance", guidance, GUIDANCE)
    _check_choice("thresholding", thresholding, THRESHOLDING)
    if guidance == "classifier" and (classifier is None or condition is None):
        raise DpmsError("classifier guidance needs classifier= and condition= (class labels); pass --classifier PATH")
    if guidance == "classifier-free" and (condition is None or unconditional_condition is None):
        raise DpmsError("classifier-free guidance needs condition= and unconditional_condition=")
    model_kwargs = dict(model_kwargs or {})
    classifier_kwargs = dict(classifier_kwargs or {})
    net_dtype, classifier_dtype = parameter_dtype(net), parameter_dtype(classifier)

    def network(x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        kwargs = dict(model_kwargs)
        if cond is not None and condition_to_net:
            kwargs[condition_key] = cond
        if model_type == "denoiser":
            alpha = _bcast(schedule.alpha(t), x)
            sigma_ve = schedule.sigma(t) / schedule.alpha(t)
            x, t_in = x / alpha, sigma_ve
        else:
            t_in = time_input(schedule, t, time_map, time_scale)
        x_in = _as_dtype(x, net_dtype)
        if autocast_dtype is not None:
            with torch.autocast(device_type=x.device.type, dtype=autocast_dtype):
                out = net(x_in, t_in, **kwargs)
        else:
            out = net(x_in, t_in, **kwargs)
        out = out.to(x.dtype)
        if learned_sigma:
            out = out[:, : x.shape[1]]
        if model_type == "noise":
            return out
        if model_type == "denoiser":
            return (x - out) / _bcast(sigma_ve, x)
        alpha, sigma = _bcast(schedule.alpha(t), x), _bcast(schedule.sigma(t), x)
        if model_type == "x_start":
            return (x - alpha * out) / sigma
        if model_type == "v":
            return alpha * out + sigma * x
        return -sigma * out  # score: ∇ log q_t(x) = −ε / σ_t

    def classifier_grad(x: Tensor, t: Tensor) -> Tensor:
        """∇ₓ log softmax(classifier(x, t_input))[y], computed outside inference mode."""
        with torch.inference_mode(False), torch.enable_grad():
            x_in = x.detach().clone().requires_grad_(True)
            t_in = time_input(schedule, t.clone(), time_map, time_scale)
            logits = classifier(_as_dtype(x_in, classifier_dtype), t_in, **classifier_kwargs)  # the cast is differentiable
            log_prob = torch.log_softmax(logits.float(), dim=-1)
            selected = log_prob[torch.arange(x.shape[0], device=x.device), condition.clone()]
            return torch.autograd.grad(selected.sum(), x_in)[0].to(x.dtype)

    def noise_fn(x: Tensor, t: Tensor) -> Tensor:
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        if guidance == "classifier-free":
            cond_in = torch.cat([unconditional_condition, condition])
            eps_u, eps_c = network(torch.cat([x, x]), torch.cat([t, t]), cond_in).chunk(2)
            eps = eps_u + guidance_scale * (eps_c - eps_u)
        else:
            eps = network(x, t, condition)
            if guidance == "classifier":
                eps = eps - guidance_scale * _bcast(schedule.sigma(t), x) * classifier_grad(x, t)
        if thresholding is not None:
            eps = _threshold_eps(x, eps, t, schedule, thresholding, threshold_ratio, threshold_max)
        return eps

    # Thresholding (official DPM-Solver: `data_prediction_fn`) belongs to the data-prediction solvers;
    # `dpms.sample` refuses it for the others.
    noise_fn.thresholding = thresholding
    return noise_fn


def _threshold_eps(x: Tensor, eps: Tensor, t: Tensor, schedule: NoiseSchedule, kind: str, ratio: float, max_value: float) -> Tensor:
    alpha, sigma = _bcast(schedule.alpha(t), x), _bcast(schedule.sigma(t), x)
    x0 = (x - sigma * eps) / alpha
    if kind == "static":
        x0 = x0.clamp(-max_value, max_value)
    else:  # dynamic (Imagen; official DPM-Solver dynamic_thresholding_fn)
        s = torch.quantile(x0.abs().reshape(x0.shape[0], -1).float(), ratio, dim=1).to(x0.dtype)
        s = _bcast(torch.clamp(s, min=max_value), x0)
        x0 = torch.clamp(x0, -s, s) / s
    return (x - alpha * x0) / sigma
