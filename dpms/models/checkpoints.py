"""Checkpoint presets and loading: `load("cifar10-ddpm")` gives a ready noise predictor.

The presets live in `checkpoints/registry.yaml` (one entry per published checkpoint; see the field list at
its top). A preset carries what cannot be read from the weights: the architecture and its config, the
training noise schedule, how the network takes time, what it predicts, and where the file lives.

Where dpms looks for a preset's file, in order: an explicit `checkpoint=` path (`--checkpoint PATH`),
`$DPMS_CHECKPOINTS/<file>`, `./checkpoints/<file>`, then `<repo>/checkpoints/<file>`.

    model = load("cifar10-ddpm", device="cuda")
    x0 = dpms.sample(model, model.schedule, x_T, solver="dpm3", nfe=10)   # the model is a noise_fn
    noise_fn = model.noise_fn(y=labels, guidance_scale=1.25, classifier=load_classifier(model.classifier_preset))
    # classifier-free guidance, for a network trained with a null label (none of the published ones is):
    noise_fn = model.noise_fn(y=labels, guidance="classifier-free", guidance_scale=2.0, unconditional_y=NULL_LABEL)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

from ..errors import DpmsError, MissingFileError
from ..images import UINT8_CONVENTIONS
from ..model_wrapper import MODEL_TYPES, TIME_MAPS, NoiseFn, wrap_model
from ..schedule import NoiseSchedule
from .architectures import architecture, build, image_shape_of, num_classes_of
from .checkpoint_formats import FORMATS, HASHES, Source, UnreadableCheckpoint, checked_format, file_hash, load_strict

REPO_ROOT = Path(__file__).resolve().parents[2]
REGISTRY = REPO_ROOT / "checkpoints" / "registry.yaml"
ENV_VAR = "DPMS_CHECKPOINTS"

KINDS = ("model", "classifier", "exact")
DOWNLOADS = ("direct", "manual", "shipped")
_NETWORK_FIELDS = ("arch", "config", "params", "schedule", "time_map", "time_scale", "model_type",
                   "learned_sigma", "image_shape", "num_classes", "file", "format", "download", "hash")


@dataclass(frozen=True)
class Preset:
    """One registry entry (see the field list at the top of checkpoints/registry.yaml)."""

    name: str
    kind: str
    arch: str
    image_shape: tuple[int, ...]
    schedule: dict
    config: dict = field(default_factory=dict)
    params: int | None = None
    time_map: str = "discrete"
    time_scale: float = 1000.0
    model_type: str = "noise"
    learned_sigma: bool = False
    num_classes: int | None = None
    classifier: str | None = None
    uint8: str = "floor"  # how samples become 8-bit images (dpms.images.to_uint8), as the paper's FID pipeline did
    file: str | None = None
    format: str | None = None
    url: str | None = None
    download: str | None = None
    reproduce: str | None = None
    hash: tuple[str, str] | None = None  # (algorithm, hex digest)
    fid_reference: dict | None = None  # {file, url}: the reference statistics the model's published FID used
    licence: str | None = None
    source: str = ""
    paper: str = ""

    @property
    def is_folder(self) -> bool:
        return self.format is not None and FORMATS[self.format].is_folder


# ------------------------------------------------------------------------------------------ registry
def _parse_hash(name: str, value) -> tuple[str, str] | None:
    if value is None:
        return None
    if not (isinstance(value, Mapping) and len(value) == 1 and next(iter(value)) in HASHES):
        raise DpmsError(f"registry preset {name!r}: hash must be null or {{md5: HEX}} / {{sha256: HEX}}, got {value!r}")
    algorithm, digest = next(iter(value.items()))
    return algorithm, str(digest).lower()


def _check_choice(name: str, key: str, value, choices) -> None:
    if value not in choices:
        raise DpmsError(f"registry preset {name!r}: {key}={value!r} is not one of {', '.join(map(str, choices))}")


def _check_uint8(name: str, kind: str, entry: Mapping) -> None:
    """Diffusion models name how their samples become 8-bit images (it moves FID); classifiers and
    the exact model make no images."""
    if kind == "model":
        _check_choice(name, "uint8", entry["uint8"], UINT8_CONVENTIONS)
    elif "uint8" in entry:
        raise DpmsError(f"registry preset {name!r}: a {kind} preset makes no images; drop its uint8 field")


def _parse_preset(name: str, entry: Mapping) -> Preset:
    """Validate one registry entry; a malformed entry is a one-line `DpmsError` naming the field."""
    kind = entry.get("kind")
    _check_choice(name, "kind", kind, KINDS)
    required = ("arch", "image_shape", "schedule") if kind == "exact" else _NETWORK_FIELDS
    if kind == "model":
        required += ("uint8",)
    absent = [key for key in required if key not in entry]
    if absent:
        raise DpmsError(f"registry preset {name!r} lacks field(s) {', '.join(absent)}; see checkpoints/registry.yaml")
    _check_uint8(name, kind, entry)
    if kind != "exact":
        _check_choice(name, "model_type", entry["model_type"], MODEL_TYPES if kind == "model" else ("logits",))
        _check_choice(name, "time_map", entry["time_map"], TIME_MAPS)
        _check_choice(name, "format", entry["format"], FORMATS)
        _check_choice(name, "download", entry["download"], DOWNLOADS)
        if entry["download"] != "shipped" and not entry.get("url"):
            raise DpmsError(f"registry preset {name!r}: download {entry['download']!r} needs a url")
    known = set(Preset.__dataclass_fields__) - {"name"}
    unknown = sorted(set(entry) - known)
    if unknown:
        raise DpmsError(f"registry preset {name!r} has unknown field(s) {', '.join(unknown)}")
    values = dict(entry)
    values["image_shape"] = tuple(int(n) for n in entry["image_shape"])
    values["hash"] = _parse_hash(name, entry.get("hash"))
    if "time_scale" in values:
        values["time_scale"] = float(values["time_scale"])
    return Preset(name=name, **values)


@lru_cache(maxsize=4)
def _read_registry(path: Path) -> dict[str, Preset]:
    import yaml

    if not path.is_file():
        raise MissingFileError(f"checkpoint registry {path} not found; dpms must run from its source tree (pip install -e .)")
    data = yaml.safe_load(path.read_text())
    return {name: _parse_preset(name, entry) for name, entry in data["presets"].items()}


def presets() -> dict[str, Preset]:
    """Every preset of checkpoints/registry.yaml, by name, in registry order."""
    return dict(_read_registry(REGISTRY))


def get_preset(name: str) -> Preset:
    """The preset called `name`; an unknown name is a one-line error listing the valid ones."""
    table = presets()
    if name not in table:
        raise DpmsError(f"unknown model preset {name!r}; valid presets: {', '.join(table)}")
    return table[name]


def as_preset(preset: str | Preset) -> Preset:
    return preset if isinstance(preset, Preset) else get_preset(preset)


# ------------------------------------------------------------------------------------------ files
def search_paths(preset: Preset) -> list[Path]:
    """Where dpms looks for the preset's file, in order: $DPMS_CHECKPOINTS, ./checkpoints, <repo>/checkpoints."""
    if preset.file is None:
        return []
    roots = []
    if os.environ.get(ENV_VAR):
        roots.append(Path(os.environ[ENV_VAR]).expanduser())
    roots += [Path.cwd() / "checkpoints", REPO_ROOT / "checkpoints"]
    paths = []
    for root in roots:
        path = root / preset.file
        if path.resolve() not in [p.resolve() for p in paths]:
            paths.append(path)
    return paths


