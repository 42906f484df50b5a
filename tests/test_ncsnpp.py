"""score_sde NCSN++ / DDPM++ / DDPM networks: exact upstream state_dict layout for the three continuous VP
CIFAR-10 checkpoints, forward semantics, init_scale=0 structure, FIR resampling and config errors."""

import math
import os

import pytest
import torch
import torch.nn.functional as F

from dpms.errors import DpmsError
from dpms.models.ncsnpp import (
    AttnBlock,
    NCSNpp,
    ResnetBlockBigGAN,
    fir_conv_downsample,
    fir_downsample,
    fir_upsample,
    timestep_embedding,
)

from conftest import KEYS, reference_rows, reference_summary  # <repo>/../shared/reference, or $DPMS_REFERENCE

REFERENCE = KEYS

# configs/default_cifar10_configs.py model + data keys, as every score_sde CIFAR-10 config inherits them.
_SSDE_DEFAULTS = dict(
    image_size=32, num_channels=3, centered=True, sigma_min=0.01, sigma_max=50, num_scales=1000,
    beta_min=0.1, beta_max=20.0, dropout=0.1, embedding_type="fourier", scale_by_sigma=False, ema_rate=0.9999,
    normalization="GroupNorm", nonlinearity="swish", nf=128, ch_mult=(1, 2, 2, 2), attn_resolutions=(16,),
    resamp_with_conv=True, conditional=True,
)
# configs/vp/cifar10_ddpmpp_continuous.py (model section)
_DDPMPP = dict(
    _SSDE_DEFAULTS, name="ncsnpp", num_res_blocks=4, fir=False, fir_kernel=[1, 3, 3, 1], skip_rescale=True,
    resblock_type="biggan", progressive="none", progressive_input="none", progressive_combine="sum",
    attention_type="ddpm", init_scale=0.0, embedding_type="positional", fourier_scale=16, conv_size=3,
)
CHECKPOINT_CONFIGS = {
    "ssde_vp_cifar10_ddpmpp_continuous": _DDPMPP,
    "ssde_vp_cifar10_ddpmpp_deep_continuous": dict(_DDPMPP, num_res_blocks=8),
    # configs/vp/ddpm/cifar10_continuous.py: it keeps the default embedding_type 'fourier', which the DDPM
    # class ignores; building it with a Fourier module would break the key list.
    "ssde_vp_cifar10_ddpm_continuous": dict(_SSDE_DEFAULTS, name="ddpm", num_res_blocks=2),
}

TINY = dict(nf=16, ch_mult=(1, 2), num_res_blocks=1, image_size=8, attn_resolutions=(4,))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.skipif(not REFERENCE.is_dir() and not os.environ.get("CI"), reason=f"reference key lists not found at {REFERENCE}")
@pytest.mark.parametrize("name", sorted(CHECKPOINT_CONFIGS))
def test_state_dict_matches_upstream_checkpoint(name):
    summary = reference_summary()[name]
    with torch.device("meta"):
        model = NCSNpp(CHECKPOINT_CONFIGS[name])
    state = model.state_dict()
    got = [(key, tuple(t.shape), str(t.dtype).removeprefix("torch.")) for key, t in state.items()]
    assert got == reference_rows(name)
    assert state["sigmas"].dtype == torch.float64

    params = list(model.named_parameters())
    trainable = [p for _, p in params if p.requires_grad]
    assert sum(p.numel() for p in trainable) == summary["params"]
    assert len(params) == len(trainable) == summary["n_parameters_tensors"] == summary["ema_shadow_params_len"]
    # ema.shadow_params is an unnamed list in parameters() order: it must be the state_dict order minus buffers.
    assert [n for n, _ in params] == [k for k in state if k not in summary["buffers"]]

    with torch.device("meta"):  # the full-size graph wires up (shapes only, no compute)
        out = model(torch.empty(2, 3, 32, 32), torch.empty(2))
    assert out.shape == (2, 3, 32, 32)


def test_timestep_embedding_is_ddpm_sinusoid():
    # half = 3 frequencies 10000^(-k/(half-1)) = 1, 1e-2, 1e-4 (DDPM's "- 1"); odd dims get a zero column.
    t = torch.tensor([2.0, 0.0])
    args = torch.outer(t, torch.tensor([1.0, 1e-2, 1e-4]))
    expected = torch.cat([torch.sin(args), torch.cos(args), torch.zeros(2, 1)], dim=1)
    torch.testing.assert_close(timestep_embedding(t, 7), expected)


