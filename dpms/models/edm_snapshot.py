"""Read NVlabs/edm network snapshots (`edm-*.pkl`) without running anything from the file.

An EDM snapshot is a plain pickle of `dict(ema=net, loss_fn=..., augment_pipe=..., dataset_kwargs=...)`. Each
network object is stored as a call `torch_utils.persistence._reconstruct_persistent_obj(meta)` whose `meta`
carries the full source of EDM's `training/networks.py` (`module_src`), the class name and the object's
state; EDM's own loader exec()s that source, so loading a snapshot the usual way runs whatever the file says.
Tensors are `torch.storage._load_from_bytes` blobs (legacy `torch.save` files), rebuilt by
`torch._utils._rebuild_tensor_v2` / `_rebuild_parameter`.

dpms reads it with a restricted unpickler whose `find_class` knows only these globals:

| global | becomes |
|---|---|
| `torch_utils.persistence._reconstruct_persistent_obj` | an inert `PersistentRecord` (class name, state, sha256 of the embedded source); the source must be one of EDM's published versions (`GENUINE_SOURCES`) and is never executed |
| `torch.storage._load_from_bytes` | the blob read with `torch.load(weights_only=True)` |
| `torch._utils._rebuild_tensor_v2`, `_rebuild_parameter` | tensors / parameters, their arguments checked |
| `collections.OrderedDict` | itself |
| `torch.nn.modules.container.ModuleDict` | an inert `ModuleDictRecord` (attributes only) |
| `numpy.dtype`, `numpy.core.multiarray.scalar` / `numpy._core.multiarray.scalar` | numeric numpy dtypes and scalars only |

Everything else — another global, a persistent id, an embedded source that is not EDM's, a record that is
not a network — is refused with one line (`DpmsError`). The network is then built from the `ema` record's
init kwargs with dpms's own classes (`dpms.models.edm`) and its weights loaded with strict key and shape checks.
"""

from __future__ import annotations

import collections
import hashlib
import io
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import DpmsError
from .checkpoint_formats import CheckpointFormat, Source, UnreadableCheckpoint, check_file_config, load_strict

# sha256 of every version of the EDM source files a snapshot embeds (git history of NVlabs/edm; computed with
# `git log --format=%h -- FILE` and `git show COMMIT:FILE | sha256sum`). networks.py changed once after the
# release (b2a26c9 "Fix to #2": the fused up-sampling path, which no released network uses).
GENUINE_SOURCES: dict[str, str] = {
    "2294828d5f59f5fd008f7141e6b8af2095918f2ce019f280a933e4779b5c3cef": "training/networks.py @ 0a2ff34 (release)",
    "5db27dcd96674b95c72d5e6491b879cdc35e24039ada3411b4b46a28ed1fe284": "training/networks.py @ b2a26c9",
    "b26f0937bc72b18cc5f9869c86035ca9b872138cdfae7994237e9733951e4415": "training/loss.py @ 0a2ff34",
    "fd411af7c2d74489ce11a245293047369fc044d00a9aeed1c0bd46b322c8a8b5": "training/augment.py @ 0a2ff34",
}
PERSISTENCE_VERSION = 6  # torch_utils/persistence.py `_version`
NETWORK_CLASSES = ("EDMPrecond", "VPPrecond", "VEPrecond")
_SIGNATURE = b"torch_utils.persistence"
_NUMERIC_DTYPE = re.compile(r"^[<>=|]?[biufc]\d{1,2}$")


@dataclass
class PersistentRecord:
    """What `_reconstruct_persistent_obj(meta)` would have rebuilt, as data: nothing is executed."""

    class_name: str
    state: dict
    source_sha256: str
    source: str  # which published file and version the embedded source is


class ModuleDictRecord:
    """Stands in for `torch.nn.ModuleDict` while unpickling: pickle's BUILD fills its `__dict__`, nothing runs."""


@dataclass
class EdmSnapshot:
    """The `ema` network of a snapshot: EDM's network kwargs (with `class_name`) and its state_dict."""

    network_kwargs: dict
    state_dict: dict[str, Tensor]
    sources: list[str] = field(default_factory=list)


class _Refused(Exception):
    """Raised inside the unpickler; turned into one `DpmsError` line naming the file."""