def _exists(preset: Preset, path: Path) -> bool:
    """A complete copy in the preset's format (a diffusers folder needs config.json and weights)."""
    return FORMATS[preset.format].exists(path) if preset.format else path.is_file()


def find_checkpoint(preset: str | Preset) -> Path | None:
    """The first existing file among `search_paths`, or None."""
    preset = as_preset(preset)
    return next((path for path in search_paths(preset) if _exists(preset, path)), None)


def default_directory() -> Path:
    """Where `dpms download` puts files unless told otherwise: $DPMS_CHECKPOINTS, else <repo>/checkpoints."""
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else REPO_ROOT / "checkpoints"


def how_to_get(preset: Preset, destination: Path | None = None) -> str:
    """How a user obtains the preset's file (for one-line error messages)."""
    if preset.download == "shipped":
        rebuild = f"; recreate it with `{preset.reproduce}`" if preset.reproduce else ""
        return f"it ships with the dpms repository{rebuild}"
    where = f" and put it at {destination}" if destination else ""
    if preset.download == "manual":
        return f"download it by hand from {preset.url}{where}, or pass --checkpoint PATH"
    return f"get it with `dpms download {preset.name}` ({preset.url}), or pass --checkpoint PATH"


def resolve_checkpoint(preset: str | Preset, checkpoint: str | Path | None = None) -> Path:
    """The checkpoint path: `checkpoint` if given, else the first of `search_paths` that exists.

    Raises `MissingFileError` (one line) naming every place dpms looked and how to get the file.
    """
    preset = as_preset(preset)
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.exists():
            raise MissingFileError(f"checkpoint {path} for {preset.name} does not exist; {how_to_get(preset)}")
        return path
    if preset.file is None:
        raise DpmsError(f"preset {preset.name!r} has no checkpoint file")
    found = find_checkpoint(preset)
    if found is None:
        looked = search_paths(preset)
        raise MissingFileError(
            f"checkpoint for {preset.name} not found (looked in {', '.join(map(str, looked))}); "
            f"{how_to_get(preset, default_directory() / preset.file)}"
        )
    return found


