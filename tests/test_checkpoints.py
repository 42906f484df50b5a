"""Checkpoint presets, file formats and loading (CPU, nothing downloaded).

* Every preset's network, built on the meta device, has exactly the key list, shapes and parameter count of
  the published checkpoint (reference dumps in <repo>/../shared/reference/checkpoint-keys).
* Every registry entry matches checkpoints.md (schedule, time map, learned Σ, classes, format, hashes).
* Every file format round-trips: a tiny network written in that format loads into an identical network;
  where the format holds EMA and raw weights side by side, the EMA weights are the ones loaded.
* The LoadedModel feeds each network the time input it was trained with, and guidance is wired through.
* Errors are one line and name the fix: missing file, unknown format, mismatched keys, wrong hash, ...
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import re
from pathlib import Path

import pytest
import torch

import dpms
from dpms.errors import DpmsError, MissingFileError
from dpms.models.architectures import build
from dpms.models.checkpoints import (
    REPO_ROOT,
    LoadedModel,
    get_preset,
    image_shape_of,
    load,
    load_classifier,
    presets,
)
from dpms.models.download import download
from dpms.schedule import NoiseSchedule

from conftest import KEYS, needs_reference, reference_keys, reference_summary  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

# preset -> reference dump of the network it loads into. The LSUN church and cat checkpoints have no dump of
# their own: they are the bedroom network (summary.json gives church the same count). diffusers presets load into the ddpm layout (their own dumps below).
KEY_FILES = {
    "cifar10-ddpm": "ddim_cifar10",
    "celeba64-ddim": "ddim_celeba",
    "lsun-bedroom-ddpm": "ddim_bedroom",
    "lsun-church-ddpm": "ddim_bedroom",
    "lsun-cat-ddpm": "ddim_bedroom",
    "improved-imagenet64": "id_imagenet64_uncond_100M_1500K",
    "improved-cifar10": "id_cifar10_uncond_50M_500K",
    "guided-imagenet64": "gd_64x64_diffusion",
    "guided-imagenet128": "gd_128x128_diffusion",
    "guided-imagenet256": "gd_256x256_diffusion",
    "guided-imagenet256-uncond": "gd_256x256_diffusion_uncond",
    "guided-imagenet512": "gd_512x512_diffusion",
    "guided-lsun-bedroom": "gd_lsun_bedroom",
    "guided-classifier64": "gd_64x64_classifier",
    "guided-classifier128": "gd_128x128_classifier",
    "guided-classifier256": "gd_256x256_classifier",
    "guided-classifier512": "gd_512x512_classifier",
    "scoresde-cifar10-ddpmpp-deep": "ssde_vp_cifar10_ddpmpp_deep_continuous",
    "scoresde-cifar10-ddpmpp": "ssde_vp_cifar10_ddpmpp_continuous",
    "scoresde-cifar10-ddpm": "ssde_vp_cifar10_ddpm_continuous",
    "ddpm-cifar10-32": "ddim_cifar10",
    "ddpm-celebahq-256": "ddim_bedroom",
    "ddpm-ema-church-256": "ddim_bedroom",
}
DIFFUSERS_KEY_FILES = {
    "ddpm-cifar10-32": "diffusers_cifar10",
    "ddpm-celebahq-256": "diffusers_church",
    "ddpm-ema-church-256": "diffusers_church",
}
EDM_PRESETS = {"edm-cifar10-32x32-cond-vp", "edm-cifar10-32x32-cond-ve", "edm-cifar10-32x32-uncond-vp",
               "edm-cifar10-32x32-uncond-ve", "edm-ffhq-64x64-uncond-vp", "edm-ffhq-64x64-uncond-ve",
               "edm-afhqv2-64x64-uncond-vp", "edm-afhqv2-64x64-uncond-ve", "edm-imagenet-64x64-cond-adm"}
# dpms's own network (checked against dpms.digits), the exact model, and EDM's networks (checked in
# tests/test_edm.py against key lists made by EDM's own code, tests/data/edm/full_size_keys.json)
WITHOUT_KEY_FILE = {"digits", "gmm"} | EDM_PRESETS

# checkpoints.md, transcribed: schedule, time map, time scale, learned Σ, classes, image shape, format, hash.
LINEAR_1000 = {"type": "discrete_linear", "N": 1000}
COSINE_1000 = {"type": "discrete_cosine", "N": 1000}
COSINE_4000 = {"type": "discrete_cosine", "N": 4000}
VP = {"type": "linear", "beta_0": 0.1, "beta_1": 20.0}


def _ddpm(shape, fmt, md5=None):
    return (LINEAR_1000, "discrete", 1000.0, False, None, shape, fmt, ("md5", md5) if md5 else None)


def _adm(schedule, shape, classes):
    return (schedule, "discrete", 1000.0, True, classes, shape, "openai", None)


def _classifier(schedule, shape):
    return (schedule, "discrete", 1000.0, False, 1000, shape, "openai", None)


SDE = (VP, "continuous", 999.0, False, None, (3, 32, 32), "score_sde", None)
EXPECTED = {
    "cifar10-ddpm": _ddpm((3, 32, 32), "flat", "1fa350b952534ae442b1d5235cce5cd3"),
    "celeba64-ddim": _ddpm((3, 64, 64), "ddim-list"),
    "lsun-bedroom-ddpm": _ddpm((3, 256, 256), "flat", "1921fa46b66a3665e450e42f36c2720f"),
    "lsun-church-ddpm": _ddpm((3, 256, 256), "flat", "fdc68a23938c2397caba4a260bc2445f"),
    "lsun-cat-ddpm": _ddpm((3, 256, 256), "flat", "646f23f4821f2459b8bafc57fd824558"),
    "improved-imagenet64": _adm(COSINE_4000, (3, 64, 64), None),
    "improved-cifar10": _adm(COSINE_4000, (3, 32, 32), None),
    "guided-imagenet64": _adm(COSINE_1000, (3, 64, 64), 1000),
    "guided-imagenet128": _adm(LINEAR_1000, (3, 128, 128), 1000),
    "guided-imagenet256": _adm(LINEAR_1000, (3, 256, 256), 1000),
    "guided-imagenet256-uncond": _adm(LINEAR_1000, (3, 256, 256), None),
    "guided-imagenet512": _adm(LINEAR_1000, (3, 512, 512), 1000),
    "guided-lsun-bedroom": _adm(LINEAR_1000, (3, 256, 256), None),
    "guided-classifier64": _classifier(COSINE_1000, (3, 64, 64)),
    "guided-classifier128": _classifier(LINEAR_1000, (3, 128, 128)),
    "guided-classifier256": _classifier(LINEAR_1000, (3, 256, 256)),
    "guided-classifier512": _classifier(LINEAR_1000, (3, 512, 512)),
    "scoresde-cifar10-ddpmpp-deep": SDE,
    "scoresde-cifar10-ddpmpp": SDE,
    "scoresde-cifar10-ddpm": SDE,
    "ddpm-cifar10-32": _ddpm((3, 32, 32), "diffusers"),
    "ddpm-celebahq-256": _ddpm((3, 256, 256), "diffusers"),
    "ddpm-ema-church-256": _ddpm((3, 256, 256), "diffusers"),
    "digits": _ddpm((1, 8, 8), "flat"),
    # edm.md: EDMPrecond denoisers on EDM's σ range, no published hash
    **{name: ({"type": "edm"}, "continuous", 1.0, False, 1000 if "imagenet" in name else 10 if "-cond-" in name else None,
              (3, 32, 32) if "cifar10" in name else (3, 64, 64), "edm-pickle", None) for name in EDM_PRESETS},
}
CLASSIFIERS = {
    "guided-imagenet64": "guided-classifier64",
    "guided-imagenet128": "guided-classifier128",
    "guided-imagenet256": "guided-classifier256",
    "guided-imagenet256-uncond": "guided-classifier256",
    "guided-imagenet512": "guided-classifier512",
}

# Tiny networks for the format round trips (updates of the presets' configs).
TINY_DDPM = dict(ch=32, out_ch=3, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[4], dropout=0.0,
                 in_channels=3, resolution=8)
TINY_ADM = dict(image_size=8, model_channels=32, num_res_blocks=1, attention_resolutions=[2], channel_mult=[1, 2],
                num_head_channels=16, dropout=0.0)
TINY_CLASSIFIER = dict(image_size=8, model_channels=32, num_res_blocks=1, attention_resolutions=[2],
                       channel_mult=[1, 2], num_head_channels=16, out_channels=10)
TINY_NCSNPP = dict(nf=16, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[4], image_size=8, dropout=0.0)


# ------------------------------------------------------------------------------------------ helpers
def _network(preset: str, override: dict, seed: int = 0) -> torch.nn.Module:
    """A tiny network of the preset's architecture with every weight randomised (no near-zero init layers,
    so outputs depend on every tensor)."""
    p = get_preset(preset)
    torch.manual_seed(seed)
    net = build(p.arch, {**p.config, **override}).eval()
    with torch.no_grad():
        for tensor in net.parameters():
            tensor.copy_(0.1 * torch.randn_like(tensor))
    return net


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def _inputs(channels=3, size=8, batch=2):
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, channels, size, size, generator=g), torch.tensor([17.0, 503.0])


def _assert_same_function(loaded_net, original, *args):
    with torch.no_grad():
        expected = original(*args)
        got = loaded_net(*args)
    assert expected.abs().mean() > 1e-3  # the network is not (near) zero, so equality is informative
    assert torch.equal(got, expected)


class TimeRecorder(torch.nn.Module):
    """Stands in for a network: records the time input it is given, returns zeros of the output shape."""

    def __init__(self, out_channels: int):
        super().__init__()
        self.out_channels = out_channels
        self.times = []

    def forward(self, x, t, y=None):
        self.times.append(t.clone())
        return torch.zeros(x.shape[0], self.out_channels, *x.shape[2:], dtype=x.dtype)


def _with_net(preset: str, net: torch.nn.Module) -> LoadedModel:
    p = get_preset(preset)
    return LoadedModel(p.name, net, NoiseSchedule.from_spec(p.schedule), p, dict(p.config), p.image_shape,
                       p.num_classes, p.classifier)


# ------------------------------------------------------------------------------------------ registry
def test_every_network_preset_has_a_reference_key_dump():
    assert set(presets()) == set(KEY_FILES) | WITHOUT_KEY_FILE
    assert set(presets()) - {"gmm"} == set(EXPECTED)


@needs_reference
def test_every_reference_key_dump_is_checked_against_a_preset():
    """A key dump added to the reference (a new checkpoint family) must get a preset and a KEY_FILES row."""
    dumps = {path.stem for path in KEYS.glob("*.txt")}
    checked = set(KEY_FILES.values()) | set(DIFFUSERS_KEY_FILES.values())
    assert dumps - checked == set(), "reference key dumps no preset is checked against"
    assert checked - dumps == set(), "KEY_FILES names dumps the reference does not have"


@needs_reference
@pytest.mark.parametrize("name", sorted(KEY_FILES))
def test_preset_network_has_the_published_keys_shapes_and_parameter_count(name):
    preset = get_preset(name)
    with torch.device("meta"):
        net = build(preset.arch, preset.config)
    assert [(k, tuple(v.shape)) for k, v in net.state_dict().items()] == reference_keys(KEY_FILES[name])
    count = sum(p.numel() for p in net.parameters())
    assert count == reference_summary()[KEY_FILES[name]]["params"] == preset.params
    if preset.format == "score_sde":  # shadow_params are matched by position: the counts must agree
        assert len(list(net.parameters())) == reference_summary()[KEY_FILES[name]]["ema_shadow_params_len"]


@needs_reference
@pytest.mark.parametrize("name", sorted(DIFFUSERS_KEY_FILES))
def test_diffusers_preset_keys_convert_onto_its_network(name):
    from dpms.models.diffusers_format import ddpm_state_dict_from_diffusers

    diffusers_state = {k: torch.empty(s, device="meta") for k, s in reference_keys(DIFFUSERS_KEY_FILES[name])}
    converted = ddpm_state_dict_from_diffusers(diffusers_state)
    with torch.device("meta"):
        net = build("ddpm", get_preset(name).config)
    assert sorted((k, tuple(v.shape)) for k, v in converted.items()) == sorted(
        (k, tuple(v.shape)) for k, v in net.state_dict().items()
    )


def test_digits_preset_is_the_network_dpms_trains():
    from dpms.digits import DIGITS_DDPM_CONFIG, DIGITS_SCHEDULE_SPEC

    preset = get_preset("digits")
    assert preset.config == DIGITS_DDPM_CONFIG and preset.schedule == DIGITS_SCHEDULE_SPEC
    with torch.device("meta"):
        assert sum(p.numel() for p in build("ddpm", preset.config).parameters()) == preset.params


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_registry_entry_matches_checkpoints_md(name):
    p = get_preset(name)
    schedule, time_map, time_scale, learned_sigma, classes, shape, fmt, published_hash = EXPECTED[name]
    assert (p.schedule, p.time_map, p.time_scale, p.learned_sigma, p.num_classes) == (
        schedule, time_map, time_scale, learned_sigma, classes)
    assert (p.image_shape, p.format, p.hash) == (shape, fmt, published_hash)
    assert p.model_type == ("logits" if p.kind == "classifier" else "denoiser" if p.arch == "edm" else "noise")
    assert p.classifier == CLASSIFIERS.get(name)
    assert image_shape_of(p.arch, p.config) == p.image_shape
    if p.arch == "adm":
        assert p.config["num_classes"] == p.num_classes
        assert p.config["out_channels"] == 2 * p.config["in_channels"]  # learned Σ: ε, then the variance
    NoiseSchedule.from_spec(p.schedule)


# How each model's samples become uint8 images: the convention of the pipeline behind its paper's FID.
# round: torchvision save_image in ermongroup/ddim, PNDM and DPM-Solver's ddpm_and_guided-diffusion runners
# (DPM-Solver samples improved ImageNet 64, guided ImageNet 128 / 256 and LSUN bedroom there) and diffusers'
# numpy_to_pil; floor: guided-diffusion's own sample scripts and score_sde's run_lib; digits: dpms's own.
UINT8 = {
    **dict.fromkeys(["cifar10-ddpm", "celeba64-ddim", "lsun-bedroom-ddpm", "lsun-church-ddpm", "lsun-cat-ddpm",
                     "improved-imagenet64", "improved-cifar10", "guided-imagenet128", "guided-imagenet256",
                     "guided-lsun-bedroom", "ddpm-cifar10-32", "ddpm-celebahq-256", "ddpm-ema-church-256"], "round"),
    **dict.fromkeys(["guided-imagenet64", "guided-imagenet256-uncond", "guided-imagenet512", "scoresde-cifar10-ddpmpp-deep",
                     "scoresde-cifar10-ddpmpp", "scoresde-cifar10-ddpm", "digits"], "floor"),
    **dict.fromkeys(EDM_PRESETS, "round"),  # EDM generate.py: (x * 127.5 + 128).clip(0, 255) as uint8
}


def test_every_model_names_the_uint8_convention_of_its_papers_pipeline():
    models = {name for name, p in presets().items() if p.kind == "model"}
    assert set(UINT8) == models
    for name in models:
        assert get_preset(name).uint8 == UINT8[name], name


def test_digits_keeps_the_convention_of_the_committed_results():
    from dpms.generate import load_target

    assert load_target("digits").uint8 == "floor"


def test_uint8_field_is_checked():
    from dpms.models.checkpoints import _parse_preset

    entry = {k: v for k, v in dataclasses.asdict(get_preset("digits")).items() if k != "name"}
    with pytest.raises(DpmsError, match=r"registry preset 'x': uint8='nearest' is not one of floor, round"):
        _parse_preset("x", {**entry, "uint8": "nearest"})
    with pytest.raises(DpmsError, match="lacks field"):
        _parse_preset("x", {k: v for k, v in entry.items() if k != "uint8"})
    classifier = {k: v for k, v in dataclasses.asdict(get_preset("guided-classifier64")).items() if k != "name"}
    with pytest.raises(DpmsError, match="a classifier preset makes no images; drop its uint8 field"):
        _parse_preset("x", classifier)


def test_registry_entries_are_complete_and_consistent():
    table = presets()
    files = [p.file for p in table.values() if p.file]
    assert len(files) == len(set(files))
    for p in table.values():
        if p.kind == "exact":
            continue
        assert p.file and not Path(p.file).is_absolute() and ".." not in Path(p.file).parts
        assert p.source and p.paper
        if p.download == "shipped":
            assert p.url is None and p.reproduce
        else:
            assert p.url.startswith("https://")
            # Google Drive needs a browser (confirmation page); everything else is fetched by urllib.
            assert (p.download == "manual") == ("drive.google.com" in p.url)
        if p.hash is not None:
            algorithm, digest = p.hash
            assert re.fullmatch({"md5": "[0-9a-f]{32}", "sha256": "[0-9a-f]{64}"}[algorithm], digest)
        if p.classifier is not None:
            classifier = table[p.classifier]
            assert classifier.kind == "classifier" and classifier.image_shape == p.image_shape
            assert classifier.schedule == p.schedule  # the classifier is trained on the model's noise levels


# ------------------------------------------------------------------------------------------ formats
def _save(obj, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("prefix", ["", "module."])
def test_flat_state_dict_round_trips(tmp_path, prefix):
    original = _network("cifar10-ddpm", TINY_DDPM)
    path = _save({prefix + k: v for k, v in original.state_dict().items()}, tmp_path / "model.ckpt")
    loaded = load("cifar10-ddpm", checkpoint=path, config_override=TINY_DDPM, verify_hash=False)
    x, t = _inputs()
    _assert_same_function(loaded.net, original, x, t)
    assert loaded.image_shape == (3, 8, 8) and loaded.checkpoint == path


def test_safetensors_state_dict_round_trips(tmp_path):
    from safetensors.torch import save_file

    original = _network("digits", {})
    save_file(original.state_dict(), tmp_path / "digits.safetensors")
    loaded = load("digits", checkpoint=tmp_path / "digits.safetensors")
    x, t = _inputs(channels=1)
    _assert_same_function(loaded.net, original, x, t)


def test_ddim_list_loads_the_ema_state(tmp_path):
    ema, raw = _network("celeba64-ddim", TINY_DDPM, seed=0), _network("celeba64-ddim", TINY_DDPM, seed=1)
    optimizer = {"state": {}, "param_groups": [{"lr": 2e-4, "betas": (0.9, 0.999), "params": [0, 1]}]}
    raw_state = {f"module.{k}": v for k, v in raw.state_dict().items()}
    path = _save([raw_state, optimizer, 12, 34000, ema.state_dict()], tmp_path / "ckpt.pth")
    loaded = load("celeba64-ddim", checkpoint=path, config_override=TINY_DDPM)
    x, t = _inputs()
    _assert_same_function(loaded.net, ema, x, t)
    assert not torch.equal(loaded.net(x, t), raw(x, t))


def test_score_sde_checkpoint_loads_ema_shadow_params_by_position(tmp_path):
    ema, raw = _network("scoresde-cifar10-ddpmpp-deep", TINY_NCSNPP, 0), _network("scoresde-cifar10-ddpmpp-deep", TINY_NCSNPP, 1)
    raw.sigmas.copy_(torch.rand_like(raw.sigmas))  # buffers come from 'model', so make them recognisable
    checkpoint = {
        "optimizer": {"state": {}, "param_groups": [{"lr": 2e-4, "params": [0]}]},
        "model": {f"module.{k}": v for k, v in raw.state_dict().items()},
        "ema": {"decay": 0.9999, "num_updates": 5, "shadow_params": [p.detach().clone() for p in ema.parameters()]},
        "step": 5,
    }
    path = _save(checkpoint, tmp_path / "checkpoint_8.pth")
    loaded = load("scoresde-cifar10-ddpmpp-deep", checkpoint=path, config_override=TINY_NCSNPP)
    x, t = _inputs()
    _assert_same_function(loaded.net, ema, x, t)
    assert not torch.equal(loaded.net(x, t), raw(x, t))
    assert loaded.net.sigmas.dtype == torch.float64 and torch.equal(loaded.net.sigmas, raw.sigmas)


def test_openai_state_dict_and_classifier_round_trip(tmp_path):
    model = _network("guided-imagenet64", {**TINY_ADM, "num_classes": 10})
    classifier = _network("guided-classifier64", TINY_CLASSIFIER)
    model_path = _save(model.state_dict(), tmp_path / "64x64_diffusion.pt")
    classifier_path = _save(classifier.state_dict(), tmp_path / "64x64_classifier.pt")
    loaded = load("guided-imagenet64", checkpoint=model_path, config_override={**TINY_ADM, "num_classes": 10})
    loaded_classifier = load_classifier(loaded.classifier_preset, classifier_path, config_override=TINY_CLASSIFIER)
    x, t = _inputs()
    y = torch.tensor([3, 7])
    _assert_same_function(loaded.net, model, x, t, y)
    _assert_same_function(loaded_classifier, classifier, x, t)
    assert loaded.num_classes == 10 and loaded.classifier_preset == "guided-classifier64"


def _tiny_diffusers_unet():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        flip_sin_to_cos=False, freq_shift=1, downsample_padding=0, norm_eps=1e-6, attention_head_dim=None,
    ).eval()
    with torch.no_grad():
        for tensor in unet.parameters():
            tensor.copy_(0.1 * torch.randn_like(tensor))
    return unet


OLD_ATTENTION_NAMES = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}


@pytest.mark.parametrize("weights", ["diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"])
@pytest.mark.parametrize("naming", ["to_q", "query"])
def test_diffusers_folder_round_trips(tmp_path, weights, naming):
    from safetensors.torch import save_file

    unet = _tiny_diffusers_unet()
    state = unet.state_dict()
    if naming == "query":
        for new, old in OLD_ATTENTION_NAMES.items():
            state = {k.replace(new, old): v for k, v in state.items()}
        assert any(".proj_attn." in k for k in state)
    folder = tmp_path / "ddpm-cifar10-32"
    unet.save_config(folder)
    if weights.endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in state.items()}, folder / weights)
    else:
        torch.save(state, folder / weights)
    loaded = load("ddpm-cifar10-32", checkpoint=folder, config_override=TINY_DDPM)
    x, t = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded.net(x, t), unet(x, t).sample, rtol=1e-5, atol=1e-5)


def test_diffusers_folder_of_another_network_is_refused(tmp_path):
    folder = tmp_path / "ddpm-cifar10-32"
    _tiny_diffusers_unet().save_pretrained(folder)
    with pytest.raises(DpmsError) as error:
        load("ddpm-cifar10-32", checkpoint=folder)
    assert _one_line(error) == (
        f"diffusers folder {folder} describes ch=32, but preset ddpm-cifar10-32 has ch=128; "
        "point the preset at its own folder"
    )


# ------------------------------------------------------------------------------------------ time and guidance
@pytest.mark.parametrize(
    "name, step_input",
    [
        ("cifar10-ddpm", lambda n: n),  # linear N = 1000: the step index itself
        ("guided-imagenet64", lambda n: n),  # cosine N = 1000, 4 trailing steps clipped: still the index
        ("improved-cifar10", lambda n: n * 1000 / 4000),  # rescale_timesteps with N = 4000 (16 trailing steps clipped)
    ],
)
def test_discrete_networks_see_the_step_index_they_were_trained_with(name, step_input):
    preset = get_preset(name)
    recorder = TimeRecorder(6 if preset.learned_sigma else 3)
    model = _with_net(name, recorder)
    kept = model.schedule.N
    steps = torch.tensor([0, 1, 250, kept - 1], dtype=torch.float64)
    t = (steps + 1) / kept  # step n of the kept table sits at t = (n + 1)/N'
    x = torch.zeros(4, 3, 8, 8, dtype=torch.float64)
    y = torch.zeros(4, dtype=torch.long) if preset.num_classes else None
    eps = model.noise_fn(y=y)(x, t)
    assert eps.shape == x.shape  # learned Σ: only ε reaches the solver
    torch.testing.assert_close(recorder.times[-1], step_input(steps), rtol=0, atol=1e-9)


def test_score_sde_network_sees_999_t():
    recorder = TimeRecorder(3)
    model = _with_net("scoresde-cifar10-ddpmpp-deep", recorder)
    t = torch.tensor([1e-3, 0.5, 1.0], dtype=torch.float64)
    model(torch.zeros(3, 3, 8, 8, dtype=torch.float64), t)
    torch.testing.assert_close(recorder.times[-1], 999 * t, rtol=0, atol=1e-12)


def test_loaded_model_is_the_noise_fn_for_dpms_sample(tmp_path):
    original = _network("cifar10-ddpm", TINY_DDPM)
    path = _save(original.state_dict(), tmp_path / "model.ckpt")
    model = load("cifar10-ddpm", checkpoint=path, config_override=TINY_DDPM, verify_hash=False)

    def oracle(x, t):  # ε at discrete step n = tN − 1, straight from the original network
        return original(x, t * 1000 - 1)

    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = dpms.sample(model, model.schedule, x_T, solver="dpm3", nfe=6)
        expected = dpms.sample(oracle, model.schedule, x_T, solver="dpm3", nfe=6)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_classifier_free_guidance_on_a_class_conditional_adm_with_a_null_class(tmp_path):
    """No published preset was trained with a null label; a CFG-trained ADM has num_classes + 1 label
    embeddings, the last meaning "no class". ε̃ = ε_u + s(ε_c − ε_u), checked against direct network calls."""
    tiny = {**TINY_ADM, "num_classes": 11}  # classes 0..9 and the null label 10
    net = _network("guided-imagenet64", tiny)
    model = load("guided-imagenet64", checkpoint=_save(net.state_dict(), tmp_path / "cfg.pt"), config_override=tiny)
    x, _ = _inputs()
    y, steps, s = torch.tensor([2, 9]), torch.tensor([100.0, 700.0]), 3.0
    t = (steps + 1) / model.schedule.N
    eps = model.noise_fn(y=y, guidance="classifier-free", guidance_scale=s, unconditional_y=10)(x, t)
    with torch.no_grad():
        conditional, unconditional = net(x, steps, y)[:, :3], net(x, steps, torch.tensor([10, 10]))[:, :3]
    torch.testing.assert_close(eps, unconditional + s * (conditional - unconditional), rtol=1e-4, atol=1e-5)
    plain = model.noise_fn(y=y)(x, t)
    torch.testing.assert_close(model.noise_fn(y=y, guidance="classifier-free", guidance_scale=1.0, unconditional_y=10)(x, t),
                               plain, rtol=1e-4, atol=1e-5)  # s = 1 is the conditional model
    with torch.no_grad():
        x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
        guided = dpms.sample(model.noise_fn(y=y, guidance="classifier-free", guidance_scale=s, unconditional_y=10),
                             model.schedule, x_T, solver="dpm2m", nfe=4)
        unguided = dpms.sample(model.noise_fn(y=y), model.schedule, x_T, solver="dpm2m", nfe=4)
    assert not torch.allclose(guided, unguided)


def test_classifier_free_guidance_errors_are_one_line():
    model = _with_net("guided-imagenet128", TimeRecorder(6))
    y = torch.tensor([1, 2])
    with pytest.raises(DpmsError, match="needs class labels y and unconditional_y"):
        model.noise_fn(y=y, guidance="classifier-free", guidance_scale=2.0)
    with pytest.raises(DpmsError, match=r"label 1000 is not a class of guided-imagenet128"):
        model.noise_fn(y=y, guidance="classifier-free", guidance_scale=2.0, unconditional_y=1000)
    with pytest.raises(DpmsError, match="needs a class-conditional network; guided-lsun-bedroom takes no labels"):
        _with_net("guided-lsun-bedroom", TimeRecorder(6)).noise_fn(y=y, guidance="classifier-free", unconditional_y=0)
    with pytest.raises(DpmsError, match="noise_fn sets condition itself"):  # not Python's duplicate-keyword TypeError
        model.noise_fn(y=y, condition=y)
    with pytest.raises(DpmsError, match="unknown guidance 'cfg'"):
        model.noise_fn(y=y, guidance="cfg")
    model.noise_fn(y=y, guidance="classifier-free", guidance_scale=2.0, unconditional_y=torch.tensor([0, 0]))(
        torch.zeros(2, 3, 8, 8), torch.full((2,), 0.5))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "name, override",
    [("cifar10-ddpm", TINY_DDPM), ("guided-imagenet64", {**TINY_ADM, "num_classes": 10}),
     ("scoresde-cifar10-ddpmpp-deep", TINY_NCSNPP)],
)
def test_half_precision_weights_sample_like_float32(tmp_path, name, override, dtype):
    """load(..., dtype=torch.bfloat16 / float16) casts the weights; the model still samples from float32 noise."""
    net = _network(name, override)
    if get_preset(name).format == "score_sde":
        state = {"model": net.state_dict(), "ema": {"shadow_params": [p.detach() for p in net.parameters()]}}
    else:
        state = net.state_dict()
    path = _save(state, tmp_path / "weights.pt")
    models = {d: load(name, checkpoint=path, config_override=override, dtype=d, verify_hash=False) for d in (None, dtype)}
    assert next(models[dtype].net.parameters()).dtype == dtype
    y = torch.tensor([1, 7]) if models[None].num_classes else None
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full, half = (dpms.sample(models[d].noise_fn(y=y), models[d].schedule, x_T, solver="dpm2m", nfe=4) for d in (None, dtype))
    assert half.dtype == torch.float32
    assert (half - full).abs().max() < 0.1 * full.abs().max()


def test_dtype_that_is_not_floating_point_is_one_line(tmp_path):
    with pytest.raises(DpmsError, match=r"dtype=torch.int8 is not a floating-point torch dtype; use torch.float32"):
        load("digits", dtype=torch.int8)


@pytest.mark.parametrize("name", ["guided-imagenet64", "guided-imagenet256-uncond"])
def test_classifier_guidance_uses_the_preset_classifier_and_time_input(tmp_path, name):
    classes = 10 if get_preset(name).num_classes else None
    model_net = _network(name, {**TINY_ADM, "num_classes": classes})
    classifier_net = _network(get_preset(name).classifier, TINY_CLASSIFIER)
    model = load(name, checkpoint=_save(model_net.state_dict(), tmp_path / "m.pt"),
                 config_override={**TINY_ADM, "num_classes": classes})
    classifier = load_classifier(model.classifier_preset, _save(classifier_net.state_dict(), tmp_path / "c.pt"),
                                 config_override=TINY_CLASSIFIER)
    x, _ = _inputs()
    y = torch.tensor([2, 9])
    steps = torch.tensor([100.0, 700.0])
    t = (steps + 1) / model.schedule.N
    s = 1.5
    eps = model.noise_fn(y=y, guidance_scale=s, classifier=classifier)(x, t)

    with torch.enable_grad():  # oracle: Dhariwal & Nichol's ε − s σ_t ∇ₓ log p(y | x_t), by hand
        x_in = x.clone().requires_grad_(True)
        log_p = torch.log_softmax(classifier_net(x_in, steps), dim=-1)[torch.arange(2), y].sum()
        grad = torch.autograd.grad(log_p, x_in)[0]
    with torch.no_grad():
        unguided = model_net(x, steps, y if classes else None)[:, :3]
    sigma = model.schedule.sigma(t).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(eps, unguided - s * sigma * grad, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------ errors
def test_missing_file_names_every_place_dpms_looked(tmp_path, monkeypatch):
    preset = dataclasses.replace(get_preset("cifar10-ddpm"), file="nowhere/model-790000.ckpt")
    monkeypatch.setenv("DPMS_CHECKPOINTS", str(tmp_path / "env"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MissingFileError) as error:
        load(preset)
    assert _one_line(error) == (
        f"checkpoint for cifar10-ddpm not found (looked in {tmp_path}/env/nowhere/model-790000.ckpt, "
        f"{tmp_path}/checkpoints/nowhere/model-790000.ckpt, {REPO_ROOT}/checkpoints/nowhere/model-790000.ckpt); "
        f"get it with `dpms download cifar10-ddpm` ({preset.url}), or pass --checkpoint PATH"
    )


def test_missing_manual_file_says_where_to_put_it(tmp_path, monkeypatch):
    preset = dataclasses.replace(get_preset("scoresde-cifar10-ddpmpp-deep"), file="nowhere/checkpoint_8.pth")
    monkeypatch.setenv("DPMS_CHECKPOINTS", str(tmp_path))
    with pytest.raises(MissingFileError) as error:
        load(preset)
    assert _one_line(error).endswith(
        f"download it by hand from {preset.url} and put it at {tmp_path}/nowhere/checkpoint_8.pth, "
        "or pass --checkpoint PATH"
    )


def test_explicit_checkpoint_that_does_not_exist(tmp_path):
    with pytest.raises(MissingFileError) as error:
        load("digits", checkpoint=tmp_path / "nope.pt")
    assert _one_line(error) == (
        f"checkpoint {tmp_path}/nope.pt for digits does not exist; "
        "it ships with the dpms repository; recreate it with `dpms train digits`"
    )


@pytest.mark.parametrize(
    "content, message",
    [
        ({"weights": [1, 2], "epoch": 3}, "unknown checkpoint format: a dict with keys 'weights', 'epoch'; "),
        (42, "unknown checkpoint format: an object of type int; "),
        ([{"a": torch.zeros(1)}, {}, 1, 2], "has no EMA state_dict as its last element (found an object of type int)"),
    ],
)
def test_unknown_format_is_one_line(tmp_path, content, message):
    path = _save(content, tmp_path / "odd.pt")
    # a list is read as the DDIM format, so it goes to a preset that declares that format
    preset = "celeba64-ddim" if isinstance(content, list) else "digits"
    with pytest.raises(DpmsError) as error:
        load(preset, checkpoint=path, verify_hash=False)
    assert message in _one_line(error)


@pytest.mark.parametrize(
    "preset, content, found",
    [("digits", [{"a": torch.zeros(1)}, {}, 1, 2], "ddim-list"),
     ("celeba64-ddim", {"a": torch.zeros(1)}, "flat"),
     ("scoresde-cifar10-ddpmpp-deep", {"a": torch.zeros(1)}, "flat")],
)
def test_file_in_another_format_than_the_preset_declares_is_one_line(tmp_path, preset, content, found):
    path = _save(content, tmp_path / "other.pt")
    declared = get_preset(preset).format
    with pytest.raises(DpmsError) as error:
        load(preset, checkpoint=path, verify_hash=False)
    assert _one_line(error) == (
        f"{path} is a {found} checkpoint but preset {preset} declares format {declared}; "
        f"pass that preset's own {declared} file, or use a preset of format {found}"
    )


def test_a_folder_for_a_file_preset_is_refused_naming_both_formats(tmp_path):
    folder = tmp_path / "unet"
    folder.mkdir()
    with pytest.raises(DpmsError) as error:
        load("cifar10-ddpm", checkpoint=folder, verify_hash=False)
    assert _one_line(error).startswith(f"{folder} is a diffusers checkpoint but preset cifar10-ddpm declares format flat; ")


def test_openai_and_flat_are_one_layout(tmp_path):
    """OpenAI `.pt` files are plain state_dicts: a flat file loads into an openai preset."""
    from dpms.models.checkpoint_formats import FORMATS, Source, checked_format

    path = _save({"a": torch.zeros(1)}, tmp_path / "flat.pt")
    assert checked_format(Source(path), "openai", "preset x") is FORMATS["openai"]


def test_pickled_code_is_never_loaded(tmp_path):
    path = _save(argparse.Namespace(weights=1), tmp_path / "pickle.pt")
    with pytest.raises(DpmsError) as error:
        load("digits", checkpoint=path)
    message = _one_line(error)
    assert message.startswith(f"{path} contains pickled code (argparse.Namespace) and is refused")
    assert "\x1b" not in message  # torch's own message carries terminal bold codes


def _damaged(kind: str, valid: bytes) -> bytes:
    """Bytes of a file that is not a checkpoint: what interrupted downloads and error pages leave behind."""
    return {
        "garbage": bytes(range(256)) * 8,
        "empty": b"",
        "truncated": valid[: len(valid) // 2],
        "html": b"<!DOCTYPE html><html><body>Quota exceeded</body></html>",
    }[kind]


def _valid_bytes(suffix: str, tmp_path: Path) -> bytes:
    from safetensors.torch import save_file

    state = {"w": torch.arange(4096.0), "b": torch.zeros(3)}
    path = tmp_path / f"valid{suffix}"
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    return path.read_bytes()


REFETCH = {
    "cifar10-ddpm": "delete {path} and download it again with `dpms download cifar10-ddpm`",
    "guided-imagenet64": "delete {path} and download it again with `dpms download guided-imagenet64`",
    "celeba64-ddim": "delete {path} and download it again by hand from " + get_preset("celeba64-ddim").url,
    "digits": "restore it with `git checkout -- checkpoints/digits/digits_ddpm.pt` or recreate it with `dpms train digits`",
}


@pytest.mark.parametrize("kind", ["garbage", "empty", "truncated", "html"])
@pytest.mark.parametrize(
    "name, file_name",
    [("cifar10-ddpm", "model-790000.ckpt"), ("guided-imagenet64", "64x64_diffusion.pt"),
     ("celeba64-ddim", "ckpt.pth"), ("digits", "digits_ddpm.safetensors")],
)
def test_damaged_weight_file_is_one_line_naming_it_and_the_fix(tmp_path, kind, name, file_name):
    path = tmp_path / file_name
    path.write_bytes(_damaged(kind, _valid_bytes(path.suffix, tmp_path)))
    with pytest.raises(DpmsError) as error:
        load(name, checkpoint=path, verify_hash=False)
    message = _one_line(error)
    assert message.startswith(f"{path} is corrupt or unreadable (")
    assert message.endswith("); " + REFETCH[name].format(path=path))
    assert "\x1b" not in message and "Traceback" not in message


@pytest.mark.parametrize("kind", ["garbage", "empty", "truncated", "html"])
@pytest.mark.parametrize("weights", ["diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin", "config.json"])
def test_damaged_diffusers_folder_is_one_line_naming_the_file(tmp_path, kind, weights):
    """A folder with a damaged weight file (or config.json) names that file and says to fetch the folder again."""
    unet = _tiny_diffusers_unet()
    folder = tmp_path / "ddpm-cifar10-32"
    unet.save_config(folder)
    if weights == "config.json":
        torch.save(unet.state_dict(), folder / "diffusion_pytorch_model.bin")
        valid = (folder / "config.json").read_bytes()
    else:
        valid = _valid_bytes(Path(weights).suffix, tmp_path)
    (folder / weights).write_bytes(_damaged(kind, valid))
    with pytest.raises(DpmsError) as error:
        load("ddpm-cifar10-32", checkpoint=folder, config_override=TINY_DDPM)
    message = _one_line(error)
    assert message.startswith(f"{folder / weights} is corrupt or unreadable (")
    assert message.endswith(f"); delete {folder} and download it again with `dpms download ddpm-cifar10-32`")


def test_mismatched_keys_name_first_missing_and_unexpected(tmp_path):
    state = _network("digits", {}).state_dict()
    state["conv_in.kernel"] = state.pop("conv_in.weight")
    state["extra.bias"] = torch.zeros(1)
    state.pop("conv_out.bias")
    path = _save(state, tmp_path / "digits.pt")
    with pytest.raises(DpmsError) as error:
        load("digits", checkpoint=path)
    assert _one_line(error) == (
        f"checkpoint {path} does not fit preset digits (ddpm, flat format): 2 missing key(s), first "
        "'conv_in.weight'; 2 unexpected key(s), first 'conv_in.kernel'; use the preset this checkpoint was published for"
    )


def test_mismatched_shape_is_named(tmp_path):
    path = _save(_network("cifar10-ddpm", TINY_DDPM).state_dict(), tmp_path / "tiny.ckpt")
    with pytest.raises(DpmsError) as error:
        load("digits", checkpoint=path, config_override={**TINY_DDPM, "in_channels": 1, "out_ch": 1, "augment_dim": 0})
    assert _one_line(error) == (
        f"checkpoint {path} does not fit preset digits (ddpm, flat format): 'conv_in.weight' has shape "
        "(32, 3, 3, 3), the network expects (32, 1, 3, 3); use the preset this checkpoint was published for"
    )


def test_score_sde_shadow_param_count_mismatch(tmp_path):
    net = _network("scoresde-cifar10-ddpmpp-deep", TINY_NCSNPP)
    shadow = [p.detach() for p in net.parameters()][:-1]
    path = _save({"model": net.state_dict(), "ema": {"shadow_params": shadow}, "step": 1, "optimizer": {}},
                 tmp_path / "checkpoint_8.pth")
    with pytest.raises(DpmsError) as error:
        load("scoresde-cifar10-ddpmpp-deep", checkpoint=path, config_override=TINY_NCSNPP)
    n = len(list(net.parameters()))
    assert f"has {n - 1} EMA shadow_params but the network has {n} parameter tensors" in _one_line(error)


@pytest.mark.parametrize("algorithm", ["md5", "sha256"])
def test_published_hash_is_verified(tmp_path, algorithm):
    path = _save(_network("cifar10-ddpm", TINY_DDPM).state_dict(), tmp_path / "model.ckpt")
    actual = hashlib.new(algorithm, path.read_bytes()).hexdigest()
    good = dataclasses.replace(get_preset("cifar10-ddpm"), hash=(algorithm, actual))
    load(good, checkpoint=path, config_override=TINY_DDPM)
    wrong = "0" * len(actual)
    bad = dataclasses.replace(good, hash=(algorithm, wrong))
    with pytest.raises(DpmsError) as error:
        load(bad, checkpoint=path, config_override=TINY_DDPM)
    message = _one_line(error)
    assert message.startswith(f"{path} has {algorithm} {actual} but preset cifar10-ddpm expects {wrong} (the published file); ")
    assert "re-download it (get it with `dpms download cifar10-ddpm`" in message
    assert message.endswith("or, for your own weights, pass --no-verify (verify_hash=False in Python)")
    load(bad, checkpoint=path, config_override=TINY_DDPM, verify_hash=False)


def test_unknown_preset_lists_valid_names():
    with pytest.raises(DpmsError) as error:
        load("cifar11-ddpm")
    assert _one_line(error).startswith("unknown model preset 'cifar11-ddpm'; valid presets: cifar10-ddpm, celeba64-ddim,")
    assert all(name in str(error.value) for name in presets())


def test_wrong_kind_and_missing_labels_are_one_line(tmp_path):
    with pytest.raises(DpmsError, match="is the exact model"):
        load("gmm")
    with pytest.raises(DpmsError, match=r"load it with load_classifier\('guided-classifier64'\)"):
        load("guided-classifier64")
    with pytest.raises(DpmsError, match="this model has no classifier preset"):
        load_classifier(None)
    model = _with_net("guided-imagenet128", TimeRecorder(6))
    with pytest.raises(DpmsError, match=r"guided-imagenet128 is class-conditional \(1000 classes\); pass class labels y"):
        model.noise_fn()
    with pytest.raises(DpmsError, match=r"needs a classifier \(classifier preset guided-classifier128\)"):
        model.noise_fn(y=torch.tensor([1]), guidance_scale=1.0)


# ------------------------------------------------------------------------------------------ downloads and CLI
def _file_preset(tmp_path: Path, algorithm="md5", corrupt=False):
    source = _save({"w": torch.arange(1000.0)}, tmp_path / "mirror" / "model.ckpt")
    digest = hashlib.new(algorithm, source.read_bytes()).hexdigest()
    digest = "f" * len(digest) if corrupt else digest
    return source, dataclasses.replace(get_preset("cifar10-ddpm"), url=source.as_uri(), hash=(algorithm, digest),
                                       file="sub/model.ckpt")


def test_download_verifies_and_moves_into_place(tmp_path):
    source, preset = _file_preset(tmp_path, "sha256")
    seen = []
    path = download(preset, to=tmp_path / "root", progress=lambda name, done, total: seen.append((done, total)))
    assert path == tmp_path / "root" / "sub" / "model.ckpt"
    assert path.read_bytes() == source.read_bytes()
    assert seen[-1] == (source.stat().st_size, source.stat().st_size)
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.ckpt"]  # no temporary file left


def test_download_with_wrong_hash_leaves_nothing(tmp_path):
    _, preset = _file_preset(tmp_path, "md5", corrupt=True)
    with pytest.raises(DpmsError) as error:
        download(preset, to=tmp_path / "root")
    assert "expected ffffffffffffffffffffffffffffffff; the file was discarded" in _one_line(error)
    assert list((tmp_path / "root" / "sub").iterdir()) == []


def test_download_replaces_a_file_that_fails_the_published_hash(tmp_path):
    """`dpms download` over a damaged copy fetches the file again instead of repeating "re-download it"."""
    source, preset = _file_preset(tmp_path, "md5")
    destination = tmp_path / "root" / preset.file
    destination.parent.mkdir(parents=True)
    destination.write_bytes(b"truncated")
    with pytest.raises(DpmsError, match="re-download it"):
        load(preset, checkpoint=destination)
    assert download(preset, to=tmp_path / "root") == destination
    assert destination.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in destination.parent.iterdir()) == ["model.ckpt"]


def test_download_keeps_a_file_that_matches_the_published_hash(tmp_path):
    source, preset = _file_preset(tmp_path, "sha256")
    destination = tmp_path / "root" / preset.file
    destination.parent.mkdir(parents=True)
    destination.write_bytes(source.read_bytes())
    offline = dataclasses.replace(preset, url="http://127.0.0.1:9/model.ckpt")  # nothing is fetched
    assert download(offline, to=tmp_path / "root", timeout=5) == destination


def test_download_over_a_damaged_file_without_network_says_to_delete_it(tmp_path):
    _, preset = _file_preset(tmp_path, "md5")
    offline = dataclasses.replace(preset, url="http://127.0.0.1:9/model.ckpt")
    destination = tmp_path / "root" / preset.file
    destination.parent.mkdir(parents=True)
    destination.write_bytes(b"truncated")
    with pytest.raises(DpmsError) as error:
        download(offline, to=tmp_path / "root", timeout=5)
    message = _one_line(error)
    assert message.startswith(f"{destination} does not match the published md5 and downloading it again failed: "
                              "could not reach http://127.0.0.1:9/model.ckpt (")
    assert message.endswith(f"; delete {destination}, then run `dpms download cifar10-ddpm` again "
                            "or download it by hand from http://127.0.0.1:9/model.ckpt")
    assert destination.read_bytes() == b"truncated"  # nothing half-written replaced it


def test_download_without_network_says_where_to_put_the_file(tmp_path):
    preset = dataclasses.replace(get_preset("cifar10-ddpm"), url="http://127.0.0.1:9/model-790000.ckpt")
    with pytest.raises(DpmsError) as error:
        download(preset, to=tmp_path, timeout=5)
    message = _one_line(error)
    assert message.startswith("could not reach http://127.0.0.1:9/model-790000.ckpt (")
    assert message.endswith(f"download it by hand and put it at {tmp_path}/{preset.file}")


def test_download_diffusers_folder_falls_back_to_bin_weights(tmp_path):
    unet = _tiny_diffusers_unet()
    hub = tmp_path / "hub"
    unet.save_config(hub / "resolve" / "main")
    torch.save(unet.state_dict(), hub / "resolve" / "main" / "diffusion_pytorch_model.bin")
    preset = dataclasses.replace(get_preset("ddpm-cifar10-32"), url=hub.as_uri())
    folder = download(preset, to=tmp_path / "root")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "diffusion_pytorch_model.bin"]
    loaded = load(preset, checkpoint=folder, config_override=TINY_DDPM)
    x, t = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded.net(x, t), unet(x, t).sample, rtol=1e-5, atol=1e-5)


def _diffusers_hub(tmp_path: Path):
    """A file:// mirror of a Hugging Face diffusers repository holding a tiny UNet (config + .bin)."""
    unet = _tiny_diffusers_unet()
    hub = tmp_path / "hub"
    unet.save_config(hub / "resolve" / "main")
    torch.save(unet.state_dict(), hub / "resolve" / "main" / "diffusion_pytorch_model.bin")
    return dataclasses.replace(get_preset("ddpm-cifar10-32"), url=hub.as_uri())


