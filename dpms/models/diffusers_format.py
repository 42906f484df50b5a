"""Load a diffusers-format `UNet2DModel` folder (google/ddpm-cifar10-32, ddpm-celebahq-256,
ddpm-ema-church-256, ...) onto the "ddpm" architecture (`dpms.models.ddpm.Model`).

These folders hold the original DDPM networks re-saved under diffusers' names, so only names (and the
attention weights' shape) change:

| diffusers | ddpm |
|---|---|
| time_embedding.linear_{1,2} | temb.dense.{0,1} |
| down_blocks.i.resnets.j / .attentions.j / .downsamplers.0 | down.i.block.j / .attn.j / .downsample |
| mid_block.resnets.{0,1}, mid_block.attentions.0 | mid.block_{1,2}, mid.attn_1 |
| up_blocks.i.… | up.(L−1−i).… (diffusers stores up blocks in order of use, ddpm by resolution) |
| resnet time_emb_proj / conv_shortcut | temb_proj / nin_shortcut |
| attention group_norm, to_q/to_k/to_v/to_out.0 (newer) or query/key/value/proj_attn (older) | norm, q, k, v, proj_out |
| conv_norm_out | norm_out |

Attention projections are `nn.Linear` in diffusers ([C, C]) and 1×1 convs in ddpm ([C, C, 1, 1]).
The diffusers config must describe the DDPM network exactly (sin-then-cos embedding with
`freq_shift=1`, `downsample_padding=0`, single-head attention, GroupNorm eps 1e-6, ...); anything else
is rejected rather than silently converted into a different function.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Mapping

from torch import Tensor

from ..errors import DpmsError, MissingFileError
from .checkpoint_formats import CheckpointFormat, Source, UnreadableCheckpoint, check_file_config, torch_load

# (config key, diffusers default when absent, value the DDPM network needs)
_REQUIRED_SETTINGS = (
    ("time_embedding_type", "positional", "positional"),
    ("flip_sin_to_cos", True, False),
    ("freq_shift", 0, 1),
    ("center_input_sample", False, False),
    ("act_fn", "silu", "silu"),
    ("downsample_padding", 1, 0),
    ("downsample_type", "conv", "conv"),
    ("upsample_type", "conv", "conv"),
    ("mid_block_type", "UNetMidBlock2D", "UNetMidBlock2D"),
    ("mid_block_scale_factor", 1, 1),
    ("norm_num_groups", 32, 32),
    ("attn_norm_num_groups", None, None),
    ("resnet_time_scale_shift", "default", "default"),
    ("add_attention", True, True),
    ("class_embed_type", None, None),
    ("num_class_embeds", None, None),
)
_DOWN_TYPES = {"DownBlock2D": False, "AttnDownBlock2D": True}
_UP_TYPES = {"UpBlock2D": False, "AttnUpBlock2D": True}

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")  # in order of preference


def _incompatible(what: str) -> DpmsError:
    return DpmsError(
        f"diffusers UNet2DModel config is not a DDPM network ({what}); "
        "only DDPM-layout UNet2DModel folders can be loaded"
    )


def ddpm_config_from_diffusers(config: Mapping) -> dict:
    """The "ddpm" architecture config equivalent to a diffusers `UNet2DModel` config.json.

    Raises `DpmsError` when the diffusers network is not the DDPM network (see the module docstring).
    """
    class_name = config.get("_class_name", "UNet2DModel")
    if class_name != "UNet2DModel":
        raise DpmsError(f"diffusers config describes a {class_name}, not a UNet2DModel; point dpms at the UNet folder")
    for key, default, needed in _REQUIRED_SETTINGS:
        value = config.get(key, default)
        if value != needed:
            raise _incompatible(f"{key}={value!r}, needs {needed!r}")
    norm_eps = config.get("norm_eps", 1e-5)
    if not math.isclose(norm_eps, 1e-6):
        raise _incompatible(f"norm_eps={norm_eps!r}, needs 1e-06")

    widths = [int(w) for w in config["block_out_channels"]]
    ch = widths[0]
    if any(w % ch for w in widths):
        raise _incompatible(f"block_out_channels={widths} are not multiples of the first")
    if config.get("time_embedding_dim") not in (None, 4 * ch):
        raise _incompatible(f"time_embedding_dim={config['time_embedding_dim']!r}, needs {4 * ch}")

    down_types, up_types = list(config["down_block_types"]), list(config["up_block_types"])
    if any(t not in _DOWN_TYPES for t in down_types) or any(t not in _UP_TYPES for t in up_types):
        raise _incompatible(f"block types {down_types} / {up_types}")
    down_attn = [_DOWN_TYPES[t] for t in down_types]
    if [_UP_TYPES[t] for t in reversed(up_types)] != down_attn:
        raise _incompatible("up blocks do not mirror the down blocks' attention")

    head_dim = config.get("attention_head_dim", 8)
    attention_widths = [w for w, has_attn in zip(widths, down_attn) if has_attn] + [widths[-1]]
    if head_dim is not None and any(w != head_dim for w in attention_widths):
        raise _incompatible(f"attention_head_dim={head_dim} gives multi-head attention, DDPM uses one head")

    resolution = config.get("sample_size", config.get("image_size"))
    if isinstance(resolution, (list, tuple)):
        if len(set(resolution)) != 1:
            raise _incompatible(f"non-square sample_size={resolution}")
        resolution = resolution[0]
    if resolution is None:
        raise _incompatible("no sample_size")
    resolution = int(resolution)
    return {
        "ch": ch,
        "out_ch": int(config.get("out_channels", 3)),
        "ch_mult": tuple(w // ch for w in widths),
        "num_res_blocks": int(config.get("layers_per_block", 2)),
        # Level i works at resolution / 2**i; DDPM places attention by feature-map size.
        "attn_resolutions": tuple(resolution // 2**i for i, has_attn in enumerate(down_attn) if has_attn),
        "dropout": float(config.get("dropout", 0.0)),
        "in_channels": int(config.get("in_channels", 3)),
        "resolution": resolution,
        "resamp_with_conv": True,
    }


_ATTENTION_NAMES = {
    "group_norm": "norm",
    "to_q": "q",
    "query": "q",
    "to_k": "k",
    "key": "k",
    "to_v": "v",
    "value": "v",
    "to_out.0": "proj_out",
    "proj_attn": "proj_out",
}
_RESNET_NAMES = {
    "norm1": "norm1",
    "conv1": "conv1",
    "time_emb_proj": "temb_proj",
    "norm2": "norm2",
    "conv2": "conv2",
    "conv_shortcut": "nin_shortcut",
}
_TOP_LEVEL = {
    "conv_in": "conv_in",
    "time_embedding.linear_1": "temb.dense.0",
    "time_embedding.linear_2": "temb.dense.1",
    "conv_norm_out": "norm_out",
    "conv_out": "conv_out",
}
_BLOCK_KEY = re.compile(
    r"(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)\.(weight|bias)"
)
_MID_KEY = re.compile(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)\.(weight|bias)")
_TOP_KEY = re.compile(r"(.+)\.(weight|bias)")


def _layer_name(kind: str, layer: str, key: str) -> str:
    """ddpm name of one layer inside a diffusers resnet/attention/resampler."""
    table = {"resnets": _RESNET_NAMES, "attentions": _ATTENTION_NAMES}.get(kind, {"conv": "conv"})
    if layer not in table:
        raise DpmsError(f"unexpected diffusers UNet2DModel key {key!r}; the weights do not match a DDPM network")
    return table[layer]


def _ddpm_key(key: str, num_levels: int) -> str:
    """The ddpm state_dict key for one diffusers key."""
    match = _BLOCK_KEY.fullmatch(key)
    if match:
        side, level, kind, index, layer, param = match.groups()
        level = int(level) if side == "down_blocks" else num_levels - 1 - int(level)
        name = _layer_name(kind, layer, key)
        prefix = {"down_blocks": "down", "up_blocks": "up"}[side]
        container = {
            "resnets": f"block.{index}",
            "attentions": f"attn.{index}",
            "downsamplers": "downsample",
            "upsamplers": "upsample",
        }[kind]
        return f"{prefix}.{level}.{container}.{name}.{param}"
    match = _MID_KEY.fullmatch(key)
    if match:
        kind, index, layer, param = match.groups()
        module = f"block_{int(index) + 1}" if kind == "resnets" else f"attn_{int(index) + 1}"
        return f"mid.{module}.{_layer_name(kind, layer, key)}.{param}"
    match = _TOP_KEY.fullmatch(key)
    if match and match.group(1) in _TOP_LEVEL:
        return f"{_TOP_LEVEL[match.group(1)]}.{match.group(2)}"
    raise DpmsError(f"unexpected diffusers UNet2DModel key {key!r}; the weights do not match a DDPM network")


def ddpm_state_dict_from_diffusers(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a diffusers `UNet2DModel` state_dict to the ddpm architecture's keys.

    Handles both attention namings; linear attention weights [C, C] become 1×1 conv weights
    [C, C, 1, 1]; the up-block index is reversed. Keys come out in diffusers' order (load with
    `load_state_dict`, which matches by name).
    """
    down_levels = {int(k.split(".")[1]) for k in state_dict if k.startswith("down_blocks.")}
    if not down_levels:
        raise DpmsError("diffusers state_dict has no down_blocks.* keys; it is not a UNet2DModel checkpoint")
    num_levels = 1 + max(down_levels)
    converted = {}
    for key, value in state_dict.items():
        new_key = _ddpm_key(key, num_levels)
        is_attention_weight = re.search(r"\.attn(_1|\.\d+)\.(q|k|v|proj_out)\.weight$", new_key)
        if is_attention_weight and value.dim() == 2:
            value = value[:, :, None, None]
        converted[new_key] = value
    return converted


