"""Small, seeded training loops for the models dpms ships (see `dpms.digits`)."""

from .diffusion import TrainResult, WeightEMA, train_noise_predictor

__all__ = ["TrainResult", "WeightEMA", "train_noise_predictor"]