def test_sigmas_buffer_is_score_sde_geometric_ladder():
    sigmas = NCSNpp(TINY).sigmas
    assert sigmas.dtype == torch.float64 and sigmas.shape == (1000,)
    assert sigmas[0].item() == pytest.approx(50.0, rel=1e-12) and sigmas[-1].item() == pytest.approx(0.01, rel=1e-12)
    ratios = sigmas[1:] / sigmas[:-1]
    assert torch.allclose(ratios, torch.full_like(ratios, (0.01 / 50) ** (1 / 999)), rtol=1e-12, atol=0)


def test_tiny_forward_shape_determinism_and_dropout():
    torch.manual_seed(0)
    model = NCSNpp(dict(TINY, init_scale=1.0, dropout=0.5)).eval()
    x, time_cond = torch.randn(3, 3, 8, 8), 999 * torch.tensor([0.01, 0.5, 1.0])
    with torch.no_grad():
        out = model(x, time_cond)
        assert out.shape == x.shape and torch.isfinite(out).all()
        assert torch.equal(model(x, time_cond), out)
        assert not torch.equal(model(x, torch.flip(time_cond, [0])), out)  # the time embedding is used
        assert not torch.equal(model.train()(x, time_cond), out)  # dropout only in train mode


def test_scale_by_sigma_and_uncentered_input():
    torch.manual_seed(0)
    base = NCSNpp(dict(TINY, init_scale=1.0)).eval()
    x, time_cond = torch.rand(2, 3, 8, 8), torch.tensor([3.7, 998.0])
    scaled = NCSNpp(dict(TINY, init_scale=1.0, scale_by_sigma=True)).eval()
    uncentered = NCSNpp(dict(TINY, init_scale=1.0, centered=False)).eval()
    scaled.load_state_dict(base.state_dict())
    uncentered.load_state_dict(base.state_dict())
    with torch.no_grad():
        out = base(x, time_cond)
        sigma = base.sigmas[[3, 998]].float()[:, None, None, None]  # labels index sigmas after .long()
        torch.testing.assert_close(scaled(x, time_cond), out / sigma)
        torch.testing.assert_close(uncentered(x, time_cond), base(2 * x - 1, time_cond))


def _capture_blocks(model, x, time_cond):
    """Run the model and record (module, input, output) for every ResNet and attention block."""
    records = []
    hooks = [m.register_forward_hook(lambda mod, args, out: records.append((mod, args[0], out)))
             for m in model.modules() if isinstance(m, (ResnetBlockBigGAN, AttnBlock))]
    with torch.no_grad():
        out = model(x, time_cond)
    for h in hooks:
        h.remove()
    return out, records


def test_init_scale_zero_makes_every_block_its_rescaled_skip_path():
    """init_scale=0: Conv_1 of each block and NIN_3 of each attention start at ~1e-5 (upstream uses scale
    1e-10, not exactly 0), so each block ≈ (skip path)/√2 with skip_rescale, and the output ≈ 0."""
    torch.manual_seed(0)
    model = NCSNpp(TINY).eval()
    conv_1 = model.all_modules[3].Conv_1.weight  # first ResNet block, 16 -> 16 channels, 3x3
    assert 0 < conv_1.abs().max() <= math.sqrt(3e-10 / (16 * 9))
    out, records = _capture_blocks(model, torch.randn(2, 3, 8, 8), torch.tensor([10.0, 900.0]))
    kinds = set()
    for block, x, y in records:
        if isinstance(block, AttnBlock):
            skip, kind = x, "attention"
        elif block.up:
            skip, kind = block.Conv_2(F.interpolate(x, scale_factor=2.0, mode="nearest")), "up"
        elif block.down:
            skip, kind = block.Conv_2(F.avg_pool2d(x, 2)), "down"
        elif hasattr(block, "Conv_2"):
            skip, kind = block.Conv_2(x), "channel change"
        else:
            skip, kind = x, "identity"
        kinds.add(kind)
        torch.testing.assert_close(y, skip / math.sqrt(2.0), atol=1e-4, rtol=1e-4)
    assert kinds == {"attention", "up", "down", "channel change", "identity"}
    # encoder: block, down, block+attention; middle: block, attention, block; decoder: 2 blocks, attention,
    # up, 2 blocks
    assert len(records) == 13
    assert out.abs().max() < 1e-4


