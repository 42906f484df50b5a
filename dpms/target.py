"""What is sampled: one `Target` for everything dpms samples, built by one `load_target`.

`load_target(name, ...)` dispatches on the registry's `kind` (checkpoints/registry.yaml): an `exact` entry
is a closed-form model (the Gaussian mixture `gmm`: ε*(x, t) in float64, no network); a `model` entry is a
network: its checkpoint (found, hash-checked, read), the network it was given (`network=`), or random
weights (`random_weights=True`, for timing). The `Target` carries what a sampler, `dpms sample`,
`dpms bench` and `dpms speed` need: the sample shape and dtype, the uint8 convention of its images, the
number of classes labels are drawn from, the schedule, the noise function (labels, classifier guidance,
autocast) and the bare network with its time input.

`Target.draw` is the one per-batch draw of dpms: x_T of samples `idx` (each from its own generator seeded
by (seed, i)), their labels, their step-noise seeds, then `dpms.sample`. So sample i is the same whatever
the batch size or the number of processes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch import Tensor, nn

from . import sampler
from .errors import DpmsError
from .memory import auto_batch, solver_copies
from .model_wrapper import time_input
from .models import GaussianMixture
from .models.acceleration import accelerate
from .models.architectures import architecture, build
from .models import checkpoints
from .models.checkpoints import LoadedModel, Preset, check_labels, get_preset
from .sampler.noise import initial_noise, labels, step_noise_seeds
from .schedule import NoiseSchedule

DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}  # --dtype -> autocast dtype
EXACT_MODELS = {"gmm": GaussianMixture.default}  # registry `arch` of an `exact` entry -> its closed-form model


def _identity(t: Tensor) -> Tensor:
    return t


@dataclass
class Target:
    """What a sampler needs from a model (see the module docstring).

    make_noise_fn(y=None, net=None): the noise predictor ε(x, t) for labels y (or None), around `net` if given
    (a stand-in with the network's signature, for timing the wrapper alone). network(y=None): the bare call
    (x, t_in) -> ε with the same labels and autocast, without dpms's wrapper (for learned-σ networks the ε
    channels); time_input(t): the network's time input at times t. For the exact model all three are the
    closed-form ε itself and the identity.
    """

    name: str
    schedule: NoiseSchedule
    shape: tuple  # one sample, e.g. (3, 32, 32) or (8,)
    is_image: bool
    make_noise_fn: Callable
    num_classes: int | None = None  # classes labels are drawn from (conditional or classifier-guided)
    uint8: str = "floor"  # quantisation of image samples (dpms.images.to_uint8), the preset's `uint8`
    memory_format: torch.memory_format = torch.contiguous_format  # of the batch x_T (channels_last: NHWC)
    sample_dtype: torch.dtype = torch.float32  # of x_T and the solver's arithmetic
    network_dtype: str = "fp32"  # what the network runs in: fp32, fp16 or bf16 (autocast); fp64: closed form
    network: Callable | None = None
    time_input: Callable = _identity
    exact: GaussianMixture | None = None  # the closed-form model (exact ODE solutions, data moments)
    module: nn.Module | None = None  # the network itself (None for the exact model)
    preset: Preset | None = None

    def in_layout(self, x: Tensor) -> Tensor:
        """A batch of images in the target's memory format (the solvers' elementwise updates keep the
        batch's layout, so x_T is converted once)."""
        return x.contiguous(memory_format=self.memory_format) if len(self.shape) == 3 else x

    def initial_noise(self, idx: list[int], seed: int, device, dtype: torch.dtype | None = None) -> Tensor:
        """x_T of samples `idx` (`dpms.sampler.noise.initial_noise`), in the target's memory format."""
        return self.in_layout(initial_noise(self.shape, idx, seed, device=device, dtype=dtype or self.sample_dtype))

    def labels(self, idx: list[int], seed: int, device, class_labels: list[int] | None = None) -> Tensor | None:
        """Labels of samples `idx`: `class_labels` cycled if given, else drawn from (seed, i); None for an
        unconditional, unguided target."""
        if not self.num_classes:
            return None
        y = torch.tensor([class_labels[i % len(class_labels)] for i in idx]) if class_labels else labels(self.num_classes, idx, seed)
        return y.to(device)

    def check_labels(self, class_labels: list[int] | None) -> None:
        """Given labels must be classes of the model (or of its guiding classifier): checked before any
        sampling, since a bad index would otherwise surface as an embedding IndexError mid-run."""
        if class_labels is None:
            return
        if self.num_classes is None:
            raise DpmsError(f"model {self.name!r} is not class-conditional; drop --labels")
        if not class_labels:
            raise DpmsError("--labels is empty; give class indices such as 3,207,980, or omit it for random labels")
        check_labels(torch.tensor(class_labels), self.num_classes, self.name)

    def draw(self, idx: list[int], seed: int, device, solver: str, nfe: int | None, skip: str | None = None,
             t_end: float | None = None, class_labels: list[int] | None = None, **options) -> Draw:
        """Samples `idx` of a run seeded by `seed`: initial noise, labels, step-noise seeds, `dpms.sample`."""
        x_T = self.initial_noise(idx, seed, device)
        y = self.labels(idx, seed, device, class_labels)
        x, info = sampler.sample(self.make_noise_fn(y), self.schedule, x_T, solver=solver, nfe=nfe, skip=skip,
                                 t_end=t_end, seeds=step_noise_seeds(idx, seed), return_info=True, **options)
        return Draw(x, info, x_T, y)


