"""The shipped digits models (checkpoints/digits): data, feature network, reference stats, DDPM weights,
and the seeded training loop."""

import io
import json

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from dpms import digits
from dpms.cli import main
from dpms.evaluation import frechet_distance
from dpms.models import build
from dpms.training.diffusion import WeightEMA, simple_loss, step_coefficients

DIR = digits.DIGITS_DIR


def card(name: str) -> dict:
    return json.loads((DIR / name).read_text())


# ------------------------------------------------------------------------------------------- data
def test_images_are_sklearn_digits_scaled_to_minus_one_one():
    images, labels = digits.load_digits_images(), digits.load_digits_labels()
    bunch = load_digits()
    assert images.shape == (1797, 1, 8, 8) and images.dtype == torch.float32
    assert labels.shape == (1797,) and labels.dtype == torch.int64
    assert float(images.min()) == -1.0 and float(images.max()) == 1.0
    np.testing.assert_allclose(images[:, 0].numpy(), bunch.images / 8.0 - 1.0, atol=1e-6)
    assert labels.tolist() == bunch.target.tolist()


def test_split_is_fixed_disjoint_and_covers_everything():
    train, held_out = digits.digits_split()
    assert (len(train), len(held_out)) == (1437, 360)
    assert sorted(train.tolist() + held_out.tolist()) == list(range(1797))
    assert torch.equal(held_out, torch.from_numpy(np.sort(np.random.RandomState(0).permutation(1797)[:360])))
    # every class is represented in the held-out split
    assert torch.bincount(digits.load_digits_labels()[held_out], minlength=10).min() >= 20


# ------------------------------------------------------------------------------- feature network
def test_shipped_classifier_matches_its_card_and_is_accurate():
    info = card("digits_classifier.json")
    assert digits.sha256_of(DIR / digits.CLASSIFIER_FILE) == info["sha256"]
    model = digits.load_digits_classifier()
    images, labels = digits.load_digits_images(), digits.load_digits_labels()
    _, held_out = digits.digits_split()
    accuracy = digits.classifier_accuracy(model, images[held_out], labels[held_out])
    assert info["held_out_accuracy"] >= 0.97
    assert accuracy >= info["held_out_accuracy"] - 0.005


def test_reference_stats_are_the_features_of_all_real_digits():
    mu, sigma = digits.load_digits_stats()
    assert mu.shape == (digits.FEATURE_DIM,) and sigma.shape == (digits.FEATURE_DIM, digits.FEATURE_DIM)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    np.testing.assert_array_equal(sigma, sigma.T)
    eigenvalues = np.linalg.eigvalsh(sigma)
    assert eigenvalues.min() > 0  # pre-ReLU features: full rank, the Fréchet distance sees every direction
    expected_mu, expected_sigma = digits.feature_statistics(digits.load_digits_classifier().features,
                                                            digits.load_digits_images())
    np.testing.assert_allclose(mu, expected_mu, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sigma, expected_sigma, rtol=1e-4, atol=1e-4)
    assert digits.sha256_of(DIR / digits.STATS_FILE) == card("digits_classifier.json")["stats_sha256"]


def test_digits_features_extractor():
    extractor = digits.digits_features()
    assert extractor.name == "FD (digits features)"
    assert extractor.dims == digits.FEATURE_DIM
    x = digits.load_digits_images()[:7]
    with torch.no_grad():
        expected = digits.load_digits_classifier().features(x)
    torch.testing.assert_close(extractor(x).float(), expected)


