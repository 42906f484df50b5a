"""Read the published checkpoint formats into one flat state_dict for a dpms network.

| format | on disk | what dpms samples with |
|---|---|---|
| flat / openai | a plain `state_dict` (pesser's DDPM conversions, OpenAI `.pt`, dpms's own files) | it |
| ddim-list | `[model_state ("module." keys), optimizer_state, epoch, step, ema_state]` (ermongroup/ddim `ckpt.pth`) | the last element, the EMA |
| score_sde | `{'optimizer', 'model', 'ema', 'step'}`; `ema.shadow_params` is an unnamed list in parameter order | EMA values by position, buffers from `model` |
| diffusers | a folder with config.json and diffusion_pytorch_model.safetensors or .bin | renamed to the ddpm layout |
| edm-pickle | NVlabs/edm's snapshot pickle (`dict(ema=...)`, persistent classes) | `ema`, by the restricted reader of `edm_snapshot` |

Files are read with `torch.load(weights_only=True)`, safetensors, or (EDM) an allowlisted unpickler only:
no pickled code is ever run. A `module.` prefix (DataParallel) is stripped whenever every key carries it.

A format is one `CheckpointFormat` subclass, registered in `FORMATS` by name: `exists` (is a copy present
at a path), `detect` (does a file hold this format), `read` (the meta-built network and its state_dict),
`fetch` (`dpms download`), `is_folder`. The loader reads a file with the format its preset declares, and a
file of another format is refused naming both.
"""

from __future__ import annotations

import hashlib
import pickle
import re
from pathlib import Path
from functools import cached_property
from typing import TYPE_CHECKING, Callable, ClassVar, Mapping

import torch
from torch import Tensor, nn

from ..errors import DpmsError, strip_ansi

if TYPE_CHECKING:
    from .checkpoints import Preset

HASHES = ("md5", "sha256")
_SCORE_SDE_KEYS = {"model", "ema"}  # score_sde's checkpoint also has 'optimizer' and 'step'
_FORMATS_HELP = (
    "dpms reads flat state_dicts, DDIM [model, optimizer, epoch, step, ema] lists, "
    "score_sde {'model', 'ema', ...} dicts, diffusers folders and EDM snapshots"
)


def file_hash(path: Path, algorithm: str, chunk_size: int = 1 << 20) -> str:
    """Hex digest of a file (md5 or sha256), read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


class UnreadableCheckpoint(DpmsError):
    """A file that cannot be parsed at all (truncated download, an HTML error page saved as .pt, bytes
    overwritten, ...). `load` re-raises it with how to get that preset's file again."""

    def __init__(self, path: Path, reason: str, fix: str = "delete it and download it again"):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path} is corrupt or unreadable ({reason}); {fix}")


def _reason(error: BaseException) -> str:
    """The gist of a reader's error in one short line: torch's weights-only message spans paragraphs
    with terminal bold codes, the useful part follows "WeightsUnpickler error:"; miniz's errors append
    boilerplate after their first sentence."""
    text = strip_ansi(str(error))
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return f"{type(error).__name__}, the file is empty or truncated"
    return lines[0].split(". ")[0].rstrip(".")


def _pickled_code(error: BaseException) -> str | None:
    """The global a weights-only load refused (e.g. "posix.system"), or None when the error is not such a
    refusal. torch words it differently across versions ("Unsupported global: GLOBAL x", "Trying to load
    unsupported GLOBAL x whose module y is blocked"), so the match is on the word GLOBAL and its name."""
    text = strip_ansi(str(error))
    found = re.search(r"unsupported global:?\s*(?:GLOBAL\s+)?([\w.<>]+)", text, re.IGNORECASE)
    return None if found is None else found.group(1)


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except SafetensorError as e:
        raise UnreadableCheckpoint(path, f"safetensors: {_reason(e)}") from None


def torch_load(path: Path):
    """`torch.load(weights_only=True)` on CPU, or safetensors; a file that needs pickled code is refused
    and a file that is not a checkpoint at all is an `UnreadableCheckpoint`."""
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        code = _pickled_code(e)
        if code is None:  # not a pickle torch can parse: damaged bytes
            raise UnreadableCheckpoint(path, f"torch.load: {_reason(e)}") from None
        raise DpmsError(
            f"{path} contains pickled code ({code}) and is refused: dpms never runs code from a checkpoint file; "
            "re-save the weights as a plain state_dict of tensors (torch.save(model.state_dict(), ...)) or as .safetensors"
        ) from None
    except (PermissionError, IsADirectoryError) as e:
        raise DpmsError(f"cannot open {path} ({e.strerror}); check the path and its permissions") from None
    except Exception as e:  # noqa: BLE001  damaged files make the parser fail in many ways (zip, EOF, unicode, index, ...)
        raise UnreadableCheckpoint(path, f"torch.load: {_reason(e)}") from None