class Draw(NamedTuple):
    x: Tensor  # the samples
    info: object  # dpms.SampleInfo
    x_T: Tensor
    y: Tensor | None


def check_network_options(preset: str | Preset, dtype: str, channels_last: bool, compile: bool, cuda_graphs: bool) -> None:
    """Refuse network options for an exact model, whose ε is closed-form (float64), not a network."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    if preset.kind == "exact" and (dtype != "fp32" or channels_last or compile or cuda_graphs):
        raise DpmsError(f"{preset.name} is the closed-form ε of a Gaussian mixture, computed in float64, not a network: "
                        "--dtype, --compile, --cuda-graphs and --channels-last do not apply to it")


def describe_target(name: str) -> tuple[Preset, NoiseSchedule, tuple[int, ...], bool]:
    """(preset, schedule, sample shape, is_image) of a diffusion-model entry, without loading any weights."""
    preset = get_preset(name)
    if preset.kind == "classifier":
        raise DpmsError(f"{preset.name} is a noisy classifier, not a diffusion model; name it in model.classifier")
    if preset.kind == "exact":
        exact = _exact_model(preset)
        return preset, exact.schedule, (exact.dim,), False
    return preset, NoiseSchedule.from_spec(preset.schedule), tuple(preset.image_shape), True


def _exact_model(preset: Preset) -> GaussianMixture:
    if preset.arch not in EXACT_MODELS:
        raise DpmsError(f"preset {preset.name!r} is exact but dpms has no closed-form model {preset.arch!r}; "
                        f"exact models: {', '.join(EXACT_MODELS)}")
    return EXACT_MODELS[preset.arch]()


def load_target(
    model: str,
    checkpoint: str | None = None,
    device: str = "cpu",
    dtype: str = "fp32",
    classifier: str | None = None,
    guidance_scale: float = 0.0,
    verify_hash: bool = True,
    channels_last: bool = False,
    compile: bool = False,
    cuda_graphs: bool = False,
    random_weights: bool = False,
    network: nn.Module | None = None,
    seed: int = 0,
) -> Target:
    """Resolve a registry name (`dpms models`) into a sampling target (see the module docstring).

    checkpoint: where the weights are (default: the preset's file); random_weights: the preset's network with
    its published configuration and random weights seeded by `seed` (timing does not depend on the weights);
    network: use this network (with the preset's schedule, time map and prediction type) instead of reading one.
    dtype: the network's autocast precision; channels_last / compile / cuda_graphs: how the network runs
    (`dpms.models.acceleration.accelerate`).

    Labels are drawn for class-conditional networks, and for an unconditional network guided by a
    classifier (guided-diffusion's 256×256 unconditional model): there they only choose the class whose
    log-probability the guidance ascends.
    """
    if dtype not in DTYPES:
        raise DpmsError(f"unknown --dtype {dtype!r}; use fp32, fp16 or bf16")
    preset, schedule, shape, is_image = describe_target(model)
    check_network_options(preset, dtype, channels_last, compile, cuda_graphs)
    if not is_image:
        exact = _exact_model(preset)
        return Target(preset.name, exact.schedule, shape, False, lambda y=None, net=None: net or exact,
                      sample_dtype=torch.float64, network_dtype="fp64", network=lambda y=None: exact, exact=exact,
                      preset=preset)
    if network is not None or random_weights:
        if network is None:
            torch.manual_seed(seed)
            network = build(preset.arch, preset.config).to(device).eval().requires_grad_(False)
        loaded = LoadedModel.of(preset, architecture(preset.arch).for_sampling(network))
    else:
        loaded = checkpoints.load(preset.name, checkpoint=checkpoint, device=device, verify_hash=verify_hash)
    if channels_last or compile or cuda_graphs:
        loaded.net = accelerate(loaded.net, channels_last=channels_last, compile=compile, cuda_graphs=cuda_graphs)
    clf = None
    label_classes = loaded.num_classes
    if classifier is not None or guidance_scale:
        if guidance_scale and classifier is None:
            raise DpmsError("--guidance-scale needs --classifier PATH (the noisy classifier checkpoint)")
        clf = checkpoints.load_classifier(loaded.classifier_preset, classifier, device=device, verify_hash=verify_hash)
        label_classes = label_classes or clf.out_channels
    autocast = DTYPES[dtype]

    def make_noise_fn(y=None, net=None):
        source = loaded if net is None else dataclasses.replace(loaded, net=net)
        return source.noise_fn(y=y, guidance_scale=guidance_scale, classifier=clf, autocast_dtype=autocast)

    def bare_network(y=None):
        net, channels, learned_sigma = loaded.net, loaded.image_shape[0], loaded.preset.learned_sigma
        kwargs = {} if y is None else {"y": y}

        def bare(x: Tensor, t_in: Tensor) -> Tensor:
            if autocast is None:
                out = net(x, t_in, **kwargs)
            else:
                with torch.autocast(device_type=x.device.type, dtype=autocast):
                    out = net(x, t_in, **kwargs)
            return out[:, :channels] if learned_sigma else out

        return bare

    return Target(
        preset.name, loaded.schedule, tuple(loaded.image_shape), True, make_noise_fn, label_classes,
        uint8=preset.uint8, memory_format=torch.channels_last if channels_last else torch.contiguous_format,
        network_dtype=dtype, network=bare_network,
        time_input=lambda t: time_input(loaded.schedule, t, preset.time_map, loaded.time_scale),
        module=loaded.net, preset=preset,
    )


def auto_batch_size(target: Target, solver: str, nfe: int | None, device: str = "cpu", limit: int = 8192) -> int:
    """`--batch auto`: on CUDA the largest power of two whose forward pass fits in memory next to the
    copies of the batch the solver keeps (`dpms.memory.solver_copies`, measured), on CPU the power of two
    after which samples/s stop improving by 5 % (`dpms.memory.auto_batch`). Probes with the target's own
    noise predictor (labels, guidance, dtype, acceleration) at t = T/2."""
    dev = torch.device(device)
    dtype = target.sample_dtype
    if dev.type != "cuda":
        extra = 0  # the CPU probe times images/s; memory does not bound it
    elif sampler.get_solver(solver).adaptive:
        extra = 8  # the adaptive solvers keep x, x_prev and two candidate steps with their ε's
    else:
        extra = solver_copies(solver, target.schedule, target.shape, nfe or 10, dtype) + 1

    def forward_at(b: int, hold: int = 0):
        held = [torch.empty((b, *target.shape), dtype=dtype, device=dev) for _ in range(hold)]  # noqa: F841 (headroom)
        y = labels(target.num_classes, list(range(b)), 0).to(dev) if target.num_classes else None
        x = target.in_layout(torch.randn((b, *target.shape), dtype=dtype, device=dev))
        with torch.inference_mode():
            return target.make_noise_fn(y)(x, torch.full((b,), 0.5 * target.schedule.T, dtype=dtype, device=dev))

    return auto_batch(forward_at, dev, limit=limit, extra_copies=extra)