@pytest.mark.parametrize("failure", [DpmsError, KeyboardInterrupt])
def test_failed_diffusers_download_leaves_no_folder(tmp_path, monkeypatch, failure):
    """The transfer dies after config.json: nothing appears at the destination, so the preset stays missing."""
    from dpms.models import checkpoints
    from dpms.models import download as download_module

    preset = _diffusers_hub(tmp_path)
    real_fetch = download_module._fetch

    def fetch_then_fail(url, destination, *args):
        if destination.name != "config.json":
            destination.write_bytes(b"half a weight file")  # what a dying transfer leaves in the temporary folder
            raise failure("connection reset")
        real_fetch(url, destination, *args)

    monkeypatch.setattr(download_module, "_fetch", fetch_then_fail)
    root = tmp_path / "root"
    with pytest.raises(failure):
        download(preset, to=root)
    folder = root / preset.file
    assert not folder.exists()
    assert list(folder.parent.iterdir()) == []  # no temporary folder left either
    monkeypatch.setenv("DPMS_CHECKPOINTS", str(root))
    assert checkpoints.find_checkpoint(preset) is None


def test_diffusers_folder_counts_as_present_only_with_config_and_weights(tmp_path, monkeypatch):
    from dpms.models import checkpoints

    preset = get_preset("ddpm-cifar10-32")
    monkeypatch.setenv("DPMS_CHECKPOINTS", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / preset.file
    folder.mkdir(parents=True)
    assert checkpoints.find_checkpoint(preset) is None  # an empty folder
    (folder / "config.json").write_text("{}")
    assert checkpoints.find_checkpoint(preset) is None  # config without weights
    (folder / "diffusion_pytorch_model.bin").write_bytes(b"")
    assert checkpoints.find_checkpoint(preset) == folder
    pipeline = tmp_path / "pipeline"
    (pipeline / "unet").mkdir(parents=True)
    (pipeline / "unet" / "config.json").write_text("{}")
    assert not checkpoints._exists(preset, pipeline)
    (pipeline / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    assert checkpoints._exists(preset, pipeline)  # a pipeline folder: unet/ with both


def test_download_completes_an_interrupted_diffusers_folder(tmp_path):
    """An old incomplete folder (config.json only, plus a note of the user's) is completed, not replaced."""
    preset = _diffusers_hub(tmp_path)
    folder = tmp_path / "root" / preset.file
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("half")
    (folder / "NOTES.txt").write_text("mine")
    assert download(preset, to=tmp_path / "root") == folder
    assert sorted(p.name for p in folder.iterdir()) == ["NOTES.txt", "config.json", "diffusion_pytorch_model.bin"]
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]
    load(preset, checkpoint=folder, config_override=TINY_DDPM)


def test_cli_models_lists_presets_and_finds_files(tmp_path, monkeypatch, capsys):
    from dpms import cli

    preset = get_preset("cifar10-ddpm")
    (tmp_path / preset.file).parent.mkdir(parents=True)
    (tmp_path / preset.file).write_bytes(b"")
    monkeypatch.setenv("DPMS_CHECKPOINTS", str(tmp_path))
    monkeypatch.setattr(cli.console, "width", 400)
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 2}
    assert set(rows) == set(presets())
    assert f"present: {tmp_path / preset.file}" in rows["cifar10-ddpm"] and "35,746,307" in rows["cifar10-ddpm"]
    assert "missing: `dpms download guided-imagenet256`" in rows["guided-imagenet256"]
    assert "guided-diffusion/256x256_diffusion.pt" in rows["guided-imagenet256"]  # the file it looks for
    assert "missing: by hand (`dpms download celeba64-ddim` says from where)" in rows["celeba64-ddim"]
    assert f"$DPMS_CHECKPOINTS/<file> ({tmp_path})" in out


