"""NoiseSchedule: α, σ, λ and the inverse of λ, against closed forms and the official conventions."""

import math

import pytest
import torch

from dpms import DpmsError, NoiseSchedule

ALL = {
    "linear": NoiseSchedule.linear(),
    "cosine": NoiseSchedule.cosine(),
    "discrete_linear": NoiseSchedule.discrete_linear(1000),
    "discrete_cosine": NoiseSchedule.discrete_cosine(1000),
    "discrete_cosine_4000": NoiseSchedule.discrete_cosine(4000),
}


@pytest.mark.parametrize("name", list(ALL))
def test_inverse_lambda_inverts_lambda(name):
    s = ALL[name]
    t = torch.linspace(s.t_end, s.T, 101, dtype=torch.float64)
    assert torch.allclose(s.inverse_lambda(s.lambda_(t)), t, atol=1e-10, rtol=0)
    lam = s.lambda_(t)
    assert bool((lam[1:] < lam[:-1]).all()), "λ must decrease in t"
    assert torch.allclose(s.alpha(t) ** 2 + s.sigma(t) ** 2, torch.ones_like(t), atol=1e-12)


@pytest.mark.parametrize("name", list(ALL))
def test_dtype_and_device_follow_input(name):
    s = ALL[name]
    for dtype in (torch.float32, torch.float64):
        t = torch.tensor([s.t_end, 0.5, s.T], dtype=dtype)
        for fn in (s.alpha, s.sigma, s.lambda_, s.log_alpha, s.d_log_alpha_dt):
            assert fn(t).dtype == dtype
        assert s.inverse_lambda(s.lambda_(t)).dtype == dtype
    t32 = torch.linspace(s.t_end, s.T, 17, dtype=torch.float32)
    assert torch.allclose(s.lambda_(t32).double(), s.lambda_(t32.double()), atol=1e-4)


def test_linear_closed_form():
    s = NoiseSchedule.linear(0.1, 20.0)
    t = torch.tensor([0.3], dtype=torch.float64)
    log_alpha = -(20.0 - 0.1) / 4 * 0.09 - 0.1 / 2 * 0.3
    assert s.log_alpha(t).item() == pytest.approx(log_alpha, abs=1e-14)
    assert s.lambda_(t).item() == pytest.approx(log_alpha - 0.5 * math.log(1 - math.exp(2 * log_alpha)), abs=1e-12)
    assert (s.T, s.t_end) == (1.0, 1e-3)


def test_cosine_matches_paper():
    s = NoiseSchedule.cosine()
    assert s.T == 0.9946 and s.t_end == 1e-3
    t = torch.tensor([0.5], dtype=torch.float64)
    expected = math.log(math.cos((0.5 + 0.008) / 1.008 * math.pi / 2)) - math.log(math.cos(0.008 / 1.008 * math.pi / 2))
    assert s.log_alpha(t).item() == pytest.approx(expected, abs=1e-14)


def test_discrete_follows_official_conventions():
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    s = NoiseSchedule.discrete(betas=betas)
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    # step n sits at t_n = (n + 1)/N with α_{t_n} = sqrt(ᾱ_n)
    n = torch.tensor([0, 1, 499, 999])
    assert torch.allclose(s.alpha((n + 1).double() / 1000), alphas_cumprod[n].sqrt(), rtol=1e-12)
    assert s.N == 1000 and s.T == 1.0 and s.t_end == pytest.approx(1e-3)
    # the same schedule from alphas_cumprod
    s2 = NoiseSchedule.discrete(alphas_cumprod=alphas_cumprod)
    t = torch.rand(50, dtype=torch.float64) * (1 - 1e-3) + 1e-3
    assert torch.allclose(s.lambda_(t), s2.lambda_(t), atol=1e-10)
    # log α is linear between grid points
    mid = torch.tensor([(1.5 + 1) / 1000], dtype=torch.float64)
    la = s.log_alpha(torch.tensor([2 / 1000, 3 / 1000], dtype=torch.float64))
    assert s.log_alpha(mid).item() == pytest.approx(la.mean().item(), abs=1e-15)