def published_hash_mismatch(preset: Preset, path: Path) -> str | None:
    """The file's digest where it differs from the preset's published md5 / sha256; None where it matches,
    or where no hash is published (then dpms cannot tell) or `path` is a folder."""
    if preset.hash is None or path.is_dir():
        return None
    algorithm, expected = preset.hash
    actual = file_hash(path, algorithm)
    return None if actual == expected else actual


def verify_hash(preset: Preset, path: Path) -> None:
    """Compare a file with the preset's published md5 / sha256 (no-op when none is published)."""
    actual = published_hash_mismatch(preset, path)
    if actual is not None:
        algorithm, expected = preset.hash
        raise DpmsError(
            f"{path} has {algorithm} {actual} but preset {preset.name} expects {expected} (the published file); "
            f"it is corrupt or another checkpoint: re-download it ({how_to_get(preset)}), "
            "or, for your own weights, pass --no-verify (verify_hash=False in Python)"
        )


# ------------------------------------------------------------------------------------------ networks
def _build_meta(arch: str, config: Mapping) -> nn.Module:
    with torch.device("meta"):
        return build(arch, config)


def refetch_hint(preset: Preset, path: Path) -> str:
    """How to replace a damaged copy of the preset's file (or folder) at `path`."""
    if preset.download == "shipped":
        rebuild = f" or recreate it with `{preset.reproduce}`" if preset.reproduce else ""
        return f"restore it with `git checkout -- checkpoints/{preset.file}`{rebuild}"
    if preset.download == "manual":
        return f"delete {path} and download it again by hand from {preset.url}"
    return f"delete {path} and download it again with `dpms download {preset.name}`"