def is_complete_folder(folder: str | Path) -> bool:
    """True when `folder` (or its pipeline `unet/` subfolder) holds config.json and a weight file.

    This, not the folder's existence, is what makes a diffusers preset present: an interrupted or
    hand-started copy leaves a folder that `load` could not read."""
    folder = Path(folder)
    return any(
        (unet / "config.json").is_file() and any((unet / name).is_file() for name in WEIGHT_FILES)
        for unet in (folder, folder / "unet")
    )


def _unet_folder(folder: Path) -> Path:
    """The folder holding the UNet's config.json: `folder` itself or a pipeline's `unet/` subfolder."""
    for candidate in (folder, folder / "unet"):
        if (candidate / "config.json").is_file():
            return candidate
    raise MissingFileError(
        f"no diffusers config.json in {folder} or {folder / 'unet'}; point dpms at a diffusers UNet2DModel folder"
    )


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Tensors of a .safetensors or .bin weight file, read without executing pickled code; a damaged
    file is an `UnreadableCheckpoint` naming it."""
    state = torch_load(path)
    if not (isinstance(state, Mapping) and all(isinstance(v, Tensor) for v in state.values())):
        raise UnreadableCheckpoint(path, f"it holds a {type(state).__name__}, not a dict of tensors")
    return dict(state)


def _read_config(path: Path) -> dict:
    """config.json; an interrupted download or an HTML error page is an `UnreadableCheckpoint`."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UnreadableCheckpoint(path, f"not JSON: {e}") from None
    if not isinstance(config, dict):
        raise UnreadableCheckpoint(path, f"JSON {type(config).__name__}, not an object")
    return config