def strip_module_prefix(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Drop DataParallel's `module.` prefix when every key has it; other dicts are returned unchanged."""
    keys = list(state_dict)
    if keys and all(k.startswith("module.") for k in keys):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def _is_tensor_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
    )


class Source:
    """A checkpoint path whose content is read at most once, by whichever format asks first."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @cached_property
    def torch_object(self):
        """What `torch_load` reads from the file (tensor-only pickles and safetensors)."""
        return torch_load(self.path)

    @cached_property
    def head(self) -> bytes:
        """The file's first 4 KiB (format signatures)."""
        with open(self.path, "rb") as f:
            return f.read(4096)


BuildMeta = Callable[[str, Mapping], nn.Module]  # (arch, config) -> network on the meta device


class CheckpointFormat:
    """One on-disk checkpoint layout. Subclasses set `name` and implement `detect` and `read`."""

    name: ClassVar[str]
    layout: ClassVar[str | None] = None  # formats with one layout under two names (flat, openai) share it
    is_folder: ClassVar[bool] = False  # a folder of files (diffusers), not one file

    def exists(self, path: Path) -> bool:
        """Whether a complete copy is at `path` (an interrupted download is not)."""
        return path.is_file()

    def detect(self, source: Source) -> bool:
        """Whether the file at `source` is in this format."""
        raise NotImplementedError

    def read(self, source: Source, preset: "Preset", config: dict, build_meta: BuildMeta) -> tuple[nn.Module, dict, dict[str, Tensor]]:
        """(the preset's network built on the meta device, the config it was built from, the state_dict to load)."""
        net = build_meta(preset.arch, config)
        return net, config, self.state_dict(source, net)

    def state_dict(self, source: Source, net: nn.Module) -> dict[str, Tensor]:
        raise NotImplementedError

    def fetch(self, preset: "Preset", destination: Path, progress, timeout: float) -> None:
        """Download the preset's file to `destination`, atomically and verified (`dpms download`)."""
        from .download import fetch_file

        fetch_file(preset, destination, progress, timeout)


def _is_torch_file(source: Source) -> bool:
    return not source.path.is_dir()


class FlatFormat(CheckpointFormat):
    """A plain state_dict (pesser's DDPM conversions, dpms's own files; safetensors too)."""

    name = "flat"

    def detect(self, source: Source) -> bool:
        return _is_torch_file(source) and _is_tensor_dict(source.torch_object)

    def state_dict(self, source: Source, net: nn.Module) -> dict[str, Tensor]:
        return strip_module_prefix(source.torch_object)


class OpenAIFormat(FlatFormat):
    """OpenAI's `.pt` files: plain state_dicts as well (the name records where they come from)."""

    name = "openai"
    layout = "flat"


class DdimListFormat(CheckpointFormat):
    """ermongroup/ddim `ckpt.pth`: [model_state, optimizer_state, epoch, step, ema_state]."""

    name = "ddim-list"

    def detect(self, source: Source) -> bool:
        return _is_torch_file(source) and isinstance(source.torch_object, (list, tuple))

    def state_dict(self, source: Source, net: nn.Module) -> dict[str, Tensor]:
        return _ddim_ema_state(source.torch_object, source.path)


class ScoreSdeFormat(CheckpointFormat):
    """score_sde's {'optimizer', 'model', 'ema', 'step'}; EMA shadow params matched to the network by position."""

    name = "score_sde"

    def detect(self, source: Source) -> bool:
        obj = source.torch_object if _is_torch_file(source) else None
        return isinstance(obj, Mapping) and _SCORE_SDE_KEYS <= set(obj)

    def state_dict(self, source: Source, net: nn.Module) -> dict[str, Tensor]:
        return _score_sde_ema_state(source.torch_object, net, source.path)


def _formats() -> dict[str, CheckpointFormat]:
    from .diffusers_format import DiffusersFormat
    from .edm_snapshot import EdmPickleFormat

    # detection order: folders and pickles with a signature first, then what torch.load reads
    return {fmt.name: fmt for fmt in (DiffusersFormat(), EdmPickleFormat(), FlatFormat(), OpenAIFormat(),
                                      DdimListFormat(), ScoreSdeFormat())}


class _Registry(Mapping):
    """`FORMATS`: name -> `CheckpointFormat`, built on first use (the folder and EDM formats live in their
    own modules, which import this one)."""

    def __getitem__(self, name: str) -> CheckpointFormat:
        return self._table[name]

    def __iter__(self):
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)

    @cached_property
    def _table(self) -> dict[str, CheckpointFormat]:
        return _formats()


