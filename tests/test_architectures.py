"""Weight compatibility of the ddpm / ADM networks and the diffusers conversion.

Key lists come from the reference dumps of the published checkpoints (`key<TAB>(shape)<TAB>dtype`, in
upstream registration order): every network must reproduce them exactly, in order, with the published
parameter counts. Numerical behaviour is checked against diffusers' `UNet2DModel` (the same DDPM network
under other names) and against torch's own attention.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from dpms.errors import DpmsError, MissingFileError
from dpms.models.adm import qkv_attention, timestep_embedding as adm_timestep_embedding
from dpms.models.architectures import ARCHITECTURES, build
from dpms.models.diffusers_format import (
    ddpm_config_from_diffusers,
    ddpm_state_dict_from_diffusers,
    load_diffusers_unet,
)

from conftest import KEYS as REFERENCE, needs_reference, reference_keys, reference_summary  # <repo>/../shared/reference, or $DPMS_REFERENCE

# checkpoints.md §1 (the DDIM configs' `model` sections).
DDPM_CONFIGS = {
    "ddim_cifar10": dict(ch=128, out_ch=3, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
                         dropout=0.1, in_channels=3, resolution=32, resamp_with_conv=True),
    "ddim_celeba": dict(ch=128, out_ch=3, ch_mult=(1, 2, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,),
                        dropout=0.1, in_channels=3, resolution=64, resamp_with_conv=True),
    "ddim_bedroom": dict(ch=128, out_ch=3, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2, attn_resolutions=(16,),
                         dropout=0.0, in_channels=3, resolution=256, resamp_with_conv=True),
}
DIGITS_CONFIG = dict(ch=32, out_ch=1, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(4,), dropout=0.0,
                     in_channels=1, resolution=8, resamp_with_conv=True)

OLD_ATTENTION_NAMES = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def _arch_and_config(name: str) -> tuple[str, dict]:
    if name in DDPM_CONFIGS:
        return "ddpm", DDPM_CONFIGS[name]
    entry = reference_summary()[name]
    if "encoder_kwargs" in entry:
        return "adm-classifier", entry["encoder_kwargs"]
    return "adm", entry["unet_kwargs"]


def _key_files() -> list[str]:
    if not REFERENCE.is_dir():
        return []
    patterns = ("ddim_*.txt", "gd_*_diffusion*.txt", "gd_lsun_bedroom.txt", "gd_*_classifier.txt", "id_*.txt")
    return sorted({p.stem for pattern in patterns for p in REFERENCE.glob(pattern)})


@needs_reference
def test_every_reference_family_is_covered():
    # 3 DDIM + 6 guided diffusion + 4 guided classifiers + 2 improved: guards against a silently empty glob.
    assert len(_key_files()) == 15


@needs_reference
@pytest.mark.parametrize("name", _key_files())
def test_state_dict_equals_upstream_keys_shapes_and_param_count(name):
    arch, config = _arch_and_config(name)
    with torch.device("meta"):
        net = build(arch, config)
    got = [(key, tuple(t.shape)) for key, t in net.state_dict().items()]
    assert got == reference_keys(name)
    assert sum(p.numel() for p in net.parameters()) == reference_summary()[name]["params"]


# --- diffusers conversion ------------------------------------------------------------------------------


def _old_attention_naming(key: str) -> str:
    for new, old in OLD_ATTENTION_NAMES.items():
        key = key.replace(f".{new}.", f".{old}.")
    return key


@needs_reference
@pytest.mark.parametrize("naming", ["to_q", "query"])
@pytest.mark.parametrize(
    "diffusers_name, ddpm_name", [("diffusers_cifar10", "ddim_cifar10"), ("diffusers_church", "ddim_bedroom")]
)
def test_diffusers_keys_map_exactly_onto_ddpm_keys(diffusers_name, ddpm_name, naming):
    rename = _old_attention_naming if naming == "query" else (lambda key: key)
    diffusers_sd = {rename(key): torch.empty(shape, device="meta") for key, shape in reference_keys(diffusers_name)}
    if naming == "query":
        assert any(".proj_attn." in key for key in diffusers_sd)
    converted = ddpm_state_dict_from_diffusers(diffusers_sd)
    assert len(converted) == len(diffusers_sd)
    assert sorted((k, tuple(v.shape)) for k, v in converted.items()) == sorted(reference_keys(ddpm_name))


TINY_DIFFUSERS_CONFIG = dict(
    sample_size=16, in_channels=3, out_channels=3, block_out_channels=(32, 64, 64), layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    flip_sin_to_cos=False, freq_shift=1, downsample_padding=0, norm_eps=1e-6, attention_head_dim=None,
)


@pytest.fixture(scope="module")
def tiny_diffusers_unet():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(**TINY_DIFFUSERS_CONFIG).eval()
    with torch.no_grad():  # diffusers zero-initialises nothing here, but make every weight non-trivial anyway
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return unet


def test_converted_diffusers_config():
    assert ddpm_config_from_diffusers(TINY_DIFFUSERS_CONFIG) == dict(
        ch=32, out_ch=3, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(8,), dropout=0.0,
        in_channels=3, resolution=16, resamp_with_conv=True,
    )


def _converted_ddpm(unet, state_dict):
    net = build("ddpm", ddpm_config_from_diffusers(unet.config)).eval()
    net.load_state_dict(ddpm_state_dict_from_diffusers(state_dict), strict=True)
    return net


@pytest.mark.parametrize("naming", ["to_q", "query"])
def test_ddpm_matches_diffusers_unet_outputs(tiny_diffusers_unet, naming):
    rename = _old_attention_naming if naming == "query" else (lambda key: key)
    state_dict = {rename(k): v for k, v in tiny_diffusers_unet.state_dict().items()}
    net = _converted_ddpm(tiny_diffusers_unet, state_dict)
    torch.manual_seed(1)
    x = torch.randn(3, 3, 16, 16)
    t = torch.tensor([0.0, 417.5, 999.0])
    with torch.no_grad():
        expected = tiny_diffusers_unet(x, t).sample
        got = net(x, t)
    assert expected.abs().mean() > 0.1
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("weight_file", ["safetensors", "bin"])
def test_load_diffusers_folder(tiny_diffusers_unet, tmp_path, weight_file):
    folder = tmp_path / "pipeline"
    tiny_diffusers_unet.save_pretrained(folder / "unet", safe_serialization=weight_file == "safetensors")
    config, state_dict = load_diffusers_unet(folder)
    net = build("ddpm", config).eval()
    net.load_state_dict(state_dict, strict=True)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([5.0, 700.0])
    with torch.no_grad():
        torch.testing.assert_close(net(x, t), tiny_diffusers_unet(x, t).sample, atol=1e-5, rtol=1e-5)


def test_load_diffusers_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY_DIFFUSERS_CONFIG))
    with pytest.raises(MissingFileError, match="no diffusion_pytorch_model.safetensors or diffusion_pytorch_model.bin in"):
        load_diffusers_unet(tmp_path)


def test_diffusers_config_that_is_not_ddpm_is_rejected():
    with pytest.raises(DpmsError) as err:
        ddpm_config_from_diffusers({**TINY_DIFFUSERS_CONFIG, "freq_shift": 0})
    assert str(err.value) == (
        "diffusers UNet2DModel config is not a DDPM network (freq_shift=0, needs 1); "
        "only DDPM-layout UNet2DModel folders can be loaded"
    )
    with pytest.raises(DpmsError, match="attention_head_dim=8 gives multi-head attention"):
        ddpm_config_from_diffusers({**TINY_DIFFUSERS_CONFIG, "attention_head_dim": 8})
    with pytest.raises(DpmsError) as err:
        ddpm_state_dict_from_diffusers({"down_blocks.0.resnets.0.norm3.weight": torch.zeros(4)})
    assert str(err.value) == (
        "unexpected diffusers UNet2DModel key 'down_blocks.0.resnets.0.norm3.weight'; "
        "the weights do not match a DDPM network"
    )


# --- ddpm ---------------------------------------------------------------------------------------------


def test_digits_ddpm_forward_and_scalar_time():
    torch.manual_seed(0)
    net = build("ddpm", DIGITS_CONFIG).eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        batched = net(x, torch.tensor([250.0, 250.0]))
        scalar = net(x, torch.tensor(250.0))
        other_time = net(x, torch.tensor([10.0, 10.0]))
    assert batched.shape == (2, 1, 8, 8)
    torch.testing.assert_close(scalar, batched)
    assert not torch.allclose(other_time, batched)


# --- ADM ----------------------------------------------------------------------------------------------

TINY_ADM = dict(
    image_size=8, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1, attention_resolutions=(2,),
    dropout=0.0, channel_mult=(1, 2), num_classes=10, num_head_channels=16, use_scale_shift_norm=True,
    resblock_updown=True, use_fp16=True,
)


def test_adm_embedding_is_cos_then_sin_like_diffusers_flip():
    from diffusers.models.embeddings import get_timestep_embedding

    t = torch.tensor([0.0, 3.5, 999.0])
    expected = get_timestep_embedding(t, 64, flip_sin_to_cos=True, downscale_freq_shift=0)
    torch.testing.assert_close(adm_timestep_embedding(t, 64), expected)


@pytest.mark.parametrize("new_order", [False, True])
def test_adm_unet_learned_sigma_and_class_conditioning(new_order):
    torch.manual_seed(0)
    net = build("adm", {**TINY_ADM, "use_new_attention_order": new_order}).eval()
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10.0, 600.0])
    with torch.no_grad():
        out_a = net(x, t, y=torch.tensor([1, 2]))
        out_b = net(x, t, y=torch.tensor([7, 2]))
    assert out_a.shape == (2, 6, 8, 8)
    assert not torch.allclose(out_a[0], out_b[0])  # sample 0's label changed
    torch.testing.assert_close(out_a[1], out_b[1])  # sample 1's did not
    with pytest.raises(DpmsError, match="class-conditional; pass class labels y"):
        net(x, t)


def test_attention_orders_differ_only_by_qkv_channel_layout():
    """Legacy order lays qkv channels out as [head][q,k,v][d], the new one as [q,k,v][head][d]; permuting
    the qkv projection's rows turns one network into the other."""
    torch.manual_seed(0)
    config = {**TINY_ADM, "resblock_updown": False, "num_classes": None}
    legacy = build("adm", {**config, "use_new_attention_order": False}).eval()
    new = build("adm", {**config, "use_new_attention_order": True}).eval()
    state = legacy.state_dict()
    for key, value in list(state.items()):
        if key.endswith(("qkv.weight", "qkv.bias")):
            width = value.shape[0] // 3
            heads = width // TINY_ADM["num_head_channels"]
            per_head = value.reshape(heads, 3, width // heads, *value.shape[1:])
            state[key] = per_head.transpose(0, 1).reshape(value.shape)
    new.load_state_dict(state)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3.0, 300.0])
    with torch.no_grad():
        reference = legacy(x, t)
        torch.testing.assert_close(new(x, t), reference, atol=1e-5, rtol=1e-5)
        new.load_state_dict(legacy.state_dict())  # same weights, other order: a different function
        assert not torch.allclose(new(x, t), reference, atol=1e-4)