# ------------------------------------------------------------------------------------------ allowlisted callables
def _load_from_bytes(blob) -> object:
    if not isinstance(blob, (bytes, bytearray)):
        raise _Refused(f"a tensor blob is a {type(blob).__name__}, not bytes")
    try:
        storage = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  a damaged or hostile blob fails in many ways
        raise _Refused(f"a tensor blob is not a tensor-only torch file ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise _Refused(f"a tensor blob holds a {type(storage).__name__}, not a storage")
    return storage


def _ints(values, what: str) -> tuple[int, ...]:
    if not (isinstance(values, (tuple, list, torch.Size)) and all(isinstance(v, int) and v >= 0 for v in values)):
        raise _Refused(f"tensor {what} {values!r} is not a tuple of non-negative integers")
    return tuple(values)


def _no_hooks(hooks) -> None:
    if hooks is not None and not (isinstance(hooks, Mapping) and len(hooks) == 0):
        raise _Refused("a tensor carries backward hooks")


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise _Refused(f"a tensor is rebuilt from a {type(storage).__name__}, not a storage")
    if not isinstance(storage_offset, int) or storage_offset < 0:
        raise _Refused(f"tensor offset {storage_offset!r} is not a non-negative integer")
    _no_hooks(backward_hooks)
    if metadata:
        raise _Refused("a tensor carries metadata (EDM's tensors have none)")
    try:
        return torch._utils._rebuild_tensor_v2(storage, storage_offset, _ints(size, "size"), _ints(stride, "stride"),
                                               bool(requires_grad), collections.OrderedDict())
    except RuntimeError as e:  # a view outside its storage
        raise _Refused(f"a tensor does not fit its storage ({str(e).splitlines()[0][:120]})") from None


def _rebuild_parameter(data, requires_grad=True, backward_hooks=None):
    if not isinstance(data, Tensor):
        raise _Refused(f"a parameter wraps a {type(data).__name__}, not a tensor")
    _no_hooks(backward_hooks)
    return nn.Parameter(data, requires_grad=bool(requires_grad))


def _numpy_dtype(spec, align=False, copy=True):
    if not (isinstance(spec, str) and _NUMERIC_DTYPE.match(spec)):
        raise _Refused(f"numpy dtype {spec!r} is not a numeric dtype")
    return np.dtype(spec)


def _numpy_scalar(dtype, data=None):
    if not (isinstance(dtype, np.dtype) and dtype.kind in "biufc" and isinstance(data, bytes) and len(data) == dtype.itemsize):
        raise _Refused("a numpy scalar is not a numeric value of its dtype's size")
    return np.frombuffer(data, dtype=dtype)[0]


def _persistent_object(meta, trusted: Mapping[str, str]) -> PersistentRecord:
    """The persistence hook, made inert: check the record and the embedded source's hash, execute nothing."""
    if not (isinstance(meta, Mapping) and {"type", "version", "module_src", "class_name", "state"} <= set(meta)):
        raise _Refused("a persistent-object record lacks type/version/module_src/class_name/state")
    if meta["type"] != "class" or meta["version"] != PERSISTENCE_VERSION:
        raise _Refused(f"a persistent-object record has type {meta['type']!r} version {meta['version']!r}, "
                       f"not EDM's 'class' version {PERSISTENCE_VERSION}")
    source = meta["module_src"]
    if not isinstance(source, str):
        raise _Refused("a persistent-object record's module_src is not text")
    digest = hashlib.sha256(source.encode("utf-8")).hexdigest()
    if digest not in trusted:
        raise _Refused(f"the embedded source of class {meta['class_name']!r} (sha256 {digest[:16]}...) is not one of "
                       "EDM's published training/*.py versions")
    if not isinstance(meta["class_name"], str) or not isinstance(meta["state"], Mapping):
        raise _Refused("a persistent-object record's class_name or state has the wrong type")
    return PersistentRecord(meta["class_name"], dict(meta["state"]), digest, trusted[digest])


_PERSISTENCE_HOOK = ("torch_utils.persistence", "_reconstruct_persistent_obj")
_ALLOWED = {
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch.nn.modules.container", "ModuleDict"): ModuleDictRecord,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,  # numpy 1.x
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,  # numpy 2.x
}

class _SnapshotUnpickler(pickle.Unpickler):
    def __init__(self, file, trusted: Mapping[str, str]):
        super().__init__(file)
        self.trusted = trusted

    def find_class(self, module: str, name: str):
        if (module, name) == _PERSISTENCE_HOOK:
            return lambda meta: _persistent_object(meta, self.trusted)
        allowed = _ALLOWED.get((module, name))
        if allowed is None:
            raise _Refused(f"it references {module}.{name}, which an EDM snapshot does not")
        return allowed

    def persistent_load(self, pid):
        raise _Refused("it uses pickle persistent ids, which an EDM snapshot does not")


# ------------------------------------------------------------------------------------------ reading
def _unpickle(path: Path, trusted: Mapping[str, str]):
    try:
        with open(path, "rb") as f:
            return _SnapshotUnpickler(f, trusted).load()
    except _Refused as e:
        raise DpmsError(f"refused to read {path} as an EDM snapshot: {e}; dpms runs no code from checkpoint files") from None
    except (PermissionError, IsADirectoryError) as e:
        raise DpmsError(f"cannot open {path} ({e.strerror}); check the path and its permissions") from None
    except TypeError as e:  # an allowlisted callable given the wrong arguments
        raise DpmsError(f"refused to read {path} as an EDM snapshot: malformed record ({e}); "
                        "dpms runs no code from checkpoint files") from None
    except (pickle.UnpicklingError, EOFError, ValueError, IndexError, KeyError, AttributeError, UnicodeDecodeError,
            MemoryError) as e:
        raise UnreadableCheckpoint(path, f"pickle: {type(e).__name__}: {str(e)[:120]}") from None


def _module_state(record, prefix: str, out: dict[str, Tensor]) -> None:
    """Flatten a record tree into a state_dict: parameters and persistent buffers, then submodules."""
    state = record.state if isinstance(record, PersistentRecord) else vars(record)
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    for key, kind in (("_parameters", "parameter"), ("_buffers", "buffer")):
        for name, value in (state.get(key) or {}).items():
            if value is None or (kind == "buffer" and name in non_persistent):
                continue
            if not isinstance(value, Tensor):
                raise DpmsError(f"EDM snapshot {kind} {prefix}{name} is a {type(value).__name__}, not a tensor")
            out[prefix + name] = value.detach()
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, (PersistentRecord, ModuleDictRecord)):
            raise DpmsError(f"EDM snapshot submodule {prefix}{name} is a {type(child).__name__}, not a network record")
        _module_state(child, f"{prefix}{name}.", out)