def load_diffusers_unet(folder: str | Path) -> tuple[dict, dict[str, Tensor]]:
    """(ddpm config, ddpm state_dict) read from a diffusers `UNet2DModel` folder (or a pipeline folder
    with a `unet/` subfolder). Prefers `diffusion_pytorch_model.safetensors` over `.bin`."""
    unet = _unet_folder(Path(folder))
    config = ddpm_config_from_diffusers(_read_config(unet / "config.json"))
    for name in WEIGHT_FILES:
        if (unet / name).is_file():
            return config, ddpm_state_dict_from_diffusers(read_state_dict(unet / name))
    raise MissingFileError(f"no {' or '.join(WEIGHT_FILES)} in {unet}; download the diffusers weights next to config.json")


class DiffusersFormat(CheckpointFormat):
    """A diffusers `UNet2DModel` folder (or a pipeline folder with `unet/`), read onto the ddpm layout."""

    name = "diffusers"
    is_folder = True

    def exists(self, path: Path) -> bool:
        return is_complete_folder(path)

    def detect(self, source: Source) -> bool:
        return source.path.is_dir()

    def read(self, source: Source, preset, config: dict, build_meta):
        if preset.arch != "ddpm":
            raise DpmsError(f"{source.path} is a folder (diffusers format) but preset {preset.name} is a {preset.arch} network")
        folder_config, state_dict = load_diffusers_unet(source.path)
        check_file_config(f"diffusers folder {source.path}", preset.name, config, folder_config, "folder")
        return build_meta(preset.arch, folder_config), folder_config, state_dict

    def fetch(self, preset, destination: Path, progress, timeout: float) -> None:
        from .download import fetch_diffusers_folder

        fetch_diffusers_folder(preset, destination, progress, timeout)