def _read_network(preset: Preset, config: dict, path: Path) -> tuple[nn.Module, dict]:
    """(network with the checkpoint's weights, on CPU, the config it was built from).

    A file that cannot be parsed at all becomes one line naming it and how to get the preset's file again."""
    try:
        return _read_network_from(preset, config, path)
    except UnreadableCheckpoint as e:
        # For a diffusers folder the folder is what must be fetched again, not one file in it.
        raise UnreadableCheckpoint(e.path, e.reason, refetch_hint(preset, path)) from None


def _read_network_from(preset: Preset, config: dict, path: Path) -> tuple[nn.Module, dict]:
    """Read `path` in the preset's declared format (a file in another format is refused naming both)."""
    source = Source(path)
    fmt = checked_format(source, preset.format, f"preset {preset.name}")
    net, config, state_dict = fmt.read(source, preset, config, _build_meta)
    return load_strict(net, state_dict, str(path), f"preset {preset.name} ({preset.arch}, {fmt.name} format)"), config


def _network_time_scale(preset: Preset, schedule: NoiseSchedule) -> float:
    """`time_scale` for `wrap_model` so that discrete table step n reaches the network as n·time_scale/N.

    The wrapper feeds (t − 1/N')·scale, where N' is the number of steps the schedule kept after dropping
    the trailing ones with λ < −5.1 (official `numerical_clip_alpha`; cosine tables lose a few), and
    kept step n sits at t = (n+1)/N'. Scaling by N'/N feeds n·time_scale/N, the input the network was
    trained with at table step n (n itself for N = 1000; n/4 for improved-diffusion's N = 4000).
    """
    if preset.time_map != "discrete":
        return preset.time_scale
    table_steps = int(preset.schedule["N"])
    return preset.time_scale * schedule.N / table_steps


def check_labels(y: Tensor, classes: int | None, owner: str) -> None:
    """Labels are one integer class index per sample; out-of-range ones would fail inside an embedding
    (or silently pick a wrong logit) mid-sampling."""
    if y.dim() != 1 or y.is_floating_point() or y.is_complex():
        raise DpmsError(f"class labels y must be a 1-D integer tensor (one class index per sample), got {y.dtype} of shape {tuple(y.shape)}")
    if classes is None or y.numel() == 0:
        return
    low, high = int(y.min()), int(y.max())  # one host sync per noise_fn, not per network call
    if low < 0 or high >= classes:
        raise DpmsError(f"label {low if low < 0 else high} is not a class of {owner} ({classes} classes); use labels from 0 to {classes - 1}")


_RESERVED_OPTIONS = ("model_type", "time_map", "time_scale", "learned_sigma", "guidance_scale", "classifier",
                     "condition", "unconditional_condition", "condition_to_net")


def _refuse_reserved_options(options: Mapping) -> None:
    """Options that noise_fn sets itself (from the preset or its own arguments) cannot also come through
    **wrapper_options: Python would stop with a duplicate-keyword TypeError."""
    clash = [key for key in _RESERVED_OPTIONS if key in options]
    if clash:
        raise DpmsError(
            f"noise_fn sets {', '.join(clash)} itself; pass labels as y= / unconditional_y=, guidance as "
            "guidance= and guidance_scale=, and the classifier as classifier="
        )


