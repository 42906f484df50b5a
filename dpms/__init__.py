"""dpms — fast training-free ODE solvers for pretrained diffusion models, and FID benchmarks.

    import dpms
    schedule = dpms.NoiseSchedule.linear()
    x0 = dpms.sample(noise_fn, schedule, x_T, solver="dpm3", nfe=10)
"""

from .errors import DpmsError
from .model_wrapper import wrap_model
from .sampler import SampleInfo, sample, solvers
from .schedule import NoiseSchedule
from .version import __version__
from .digits import features as _digits_features  # noqa: F401 (declares the "digits" feature kind: dpms.evaluation.kinds)

__all__ = ["NoiseSchedule", "wrap_model", "sample", "solvers", "SampleInfo", "DpmsError", "tune_grid", "__version__"]


def __getattr__(name: str):
    """`dpms.tune_grid` (dpms/tune.py) is imported on first use: it loads models, which `import dpms` does not."""
    if name == "tune_grid":
        from .tune import tune_grid

        return tune_grid
    raise AttributeError(f"module 'dpms' has no attribute {name!r}")