def _sources(records: Iterable) -> list[str]:
    return sorted({r.source for r in records if isinstance(r, PersistentRecord)})


def read_edm_snapshot(path: str | Path, trusted_sources: Mapping[str, str] | None = None) -> EdmSnapshot:
    """The `ema` network of an EDM snapshot as (network kwargs, state_dict), read by the restricted unpickler.

    `trusted_sources` (sha256 -> description) replaces `GENUINE_SOURCES`, for snapshots of your own EDM fork."""
    path = Path(path)
    data = _unpickle(path, GENUINE_SOURCES if trusted_sources is None else trusted_sources)
    ema = data.get("ema") if isinstance(data, Mapping) else None
    if not isinstance(ema, PersistentRecord):
        raise DpmsError(f"{path} has no 'ema' network record; an EDM snapshot is dict(ema=..., loss_fn=..., ...)")
    if ema.class_name not in NETWORK_CLASSES:
        raise DpmsError(f"{path}: the 'ema' network is a {ema.class_name}; dpms builds {', '.join(NETWORK_CLASSES)}")
    args, kwargs = ema.state.get("_init_args"), ema.state.get("_init_kwargs")
    if args or not isinstance(kwargs, Mapping):
        raise DpmsError(f"{path}: the 'ema' record has no keyword-only init arguments (_init_kwargs); it was not written by EDM")
    from .edm import plain_value

    network_kwargs = {"class_name": f"training.networks.{ema.class_name}", **plain_value(dict(kwargs))}
    state_dict: dict[str, Tensor] = {}
    _module_state(ema, "", state_dict)
    return EdmSnapshot(network_kwargs, state_dict, _sources(data.values()))


def load_edm_snapshot(path: str | Path, device: str | torch.device = "cpu",
                      trusted_sources: Mapping[str, str] | None = None) -> nn.Module:
    """The ready EDM network of a snapshot file (eval mode, no gradients), called as EDM calls it:
    `net(x, sigma, class_labels=None, force_fp32=False, augment_labels=None)` -> D(x; σ).

    Nothing from the file is executed (see the module docstring); a file that is not a genuine EDM snapshot
    is refused with one line."""
    from .architectures import build

    snapshot = read_edm_snapshot(path, trusted_sources)
    with torch.device("meta"):
        net = build("edm", snapshot.network_kwargs)
    load_strict(net, snapshot.state_dict, str(path), f"EDM {snapshot.network_kwargs['class_name'].rsplit('.', 1)[-1]}")
    return net.to(device).eval().requires_grad_(False)


class EdmPickleFormat(CheckpointFormat):
    """NVlabs/edm network snapshots (`network-snapshot-*.pkl`, the published `edm-*.pkl`)."""

    name = "edm-pickle"

    def detect(self, source: Source) -> bool:
        return source.path.is_file() and source.head[:1] == b"\x80" and _SIGNATURE in source.head

    def read(self, source: Source, preset, config: dict, build_meta):
        snapshot = read_edm_snapshot(source.path)
        check_file_config(f"EDM snapshot {source.path}", preset.name, config, snapshot.network_kwargs, "file")
        return build_meta(preset.arch, snapshot.network_kwargs), snapshot.network_kwargs, snapshot.state_dict