@dataclass
class LoadedModel:
    """A network with its weights and everything needed to sample it.

    Calling the object is the unguided noise predictor `noise_fn(x, t)` (t: continuous times, one per
    sample), so `dpms.sample(model, model.schedule, x_T, ...)` works; `noise_fn(...)` adds labels,
    classifier guidance, autocast and thresholding.
    """

    name: str
    net: nn.Module
    schedule: NoiseSchedule
    preset: Preset
    config: dict
    image_shape: tuple[int, ...]
    num_classes: int | None
    classifier_preset: str | None
    checkpoint: Path | None = None
    _unguided: NoiseFn | None = field(default=None, init=False, repr=False)  # not copied by dataclasses.replace

    @classmethod
    def of(cls, preset: Preset, net: nn.Module, config: Mapping | None = None, checkpoint: Path | None = None) -> LoadedModel:
        """A preset's network `net` (built with `config`, default the preset's) with everything to sample it."""
        config = dict(preset.config if config is None else config)
        return cls(
            name=preset.name,
            net=net,
            schedule=NoiseSchedule.from_spec(preset.schedule),
            preset=preset,
            config=config,
            image_shape=image_shape_of(preset.arch, config),
            num_classes=num_classes_of(preset.arch, config, preset.num_classes),
            classifier_preset=preset.classifier,
            checkpoint=checkpoint,
        )

    @property
    def time_scale(self) -> float:
        """The `time_scale` handed to `wrap_model` (see `_network_time_scale`)."""
        return _network_time_scale(self.preset, self.schedule)

    def noise_fn(
        self,
        y: Tensor | None = None,
        guidance_scale: float = 0.0,
        classifier: nn.Module | None = None,
        autocast_dtype: torch.dtype | None = None,
        guidance: str | None = None,
        unconditional_y: Tensor | int | None = None,
        **wrapper_options,
    ) -> NoiseFn:
        """The wrapped noise predictor ε(x, t) (`dpms.model_wrapper.wrap_model`) for labels `y`.

        `guidance` None means classifier guidance when `guidance_scale` s ≠ 0, else none.
        * "classifier": ε − s·σ_t·∇ₓ log p(y | x_t) (Dhariwal & Nichol 2021) with `classifier` (from
          `load_classifier`); an unconditional network is guided without receiving y.
        * "classifier-free": ε_u + s·(ε_c − ε_u) (Ho & Salimans 2022), ε_c for `y` and ε_u for
          `unconditional_y`, the label a CFG-trained network reserves for "no class" (an int or one per
          sample). None of the published presets was trained with a null label, so this serves your own
          class-conditional network of a preset's architecture (e.g. ADM with num_classes + 1).
        `wrapper_options` go to `wrap_model` (thresholding=..., ...).
        """
        _refuse_reserved_options(wrapper_options)
        if guidance == "classifier-free":
            return self._classifier_free(y, unconditional_y, guidance_scale, autocast_dtype, wrapper_options)
        if guidance not in (None, "classifier"):
            raise DpmsError(f"unknown guidance {guidance!r}; use None, 'classifier' or 'classifier-free'")
        if unconditional_y is not None:
            raise DpmsError("unconditional_y is the null label of classifier-free guidance; pass guidance='classifier-free'")
        guided = guidance == "classifier" or guidance_scale != 0
        if guided and classifier is None:
            hint = f" (classifier preset {self.classifier_preset})" if self.classifier_preset else ""
            raise DpmsError(f"classifier guidance for {self.name} needs a classifier{hint}; pass --classifier PATH")
        if guided and y is None:
            raise DpmsError(f"classifier guidance for {self.name} needs class labels y, one per sample")
        if self.num_classes is not None and y is None:
            raise DpmsError(f"{self.name} is class-conditional ({self.num_classes} classes); pass class labels y")
        if self.num_classes is None and y is not None and not guided:
            raise DpmsError(f"{self.name} is not class-conditional; drop the labels or add classifier guidance")
        if y is not None:
            classes = self.num_classes if self.num_classes is not None else getattr(classifier, "out_channels", None)
            check_labels(y, classes, self.name if self.num_classes is not None else "the classifier")
        return self._wrap(
            guidance="classifier" if guided else None,
            guidance_scale=guidance_scale,
            classifier=classifier if guided else None,
            condition=y,
            condition_to_net=self.num_classes is not None,
            autocast_dtype=autocast_dtype,
            **wrapper_options,
        )

    def _classifier_free(self, y, unconditional_y, guidance_scale: float, autocast_dtype, wrapper_options: dict) -> NoiseFn:
        """ε_u + s·(ε_c − ε_u), both predictions from one batched call of the conditional network."""
        if self.num_classes is None:
            raise DpmsError(f"classifier-free guidance needs a class-conditional network; {self.name} takes no labels")
        if y is None or unconditional_y is None:
            raise DpmsError("classifier-free guidance needs class labels y and unconditional_y, the network's null label")
        null = torch.as_tensor(unconditional_y, device=y.device)
        null = null.expand_as(y) if null.dim() == 0 else null
        check_labels(y, self.num_classes, self.name)
        check_labels(null, self.num_classes, self.name)
        if null.shape != y.shape:
            raise DpmsError(f"unconditional_y has shape {tuple(null.shape)} but y has {tuple(y.shape)}; give one null label or one per sample")
        return self._wrap(
            guidance="classifier-free", guidance_scale=guidance_scale, condition=y, unconditional_condition=null,
            autocast_dtype=autocast_dtype, **wrapper_options,
        )

    def _wrap(self, **options) -> NoiseFn:
        """`wrap_model` with what the preset fixes: prediction type, time map and scale, learned Σ."""
        return wrap_model(
            self.net,
            self.schedule,
            model_type=self.preset.model_type,
            time_map=self.preset.time_map,
            time_scale=self.time_scale,
            learned_sigma=self.preset.learned_sigma,
            **options,
        )

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        if self._unguided is None:
            self._unguided = self.noise_fn()
        return self._unguided(x, t)


