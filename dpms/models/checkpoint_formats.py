"""Read the published checkpoint formats into one flat state_dict for a dpms network.

| format | on disk | what dpms samples with |
|---|---|---|
| flat / openai | a plain `state_dict` (pesser's DDPM conversions, OpenAI `.pt`, dpms's own files) | it |
| ddim-list | `[model_state ("module." keys), optimizer_state, epoch, step, ema_state]` (ermongroup/ddim `ckpt.pth`) | the last element, the EMA |
| score_sde | `{'optimizer', 'model', 'ema', 'step'}`; `ema.shadow_params` is an unnamed list in parameter order | EMA values by position, buffers from `model` |
| diffusers | a folder with config.json and diffusion_pytorch_model.safetensors or .bin | renamed to the ddpm layout |

Files are read with `torch.load(weights_only=True)` or safetensors only: no pickled code is ever run.
A `module.` prefix (DataParallel) is stripped whenever every key carries it.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

from ..errors import DpmsError, strip_ansi

FORMATS = ("flat", "openai", "ddim-list", "score_sde", "diffusers")
HASHES = ("md5", "sha256")
_SCORE_SDE_KEYS = {"model", "ema"}  # score_sde's checkpoint also has 'optimizer' and 'step'
_FORMATS_HELP = (
    "dpms reads flat state_dicts, DDIM [model, optimizer, epoch, step, ema] lists, "
    "score_sde {'model', 'ema', ...} dicts and diffusers folders"
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
        reason = _reason(e)
        if not reason.startswith("Unsupported global"):  # not a pickle torch can parse: damaged bytes
            raise UnreadableCheckpoint(path, f"torch.load: {reason}") from None
        raise DpmsError(
            f"cannot read {path} as a tensor-only checkpoint (torch.load weights_only=True: {reason}); "
            "dpms never unpickles code, re-save the weights as a plain state_dict"
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


def detect_format(obj) -> str:
    """Name of the format of an object read from a checkpoint file (not a folder)."""
    if isinstance(obj, (list, tuple)):
        return "ddim-list"
    if isinstance(obj, Mapping) and _SCORE_SDE_KEYS <= set(obj):
        return "score_sde"
    if _is_tensor_dict(obj):
        return "flat"
    raise DpmsError(f"unknown checkpoint format: {_describe(obj)}; {_FORMATS_HELP}")


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


def read_weights(path: Path, net_for_score_sde: nn.Module | None = None) -> tuple[str, dict[str, Tensor]]:
    """(format, state_dict) of a checkpoint file in any of the file formats (not diffusers folders).

    score_sde's EMA list is matched to names by position, so that format needs the (meta) network.
    """
    obj = torch_load(path)
    fmt = detect_format(obj)
    if fmt == "ddim-list":
        return fmt, _ddim_ema_state(obj, path)
    if fmt == "score_sde":
        if net_for_score_sde is None:
            raise DpmsError(f"{path} is a score_sde checkpoint; its EMA weights can only be read onto a network")
        return fmt, _score_sde_ema_state(obj, net_for_score_sde, path)
    return fmt, strip_module_prefix(obj)


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