@pytest.mark.parametrize("searched", [True, False])
def test_cli_download_to_says_how_sample_finds_the_file(tmp_path, monkeypatch, capsys, searched):
    from dpms import cli
    from dpms.models import download as download_module

    root = tmp_path / "ckpt[1]"
    monkeypatch.setenv("DPMS_CHECKPOINTS", str(root if searched else tmp_path / "elsewhere"))
    monkeypatch.setattr(download_module, "download", lambda preset, to, progress: Path(to) / preset.file)
    monkeypatch.setattr(cli.console, "width", 400)
    assert cli.main(["download", "cifar10-ddpm", "--to", str(root)]) == 0
    out = capsys.readouterr().out
    path = root / get_preset("cifar10-ddpm").file
    assert f"cifar10-ddpm: {path}" in out
    note = f"note: dpms sample looks there only with DPMS_CHECKPOINTS={root} or --checkpoint {path}"
    assert (note in out) is not searched


def test_cli_download_of_a_browser_only_file_is_one_line(tmp_path, capsys):
    from dpms import cli

    assert cli.main(["download", "celeba64-ddim", "--to", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert err.strip() == (
        "error: celeba64-ddim is hosted at https://drive.google.com/file/d/1R_H-fJYXSH79wfSKs9D-fuKQVan5L-GR/"
        f"view?usp=sharing, which needs a browser; download it by hand and put it at {tmp_path}/ddim/celeba/ckpt.pth"
    )


@pytest.mark.parametrize(
    "labels, message",
    [
        ("50", "error: label 50 is not a class of guided-imagenet64 (10 classes); use labels from 0 to 9"),
        ("3,-1", "error: label -1 is not a class of guided-imagenet64 (10 classes); use labels from 0 to 9"),
        ("x", "error: --labels takes comma-separated class indices such as 3,207,980, got 'x'"),
        ("3,,4", "error: --labels takes comma-separated class indices such as 3,207,980, got '3,,4'"),
    ],
)
def test_cli_labels_are_checked_against_the_models_classes(tmp_path, monkeypatch, capsys, labels, message):
    import functools

    from dpms.cli import main
    from dpms.models import checkpoints

    tiny = {**TINY_ADM, "num_classes": 10}
    model_file = _save(_network("guided-imagenet64", tiny).state_dict(), tmp_path / "m.pt")
    monkeypatch.setattr(checkpoints, "load", functools.partial(checkpoints.load, config_override=tiny))
    code = main(["sample", "--model", "guided-imagenet64", "--checkpoint", str(model_file), "--solver", "ddim", "--nfe", "2",
                 "--num", "2", "--no-png", "--labels", labels, "--out", str(tmp_path / "out")])
    assert code == 2
    assert capsys.readouterr().err.strip() == message
    assert not (tmp_path / "out" / "samples.npz").exists()


def test_noise_fn_checks_labels():
    model = _with_net("guided-imagenet128", TimeRecorder(6))
    with pytest.raises(DpmsError, match=r"label 1000 is not a class of guided-imagenet128 \(1000 classes\); use labels from 0 to 999"):
        model.noise_fn(y=torch.tensor([3, 1000]))
    with pytest.raises(DpmsError, match="class labels y must be a 1-D integer tensor"):
        model.noise_fn(y=torch.tensor([3.0, 4.0]))
    uncond = _with_net("guided-imagenet256-uncond", TimeRecorder(6))
    classifier = _network("guided-classifier256", TINY_CLASSIFIER)  # 10 classes
    with pytest.raises(DpmsError, match=r"label 10 is not a class of the classifier \(10 classes\)"):
        uncond.noise_fn(y=torch.tensor([10]), guidance_scale=1.0, classifier=classifier)


@pytest.mark.parametrize("t_end_args, t_end", [([], "0.001"), (["--t-end", "1e-4"], "0.0001")])
def test_cli_score_sde_t_end_defaults_to_1e_3_and_is_an_option(tmp_path, monkeypatch, capsys, t_end_args, t_end):
    import functools

    from dpms.cli import main
    from dpms.models import checkpoints

    name = "scoresde-cifar10-ddpmpp-deep"
    net = _network(name, TINY_NCSNPP)
    path = _save({"model": net.state_dict(), "ema": {"shadow_params": [p.detach() for p in net.parameters()]}},
                 tmp_path / "checkpoint_8.pth")
    monkeypatch.setattr(checkpoints, "load", functools.partial(checkpoints.load, config_override=TINY_NCSNPP))
    monkeypatch.setattr("dpms.cli.console.width", 400)
    assert main(["sample", "--model", name, "--checkpoint", str(path), "--solver", "dpm2m", "--nfe", "3", "--num", "2",
                 "--no-png", "--out", str(tmp_path / "out"), *t_end_args]) == 0
    assert f"NFE used 3, t_end {t_end}," in capsys.readouterr().out


def test_cli_guides_the_unconditional_imagenet_model_with_drawn_labels(tmp_path, monkeypatch):
    """`dpms sample --model guided-imagenet256-uncond --classifier ... --guidance-scale s`: the network gets
    no labels, the classifier gets labels drawn from its classes, guidance changes the samples."""
    import functools

    import numpy as np

    from dpms.cli import main
    from dpms.models import checkpoints

    name = "guided-imagenet256-uncond"
    model_file = _save(_network(name, {**TINY_ADM, "num_classes": None}).state_dict(), tmp_path / "m.pt")
    classifier_file = _save(_network(get_preset(name).classifier, TINY_CLASSIFIER).state_dict(), tmp_path / "c.pt")
    monkeypatch.setattr(checkpoints, "load", functools.partial(checkpoints.load, config_override={**TINY_ADM, "num_classes": None}))
    monkeypatch.setattr(checkpoints, "load_classifier", functools.partial(checkpoints.load_classifier, config_override=TINY_CLASSIFIER))
    common = ["sample", "--model", name, "--checkpoint", str(model_file), "--solver", "ddim", "--nfe", "3", "--num", "4",
              "--batch", "2", "--no-png", "--no-verify"]
    assert main([*common, "--out", str(tmp_path / "plain")]) == 0
    assert main([*common, "--classifier", str(classifier_file), "--guidance-scale", "4", "--out", str(tmp_path / "guided")]) == 0
    assert main([*common, "--classifier", str(classifier_file), "--guidance-scale", "4", "--labels", "3",
                 "--out", str(tmp_path / "given")]) == 0
    plain, guided, given = (np.load(tmp_path / d / "samples.npz") for d in ("plain", "guided", "given"))
    assert "labels" not in plain.files
    assert guided["labels"].shape == (4,) and guided["labels"].max() < TINY_CLASSIFIER["out_channels"]
    assert given["labels"].tolist() == [3, 3, 3, 3]
    assert not np.array_equal(plain["samples"], guided["samples"])
    assert not np.array_equal(guided["samples"], given["samples"]) or guided["labels"].tolist() == [3, 3, 3, 3]
