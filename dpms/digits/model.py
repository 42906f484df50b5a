"""The digits diffusion model: dpms's DDPM U-Net (ermongroup/ddim's, shrunk to 8×8 single-channel images)
trained with ε-prediction and L_simple on DDPM's linear betas (N = 1000); the EMA weights ship in
`digits_ddpm.pt`. Its configuration and schedule are the `digits` entry of checkpoints/registry.yaml, the
only copy."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..models import build
from ..models.checkpoints import get_preset
from ..schedule import NoiseSchedule
from .data import DDPM_FILE, DIGITS_DIR, require_file

PRESET = "digits"
DIGITS_DDPM_CONFIG = dict(get_preset(PRESET).config)  # copies: the registry entry is cached and shared
DIGITS_SCHEDULE_SPEC = dict(get_preset(PRESET).schedule)


def digits_schedule() -> NoiseSchedule:
    """DDPM's linear betas, N = 1000 (the schedule the shipped model was trained on)."""
    return NoiseSchedule.from_spec(DIGITS_SCHEDULE_SPEC)


def digits_ddpm_config(dropout: float | None = None, augment_dim: int | None = None) -> dict:
    """The registry's configuration of the digits U-Net; `dropout` replaces its rate (it acts in training only:
    the weights are the same shapes either way), `augment_dim` its augmentation input (2 for shift labels; 0
    drops the key, so a network without one has the upstream DDIM keys only, as its card records)."""
    config = {**DIGITS_DDPM_CONFIG, **({} if dropout is None else {"dropout": dropout})}
    if augment_dim == 0:
        config.pop("augment_dim", None)
    elif augment_dim is not None:
        config["augment_dim"] = augment_dim
    return config


def build_digits_ddpm(dropout: float | None = None, augment_dim: int | None = None) -> nn.Module:
    """The digits U-Net (`digits_ddpm_config`), randomly initialised."""
    return build("ddpm", digits_ddpm_config(dropout, augment_dim))


def load_digits_ddpm(device="cpu", directory: Path | None = None) -> nn.Module:
    """The shipped diffusion network (EMA weights), eval mode; it predicts ε from (x_n, n), n ∈ [0, 999].
    Weights trained with shift labels (`temb.augment`, `dpms train digits --shift-augment`) load with that
    input, which sampling leaves empty."""
    path = require_file(Path(directory or DIGITS_DIR) / DDPM_FILE, "run `dpms train digits` to create it")
    return digits_ddpm_from_weights(torch.load(path, map_location="cpu", weights_only=True)).to(device).eval()


def digits_ddpm_from_weights(weights: dict) -> nn.Module:
    """The digits U-Net holding `weights` (a state_dict: the shipped file's, a snapshot's), with the shift
    labels' input where the weights have one."""
    augment = weights.get("temb.augment.weight")
    with torch.device("meta"):
        model = build_digits_ddpm(augment_dim=0 if augment is None else augment.shape[1])
    model.load_state_dict(weights, strict=True, assign=True)
    return model