def _load_network(preset: Preset, checkpoint, device, dtype, config_override, verify) -> tuple[nn.Module, dict, Path]:
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise DpmsError(f"dtype={dtype!r} is not a floating-point torch dtype; use torch.float32, torch.float16 or torch.bfloat16")
    config = {**preset.config, **(config_override or {})}
    path = resolve_checkpoint(preset, checkpoint)
    if verify:
        verify_hash(preset, path)
    net, config = _read_network(preset, config, path)
    net = architecture(preset.arch).for_sampling(net).to(device=device, dtype=dtype).eval()
    net.requires_grad_(False)  # sampling needs no parameter gradients (guidance differentiates w.r.t. x)
    return net, config, path


def load(
    preset: str | Preset,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    config_override: Mapping | None = None,
    verify_hash: bool = True,
) -> LoadedModel:
    """Load a preset's published checkpoint (any format in `checkpoint_formats`) into a `LoadedModel`.

    `checkpoint` overrides where the file is looked for; `config_override` updates the preset's config
    (small test networks, or your own training run of the same architecture); `dtype` casts the weights
    (prefer `noise_fn(autocast_dtype=...)` for half precision); `verify_hash=False` skips the published hash.
    """
    preset = as_preset(preset)
    if preset.kind == "exact":
        raise DpmsError(f"{preset.name} is the exact model, not a checkpoint; use dpms.models.GaussianMixture.default()")
    if preset.kind == "classifier":
        raise DpmsError(f"{preset.name} is a noisy classifier; load it with load_classifier({preset.name!r})")
    net, config, path = _load_network(preset, checkpoint, device, dtype, config_override, verify_hash)
    return LoadedModel.of(preset, net, config, path)


def load_classifier(
    preset: str | Preset | None,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    config_override: Mapping | None = None,
    verify_hash: bool = True,
) -> nn.Module:
    """A noisy classifier `classifier(x, t_input) -> logits`, eval mode, for `LoadedModel.noise_fn`.

    `preset` is a classifier preset, usually `LoadedModel.classifier_preset`; it takes the same time
    input as its diffusion model.
    """
    if preset is None:
        raise DpmsError("this model has no classifier preset; classifier guidance is only published for the guided ImageNet models")
    preset = as_preset(preset)
    if preset.kind != "classifier":
        raise DpmsError(f"{preset.name} is not a classifier preset; classifiers: {', '.join(n for n, p in presets().items() if p.kind == 'classifier')}")
    net, _, _ = _load_network(preset, checkpoint, device, dtype, config_override, verify_hash)
    return net
