"""wrap_model: model types, time maps, learned σ, guidance and thresholding, checked against exact values."""

import pytest
import torch

import dpms
from dpms import DpmsError, NoiseSchedule, wrap_model
from dpms.models import GaussianMixture


@pytest.fixture(scope="module")
def gmm():
    return GaussianMixture.default(dim=4)


def _inputs(n=5):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 4, generator=g, dtype=torch.float64), torch.rand(n, generator=g, dtype=torch.float64) * 0.9 + 0.05


@pytest.mark.parametrize("model_type", ["noise", "x_start", "v", "score"])
def test_model_types_recover_the_exact_noise(gmm, model_type):
    sch = gmm.schedule
    x, t = _inputs()
    eps = gmm(x, t)
    alpha, sigma = sch.alpha(t)[:, None], sch.sigma(t)[:, None]
    raw = {
        "noise": eps,
        "x_start": (x - sigma * eps) / alpha,
        "v": alpha * eps - sigma * (x - sigma * eps) / alpha,
        "score": -eps / sigma,
    }[model_type]
    net = lambda x_in, t_in: raw  # noqa: E731  (a "network" that predicts the exact quantity)
    fn = wrap_model(net, sch, model_type=model_type, time_map="continuous")
    assert torch.allclose(fn(x, t), eps, atol=1e-10)


def test_time_maps():
    sch = NoiseSchedule.discrete_linear(1000)
    seen = {}
    for time_map in ("discrete", "type1", "type2"):
        fn = wrap_model(lambda x, t_in, m=time_map: seen.__setitem__(m, t_in) or x, sch, time_map=time_map)
        fn(torch.zeros(4, 1), torch.tensor([5e-4, 1e-3, 0.5, 1.0], dtype=torch.float64))
    # below t = 1/N the default map goes negative, Type-1 clamps at 0 (App. D.1)
    assert torch.allclose(seen["discrete"], torch.tensor([-0.5, 0.0, 499.0, 999.0], dtype=torch.float64))
    assert torch.allclose(seen["type1"], torch.tensor([0.0, 0.0, 499.0, 999.0], dtype=torch.float64))
    assert torch.allclose(seen["type2"], torch.tensor([0.4995, 0.999, 499.5, 999.0], dtype=torch.float64))
    got = {}
    fn = wrap_model(lambda x, t_in: got.setdefault("t", t_in) * 0 + x, NoiseSchedule.linear(), time_map="continuous", time_scale=999.0)
    fn(torch.zeros(1, 1), torch.tensor([0.5]))
    assert got["t"].item() == pytest.approx(499.5)
    with pytest.raises(DpmsError, match="needs a discrete schedule"):
        wrap_model(lambda x, t: x, NoiseSchedule.linear(), time_map="discrete")(torch.zeros(1, 1), torch.tensor([0.5]))
    with pytest.raises(DpmsError, match="unknown time map"):
        wrap_model(lambda x, t: x, sch, time_map="type3")


def test_learned_sigma_takes_the_first_channels():
    sch = NoiseSchedule.discrete_linear(1000)
    net = lambda x, t: torch.cat([x * 2, x * 100], dim=1)  # noqa: E731
    fn = wrap_model(net, sch, learned_sigma=True)
    x = torch.randn(2, 3, 4, 4)
    assert torch.equal(fn(x, torch.full((2,), 0.5)), x * 2)


def test_classifier_free_guidance_is_one_batched_call():
    sch = NoiseSchedule.discrete_linear(1000)
    calls = []

    def net(x, t, y):
        calls.append(x.shape[0])
        return x * 0 + y[:, None].to(x.dtype)  # ε = the label, so guidance is easy to compute

    y, null = torch.tensor([3, 5]), torch.tensor([0, 0])
    fn = wrap_model(net, sch, guidance="classifier-free", guidance_scale=1.5, condition=y, unconditional_condition=null)
    eps = fn(torch.zeros(2, 2), torch.full((2,), 0.5))
    assert calls == [4]
    assert torch.allclose(eps[:, 0], 0 + 1.5 * (y.float() - 0))


def test_classifier_guidance_matches_the_analytic_gradient():
    """A linear classifier logits = W x gives ∇ₓ log softmax[y] = W_y − Σ_k p_k W_k in closed form."""
    sch = NoiseSchedule.discrete_linear(1000)
    torch.manual_seed(0)
    w = torch.randn(3, 4)
    classifier = lambda x, t: x @ w.T  # noqa: E731
    net = lambda x, t, y=None: torch.zeros_like(x)  # noqa: E731
    x, t, y = torch.randn(5, 4), torch.full((5,), 0.4), torch.tensor([0, 1, 2, 0, 1])
    fn = wrap_model(net, sch, guidance="classifier", guidance_scale=2.0, classifier=classifier, condition=y)
    with torch.inference_mode():  # the solvers call it in inference mode
        eps = fn(x, t)
    p = torch.softmax(x @ w.T, dim=1)
    grad = w[y] - p @ w
    assert torch.allclose(eps, -2.0 * sch.sigma(t)[:, None] * grad, atol=1e-5)