def test_new_order_attention_equals_torch_sdpa():
    torch.manual_seed(0)
    b, heads, d, length = 2, 4, 8, 10
    qkv = torch.randn(b, 3 * heads * d, length)
    q, k, v = (part.reshape(b, heads, d, length).transpose(2, 3) for part in qkv.chunk(3, dim=1))
    expected = F.scaled_dot_product_attention(q, k, v).transpose(2, 3).reshape(b, heads * d, length)
    torch.testing.assert_close(qkv_attention(qkv, heads, legacy_order=False), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pool", ["attention", "adaptive"])
def test_adm_classifier_returns_logits(pool):
    torch.manual_seed(0)
    config = {k: v for k, v in TINY_ADM.items() if k != "num_classes"}
    net = build("adm-classifier", {**config, "out_channels": 10, "pool": pool}).eval()
    with torch.no_grad():
        logits = net(torch.randn(3, 3, 8, 8), torch.tensor([1.0, 50.0, 900.0]))
    assert logits.shape == (3, 10)
    assert torch.isfinite(logits).all()


# --- errors -------------------------------------------------------------------------------------------


def test_architecture_names():
    assert ARCHITECTURES == ("ddpm", "adm", "adm-classifier", "ncsnpp", "edm")


def test_unknown_architecture():
    with pytest.raises(DpmsError) as err:
        build("dit", {})
    assert str(err.value) == "unknown architecture 'dit'; use one of ddpm, adm, adm-classifier, ncsnpp, edm"


def test_unknown_config_key():
    with pytest.raises(DpmsError) as err:
        build("ddpm", {**DIGITS_CONFIG, "channels": 3})
    assert str(err.value) == (
        "unknown ddpm config key(s) channels; valid keys: ch, out_ch, ch_mult, num_res_blocks, attn_resolutions, "
        "resolution, dropout, in_channels, resamp_with_conv, augment_dim"
    )
    with pytest.raises(DpmsError, match=r"unknown adm-classifier config key\(s\) num_classes; valid keys: in_channels,"):
        build("adm-classifier", {**TINY_ADM, "pool": "attention"})


def test_missing_config_key():
    config = {k: v for k, v in DIGITS_CONFIG.items() if k != "ch"}
    with pytest.raises(DpmsError) as err:
        build("ddpm", config)
    assert str(err.value) == "ddpm config is missing required key(s) ch; add them to the config"


def test_ddpm_width_not_divisible_by_group_count():
    with pytest.raises(DpmsError, match="gives widths not divisible by 32"):
        build("ddpm", {**DIGITS_CONFIG, "ch": 48})