def test_ddpm_blocks_sum_without_rescale():
    """The DDPM class: 32-group norms, plain sums (no √2), NIN_0 shortcut on channel changes."""
    torch.manual_seed(0)
    model = NCSNpp(dict(TINY, name="ddpm", nf=32)).eval()
    assert model.all_modules[3].GroupNorm_0.num_groups == 32
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        h = model.all_modules[2](x)  # input conv, after the two time-embedding Linears
        block = model.all_modules[3]
        torch.testing.assert_close(block(h, None), h, atol=1e-4, rtol=1e-4)
        widen = model.all_modules[5]  # first 4px block, 32 -> 64 channels
        h4 = torch.randn(2, 32, 4, 4)
        torch.testing.assert_close(widen(h4, None), widen.NIN_0(h4), atol=1e-4, rtol=1e-4)


def test_fir_resampling_hand_computed():
    taps = (1, 3, 3, 1)
    k = torch.tensor(taps, dtype=torch.float32)
    # Upsampling a unit impulse at pixel (1, 2) spreads the 4x4 kernel (gain 4, so outer/16) centred on
    # output pixels (2..3, 4..5), i.e. rows 1..4 and columns 3..6.
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 1, 2] = 1.0
    expected = torch.zeros(1, 1, 8, 8)
    expected[0, 0, 1:5, 3:7] = torch.outer(k, k) / 16
    torch.testing.assert_close(fir_upsample(x, taps), expected)
    # Downsampling an impulse at (3, 4): output o averages inputs 2o-1..2o+2 with weights (1,3,3,1)/8.
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 3, 4] = 1.0
    expected = torch.zeros(1, 1, 4, 4)
    expected[0, 0, 1:3, 1:3] = torch.tensor([[3.0, 9.0], [1.0, 3.0]]) / 64
    torch.testing.assert_close(fir_downsample(x, taps), expected)
    # Odd taps (1,2,1) pad one pixel before, none after: output o averages inputs 2o-1..2o+1.
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 2, 2] = 1.0
    expected = torch.zeros(1, 1, 2, 2)
    expected[0, 0, 1, 1] = (2 / 4) ** 2
    torch.testing.assert_close(fir_downsample(x, (1, 2, 1)), expected)
    # Box taps reduce to nearest-neighbour upsampling and 2x2 average pooling.
    y = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(fir_upsample(y, (1, 1)), F.interpolate(y, scale_factor=2.0, mode="nearest"))
    torch.testing.assert_close(fir_downsample(y, (1, 1)), F.avg_pool2d(y, 2))
    # The fused conv+downsample pads once: with a centred identity 3x3 conv it is the plain FIR downsample.
    identity = torch.zeros(3, 3, 3, 3)
    identity[range(3), range(3), 1, 1] = 1.0
    torch.testing.assert_close(fir_conv_downsample(y, identity, taps), fir_downsample(y, taps))


def test_fir_ncsnpp_keys_and_forward():
    """vp/cifar10_ncsnpp_continuous layout (FIR, residual input pyramid): fused FIR conv `Conv2d_0`."""
    model = NCSNpp(dict(TINY, fir=True, progressive_input="residual"))
    state = model.state_dict()
    down_conv = [k for k in state if "Conv2d_0" in k]
    # modules: 2 time Linears, input conv, 8px block, down block, then the pyramid's fused FIR conv
    assert down_conv == ["all_modules.5.Conv2d_0.weight", "all_modules.5.Conv2d_0.bias"]
    assert state["all_modules.5.Conv2d_0.weight"].shape == (16, 3, 3, 3)  # image pyramid 3 -> 16 channels
    assert model(torch.randn(1, 3, 8, 8), torch.tensor([500.0])).shape == (1, 3, 8, 8)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"nf": 16, "foo": 1}, "unknown score_sde model config key(s) foo; known keys: name, image_size,"),
        ({"resblock_type": "ResNet"}, "score_sde model config resblock_type='ResNet' is not supported; use one of"),
        ({"name": "ncsnv2_64"}, "score_sde model config name='ncsnv2_64' is not supported; use one of"),
        ({"fir": True, "progressive": "residual"}, "score_sde model config fir=True with an upsampling convolution"),
        ({"image_size": 30}, "score_sde model config image_size=30 must be divisible by 2**(len(ch_mult)-1)=8"),
    ],
)
def test_config_errors_are_one_line(config, message):
    with pytest.raises(DpmsError) as info:
        NCSNpp(config)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)