def test_guidance_changes_samples(gmm):
    sch = gmm.schedule
    classifier = lambda x, t: torch.stack([x[:, 0], -x[:, 0]], dim=1) * 3  # noqa: E731
    y = torch.zeros(64, dtype=torch.long)
    guided = wrap_model(gmm, sch, time_map="continuous", time_scale=1.0, guidance="classifier", guidance_scale=3.0, classifier=classifier, condition=y, condition_to_net=False)
    x_T = gmm.prior(64, torch.Generator().manual_seed(1))
    plain = dpms.sample(gmm, sch, x_T, solver="dpm2m", nfe=20)
    pushed = dpms.sample(guided, sch, x_T, solver="dpm2m", nfe=20)
    assert pushed[:, 0].mean() > plain[:, 0].mean() + 0.1  # class 0 prefers large x[0]


@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_thresholding_bounds_the_data_prediction(gmm, kind):
    sch = gmm.schedule
    x, t = _inputs()
    x = x * 20  # far outside the data range
    fn = wrap_model(gmm, sch, time_map="continuous", time_scale=1.0, thresholding=kind, threshold_ratio=0.9, threshold_max=1.0)
    eps = fn(x, t)
    x0 = (x - sch.sigma(t)[:, None] * eps) / sch.alpha(t)[:, None]
    assert x0.abs().max() <= 1.0 + 1e-9
    raw = (x - sch.sigma(t)[:, None] * gmm(x, t)) / sch.alpha(t)[:, None]
    if kind == "dynamic":  # Imagen: s = max(quantile_0.9 |x0|, 1); x0 ← clip(x0, −s, s)/s
        s = torch.quantile(raw.abs(), 0.9, dim=1).clamp(min=1.0)[:, None]
        assert torch.allclose(x0, raw.clamp(-s, s) / s, atol=1e-6)
    else:
        assert torch.allclose(x0, raw.clamp(-1, 1), atol=1e-9)


def test_thresholding_is_for_the_data_prediction_solvers_only(gmm):
    sch = gmm.schedule
    fn = wrap_model(gmm, sch, time_map="continuous", time_scale=1.0, thresholding="static", threshold_max=0.5)
    x_T = gmm.prior(16, torch.Generator().manual_seed(2))
    with pytest.raises(DpmsError, match="thresholding clips the data prediction, which solver 'dpm3' does not use; use one of dpmpp2s"):
        dpms.sample(fn, sch, x_T, solver="dpm3", nfe=10)
    clipped = dpms.sample(fn, sch, x_T, solver="dpmpp2m", nfe=10)
    plain = dpms.sample(gmm, sch, x_T, solver="dpmpp2m", nfe=10)
    # the last data-prediction step returns (σ_t/σ_s) x + (1 − σ_t/σ_s) x̂₀ with |x̂₀| ≤ 0.5: the result is pulled inwards
    assert clipped.abs().max() < plain.abs().max()


class _TinyNet(torch.nn.Module):
    """conv → time-modulated → conv; the time enters through a float32-computed embedding, as in the real networks."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv_in, self.conv_out = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 3, 3, padding=1)
        self.temb = torch.nn.Linear(4, 8)

    def forward(self, x, t):
        angles = t.float()[:, None] * torch.arange(1, 5, dtype=torch.float32)[None] / 1000
        emb = self.temb(torch.sin(angles).to(x.dtype))
        return self.conv_out(torch.nn.functional.silu(self.conv_in(x) + emb[:, :, None, None]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_weights_get_half_precision_inputs(dtype):
    """A network cast to fp16/bf16 (load(..., dtype=...)) runs on x cast to its dtype; ε returns in x's dtype."""
    sch = NoiseSchedule.discrete_linear(1000)
    net32 = _TinyNet().eval()
    net16 = _TinyNet().eval().to(dtype)
    x, t = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([0.1, 0.7])
    with torch.no_grad():
        expected = wrap_model(net32, sch)(x, t)
        got = wrap_model(net16, sch)(x, t)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0.05, atol=0.02)


class _LinearClassifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x, t):
        return self.head(x)


def test_half_precision_classifier_guides_like_the_float32_one():
    sch = NoiseSchedule.discrete_linear(1000)
    net = lambda x, t, y=None: torch.zeros_like(x)  # noqa: E731
    x, t, y = torch.randn(5, 4, generator=torch.Generator().manual_seed(2)), torch.full((5,), 0.4), torch.tensor([0, 2, 1, 0, 2])
    guided = {
        dtype: wrap_model(net, sch, guidance="classifier", guidance_scale=2.0, classifier=_LinearClassifier().to(dtype), condition=y)(x, t)
        for dtype in (torch.float32, torch.bfloat16)
    }
    assert guided[torch.bfloat16].dtype == torch.float32
    torch.testing.assert_close(guided[torch.bfloat16], guided[torch.float32], rtol=0.05, atol=0.01)


def test_autocast_returns_the_input_dtype():
    sch = NoiseSchedule.discrete_linear(1000)
    net = torch.nn.Conv2d(3, 3, 1)
    fn = wrap_model(net, sch, autocast_dtype=torch.bfloat16, model_kwargs={})
    fn_net = lambda x, t: net(x)  # noqa: E731
    fn = wrap_model(fn_net, sch, autocast_dtype=torch.bfloat16)
    out = fn(torch.randn(2, 3, 4, 4), torch.full((2,), 0.5))
    assert out.dtype == torch.float32