def test_frechet_distance_of_a_held_out_split_is_small_and_of_noise_is_large():
    classifier = digits.load_digits_classifier()
    images = digits.load_digits_images()
    train, held_out = digits.digits_split()
    mu, sigma = digits.load_digits_stats()
    held = frechet_distance(*digits.feature_statistics(classifier.features, images[held_out]), mu, sigma)
    noise = torch.randn((360, 1, 8, 8), generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    far = frechet_distance(*digits.feature_statistics(classifier.features, noise), mu, sigma)
    assert 0 < held < far / 20


# ------------------------------------------------------------------------------ diffusion model
def test_shipped_ddpm_loads_strictly_into_the_digits_architecture():
    info = card("digits_ddpm.json")
    assert digits.sha256_of(DIR / digits.DDPM_FILE) == info["sha256"]
    assert info["config"] == digits.DIGITS_DDPM_CONFIG and info["schedule"] == digits.DIGITS_SCHEDULE_SPEC
    state = torch.load(DIR / digits.DDPM_FILE, map_location="cpu", weights_only=True)
    assert all(v.dtype == torch.float32 for v in state.values())
    with torch.device("meta"):
        net = build("ddpm", digits.DIGITS_DDPM_CONFIG)
    assert list(state) == list(net.state_dict())
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert info["parameters"] == sum(v.numel() for v in state.values())


@pytest.fixture(scope="module")
def ddpm():
    return digits.load_digits_ddpm()


def test_shipped_ddpm_predicts_the_noise_of_real_digits(ddpm):
    """At mid noise levels the trivial predictor (0, or x_n/σ_n) has MSE ≈ 1; the trained one is far below."""
    alphas, sigmas = step_coefficients(digits.digits_schedule())
    x0 = digits.load_digits_images()[:256]
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(x0.shape, generator=generator)
    with torch.no_grad():
        mse = {n: simple_loss(ddpm, x0, torch.full((256,), n), noise, alphas, sigmas).item() for n in (200, 500, 800)}
    assert mse[200] < 0.25 and mse[500] < 0.35 and mse[800] < 0.6, mse


def test_shipped_ddpm_samples_are_recognisable_digits(ddpm):
    samples = digits.sample_digits(ddpm, 100, solver="ddim", nfe=20, seed=123)
    probabilities = torch.softmax(digits.load_digits_classifier()(samples), dim=1)
    confident = (probabilities.max(1).values >= 0.9).float().mean().item()
    counts = torch.bincount(probabilities.argmax(1), minlength=10)
    assert confident >= 0.8, confident
    assert (counts > 0).sum() >= 9 and counts.max() <= 25, counts.tolist()


def test_shipped_ddpm_card_records_training_and_the_sample_check():
    info = card("digits_ddpm.json")
    check = info["check_ddim50_500_samples"]
    assert info["weights"] == "EMA" and info["steps"] > 0 and info["final_loss_last_500_steps"] < 0.5
    assert check["fd_samples_vs_real"] < 10 * check["fd_floor_held_out_vs_rest"]
    assert (DIR / digits.SAMPLES_FILE).is_file()


# ------------------------------------------------------------------------------------ training
def test_step_coefficients_are_sqrt_alphas_cumprod_of_ddpm_linear_betas():
    alphas, sigmas = step_coefficients(digits.digits_schedule(), torch.float64)
    alphas_cumprod = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    torch.testing.assert_close(alphas**2, alphas_cumprod, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(sigmas**2, 1 - alphas_cumprod, rtol=1e-10, atol=1e-12)


def test_weight_ema_warms_up_then_averages():
    net = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.constant_(net.weight, 1.0)
    ema = WeightEMA(net, decay=0.5)
    torch.nn.init.constant_(net.weight, 3.0)
    ema.update(net)  # warm-up decay min(0.5, 1/10) = 0.1: 0.1·1 + 0.9·3
    assert ema.state_dict()["weight"].item() == pytest.approx(2.8)
    torch.nn.init.constant_(net.weight, 0.0)
    ema.update(net)  # decay min(0.5, 2/11) = 2/11
    assert ema.state_dict()["weight"].item() == pytest.approx(2.8 * 2 / 11)


def test_training_is_seeded_and_lowers_the_loss():
    images = digits.load_digits_images()[:32]
    kwargs = dict(steps=5, batch_size=16, lr=1e-3, warmup_steps=0, images=images, progress=False)
    first, _ = digits.train_digits_ddpm(seed=3, **kwargs)
    second, _ = digits.train_digits_ddpm(seed=3, **kwargs)
    assert first.losses == second.losses
    assert all(torch.equal(first.ema_state_dict[k], second.ema_state_dict[k]) for k in first.ema_state_dict)

    torch.manual_seed(3)
    initial = digits.build_digits_ddpm().eval()
    trained = digits.build_digits_ddpm().eval()
    trained.load_state_dict(first.ema_state_dict)
    alphas, sigmas = step_coefficients(digits.digits_schedule())
    generator = torch.Generator().manual_seed(0)
    steps = torch.randint(0, 1000, (32,), generator=generator)
    noise = torch.randn(images.shape, generator=generator)
    with torch.no_grad():
        before = simple_loss(initial, images, steps, noise, alphas, sigmas).item()
        after = simple_loss(trained, images, steps, noise, alphas, sigmas).item()
    assert after < 0.6 * before, (before, after)


def test_cli_trains_the_classifier_and_writes_weights_card_and_stats(tmp_path):
    threads = torch.get_num_threads()
    try:
        assert main(["train", "digits-classifier", "--epochs", "1", "--out", str(tmp_path), "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)  # the command sets the process-wide thread count
    info = json.loads((tmp_path / "digits_classifier.json").read_text())
    assert info["epochs"] == 1 and info["sha256"] == digits.sha256_of(tmp_path / digits.CLASSIFIER_FILE)
    assert info["held_out_accuracy"] > 0.5  # one epoch already learns most digits
    mu, sigma = digits.load_digits_stats(tmp_path)
    assert mu.shape == (128,) and sigma.shape == (128, 128)


# ------------------------------------------------------------------------------------ evaluation
@pytest.fixture(scope="module")
def wild_samples():
    """All real digits, a few with a pixel far outside [−1, 1] (as 2.4 % of the shipped model's DDIM-50 samples)."""
    samples = digits.load_digits_images().clone()
    samples[::40, 0, 2, 3] = -9.8
    samples[5::40, 0, 4, 4] = 2.5
    return samples


def test_evaluation_measures_the_8_bit_images_as_the_bench_does(wild_samples):
    """The FD is that of what the bench's digits metric sees: to_uint8 with the preset's convention, then
    the feature extractor's from_uint8; the raw floats' FD is reported apart, labelled."""
    from dpms.images import to_uint8
    from dpms.models.checkpoints import get_preset

    classifier = digits.load_digits_classifier()
    result = digits.evaluate_digits_samples(wild_samples, classifier)
    features = digits.digits_features().from_uint8(to_uint8(wild_samples, get_preset("digits").uint8)).double().numpy()
    mu, sigma = digits.feature_statistics(classifier.features, digits.load_digits_images())
    expected = frechet_distance(features.mean(0), np.cov(features, rowvar=False), mu, sigma)
    raw = frechet_distance(*digits.feature_statistics(classifier.features, wild_samples), mu, sigma)
    assert result["fd_samples_vs_real"] == pytest.approx(expected, rel=1e-6)
    assert result["fd_samples_vs_real_unquantised"] == pytest.approx(raw, rel=1e-6)
    assert expected < 1 < raw and raw > 20 * expected, (expected, raw)  # wild pixels move the raw FD, not the measured one
    assert "8-bit" in result["quantisation"] and "to_uint8" in result["quantisation"]
    assert result["fraction_samples_beyond_1.5"] == pytest.approx(len(range(0, 1797, 40)) * 2 / 1797)


def test_module_doc_points_at_files_that_exist():
    import re

    root = DIR.parent.parent
    paths = re.findall(r"checkpoints/[\w./-]*\w", digits.__doc__)
    assert paths and all((root / path).exists() for path in paths), paths


def test_training_reports_seconds_per_step_and_total_wall_time(tmp_path):
    """`dpms train digits` prints s/step and the whole run's wall time, and records them in the card."""
    import io

    from rich.console import Console

    out = io.StringIO()
    card = digits.reproduce_digits_ddpm(steps=2, directory=tmp_path, check_samples=10, console=Console(file=out, width=200))
    printed = out.getvalue()
    assert card["seconds_per_step"] == pytest.approx(card["wall_time_s"] / 2, abs=0.06)
    assert card["total_wall_time_s"] >= card["wall_time_s"] + card["check_wall_time_s"] - 0.2
    assert "trained 2 steps in" in printed and "s/step" in printed and "total wall time" in printed
    assert "quantised to 8 bits" in printed
    assert json.loads((tmp_path / "digits_ddpm.json").read_text())["seconds_per_step"] == card["seconds_per_step"]
    assert "check_ddim50_10_samples" in card


def test_check_only_redoes_the_cards_sample_check_without_training(tmp_path, capsys):
    """`dpms train digits --check-only` re-measures the weights already in --out and rewrites only the check."""
    from rich.console import Console

    digits.reproduce_digits_ddpm(steps=2, directory=tmp_path, check_samples=10, console=Console(file=io.StringIO()))
    weights = (tmp_path / "digits_ddpm.pt").read_bytes()
    before = json.loads((tmp_path / "digits_ddpm.json").read_text())
    del before["check_ddim50_10_samples"]
    (tmp_path / "digits_ddpm.json").write_text(json.dumps(before))
    assert main(["train", "digits", "--check-only", "--check-samples", "12", "--out", str(tmp_path)]) == 0
    after = json.loads((tmp_path / "digits_ddpm.json").read_text())
    assert (tmp_path / "digits_ddpm.pt").read_bytes() == weights
    assert after["check_ddim50_12_samples"]["num_samples"] == 12 and after["wall_time_s"] == before["wall_time_s"]
    assert "quantised to 8 bits" in capsys.readouterr().out
    assert main(["train", "digits", "--check-only", "--out", str(tmp_path / "none")]) == 2