def test_cosine_table_clips_trailing_low_lambda_steps():
    raw = NoiseSchedule.discrete_cosine(1000)
    assert raw.N < 1000  # the last steps of the cosine table have λ < -5.1 and are dropped
    assert raw.lambda_(torch.tensor([1.0], dtype=torch.float64)).item() >= -5.1
    assert raw.t_end == pytest.approx(1 / raw.N)
    assert NoiseSchedule.discrete_linear(1000).N == 1000  # nothing to clip for DDPM's linear table


def test_d_log_alpha_dt_matches_finite_differences():
    for s in (NoiseSchedule.linear(), NoiseSchedule.cosine()):
        t = torch.linspace(0.05, 0.9, 9, dtype=torch.float64)
        h = 1e-6
        fd = (s.log_alpha(t + h) - s.log_alpha(t - h)) / (2 * h)
        assert torch.allclose(s.d_log_alpha_dt(t), fd, rtol=1e-6)
    d = NoiseSchedule.discrete_linear(1000)
    t = torch.tensor([0.2505], dtype=torch.float64)  # inside a segment: the slope of that segment
    fd = (d.log_alpha(t + 1e-5) - d.log_alpha(t - 1e-5)) / 2e-5
    assert d.d_log_alpha_dt(t).item() == pytest.approx(fd.item(), rel=1e-8)


def test_from_spec_and_errors():
    assert NoiseSchedule.from_spec({"type": "discrete_cosine", "N": 4000}).N == ALL["discrete_cosine_4000"].N
    assert NoiseSchedule.from_spec("linear").kind == "linear"
    with pytest.raises(ValueError, match="unknown schedule type"):
        NoiseSchedule.from_spec({"type": "sigmoid"})
    with pytest.raises(ValueError, match="exactly one"):
        NoiseSchedule.discrete()
    assert issubclass(DpmsError, Exception)


@pytest.mark.parametrize("schedule", [NoiseSchedule.discrete_linear(), NoiseSchedule.discrete_cosine(), NoiseSchedule.linear(), NoiseSchedule.cosine()], ids=["dlinear", "dcosine", "linear", "cosine"])
def test_on_grid_serves_grid_points_from_the_precomputed_table(schedule):
    ts = torch.linspace(schedule.T, schedule.t_end, 11, dtype=torch.float64)
    cached = schedule.on_grid(ts)
    for t in ts:  # 0-d views of the grid, as the solvers step over them
        for quantity in ("log_alpha", "alpha", "sigma", "lambda_"):
            torch.testing.assert_close(getattr(cached, quantity)(t), getattr(schedule, quantity)(t), rtol=1e-14, atol=0)
    assert cached.alpha(ts[4]) is not None and cached._cached("alpha", ts[4]) is not None
    other = torch.tensor(0.5, dtype=torch.float64)  # not a grid point: computed as usual
    assert cached._cached("alpha", other) is None
    torch.testing.assert_close(cached.alpha(other), schedule.alpha(other), rtol=0, atol=0)
    assert cached._cached("alpha", ts.float()[2]) is None  # another dtype is another tensor


def test_on_grid_adds_grids_and_serves_their_views_and_whole_tensors():
    schedule = NoiseSchedule.discrete_linear()
    ts = torch.linspace(1.0, 1e-3, 6, dtype=torch.float64)
    mids = torch.rand(5, 2, dtype=torch.float64) * 0.9 + 0.05  # a (steps, 2) table of intermediate times
    cached = schedule.on_grid(ts).on_grid(mids)
    assert len(cached.grid) == 2  # the second call keeps the first grid
    for i in range(5):
        for k in range(2):  # 0-d views of a 2-D grid, recognised by offset
            assert cached._cached("sigma", mids[i, k]) is not None
            torch.testing.assert_close(cached.sigma(mids[i, k]), schedule.sigma(mids[i, k]), rtol=1e-14, atol=0)
    assert cached._cached("lambda", ts[3]) is not None
    torch.testing.assert_close(cached.lambda_(ts), schedule.lambda_(ts), rtol=1e-14, atol=0)  # the whole grid
    assert cached._cached("lambda", ts) is not None and cached._cached("lambda", mids) is not None
    assert cached._cached("lambda", ts[1:]) is None and cached._cached("lambda", mids[:, 0]) is None  # other views
    with pytest.raises(ValueError, match="contiguous"):
        schedule.on_grid(mids.t())
    assert cached.grid[1]["tensor"] is mids  # held, so its storage cannot be reused while cached