FORMATS: Mapping[str, CheckpointFormat] = _Registry()


def detect_format(source: Source) -> str:
    """Name of the first format whose `detect` accepts the file or folder at `source`."""
    for name, fmt in FORMATS.items():
        if fmt.detect(source):
            return name
    raise DpmsError(f"unknown checkpoint format: {_describe(source.torch_object)}; {_FORMATS_HELP}")


def checked_format(source: Source, declared: str, owner: str) -> CheckpointFormat:
    """The declared format of `owner` (a preset), once the file is seen to be in it; a file in another
    format is one line naming both."""
    fmt, found = FORMATS[declared], FORMATS[detect_format(source)]
    if (found.layout or found.name) == (fmt.layout or fmt.name):
        return fmt
    raise DpmsError(
        f"{source.path} is a {found.name} checkpoint but {owner} declares format {declared}; "
        f"pass that preset's own {declared} file, or use a preset of format {found.name}"
    )


def check_file_config(what: str, preset_name: str, config: Mapping, file_config: Mapping, own: str,
                      ignored: tuple[str, ...] = ("dropout",)) -> None:
    """A file (or folder) that defines its own network must define the preset's, apart from `ignored`
    settings that do not change the sampled function (dropout is off at sampling)."""
    for key, value in file_config.items():
        if key in ignored:
            continue
        expected = config.get(key)
        if _normalise(expected) != _normalise(value):
            raise DpmsError(
                f"{what} describes {key}={_normalise(value)}, but preset {preset_name} has "
                f"{key}={_normalise(expected)}; point the preset at its own {own}"
            )


def _normalise(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def _describe(obj) -> str:
    if isinstance(obj, Mapping):
        keys = ", ".join(repr(k) for k in list(obj)[:4]) + (", ..." if len(obj) > 4 else "")
        return f"a dict with keys {keys}" if obj else "an empty dict"
    return f"an object of type {type(obj).__name__}"


def _ddim_ema_state(items, path: Path) -> dict[str, Tensor]:
    """The EMA state of ermongroup/ddim's list checkpoint: its last element (DDIM samples with `ema`)."""
    ema = items[-1] if items else None
    if not _is_tensor_dict(ema):
        raise DpmsError(
            f"DDIM list checkpoint {path} has no EMA state_dict as its last element (found {_describe(ema)}); "
            "dpms samples with the EMA weights, as DDIM does"
        )
    return strip_module_prefix(ema)


def _score_sde_ema_state(ckpt: Mapping, net: nn.Module, path: Path) -> dict[str, Tensor]:
    """score_sde: EMA `shadow_params` (an unnamed list in `net.parameters()` order) as the parameters,
    buffers (the float64 `sigmas`) from the DataParallel `model` state_dict."""
    ema = ckpt["ema"]
    shadow = ema.get("shadow_params") if isinstance(ema, Mapping) else None
    if not isinstance(shadow, (list, tuple)):
        raise DpmsError(f"score_sde checkpoint {path} has no ema.shadow_params list; it is not a score_sde checkpoint")
    names = [name for name, _ in net.named_parameters()]
    if len(shadow) != len(names):
        raise DpmsError(
            f"score_sde checkpoint {path} has {len(shadow)} EMA shadow_params but the network has {len(names)} "
            "parameter tensors; the preset's config does not match this checkpoint"
        )
    state = {k: v for k, v in strip_module_prefix(ckpt["model"]).items() if k not in set(names)}
    state.update(zip(names, shadow))
    return state


def load_strict(net: nn.Module, state_dict: Mapping[str, Tensor], source: str, what: str) -> nn.Module:
    """Load `state_dict` into `net` (typically built on the meta device) with strict key and shape checks.

    Tensors are cast to the dtype the network registers (fp32 weights, the float64 `sigmas` buffer) and
    assigned, so a meta-built network needs no initialisation. Any mismatch raises a one-line `DpmsError`
    naming the first missing and first unexpected key with their counts, or the first shape mismatch.
    """
    expected = net.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), first {missing[0]!r}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), first {unexpected[0]!r}")
        raise DpmsError(
            f"checkpoint {source} does not fit {what}: {'; '.join(parts)}; "
            "use the preset this checkpoint was published for"
        )
    for key, target in expected.items():
        if tuple(state_dict[key].shape) != tuple(target.shape):
            raise DpmsError(
                f"checkpoint {source} does not fit {what}: {key!r} has shape {tuple(state_dict[key].shape)}, "
                f"the network expects {tuple(target.shape)}; use the preset this checkpoint was published for"
            )
    cast = {key: state_dict[key].to(dtype=target.dtype) for key, target in expected.items()}
    net.load_state_dict(cast, strict=True, assign=True)
    return net
