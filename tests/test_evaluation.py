"""dpms.evaluation against pytorch-fid: Fréchet distance, streaming statistics, the offline FID
Inception pipeline (with a random-weight network of the same architecture), stats files and the
`dpms stats` / `dpms fid` commands. Nothing is downloaded."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_fid import fid_score
from pytorch_fid import inception as pf_inception
from torch import nn

from dpms.cli import main
from dpms.errors import DpmsError, MissingFileError
from dpms.evaluation import (
    FeatureStats,
    GaussianStats,
    IdentityFeatures,
    InceptionFeatures,
    ModuleFeatures,
    compute_stats,
    fid_between,
    frechet_distance,
    load_stats,
)
from dpms.evaluation import inception as dpms_inception
from dpms.evaluation.inception import FID_WEIGHTS_FILE, FID_WEIGHTS_URL, find_inception_weights

from random_inception import save_random_fid_inception


def pytorch_fid_distance(*args) -> float:
    with warnings.catch_warnings():  # pytorch-fid passes scipy's deprecated `disp`
        warnings.simplefilter("ignore")
        return float(fid_score.calculate_frechet_distance(*args))


def random_gaussian_stats(rng, dims, num):
    x = rng.normal(size=(num, dims)) @ rng.normal(size=(dims, dims)) + rng.normal(size=dims)
    return x.mean(0), np.cov(x, rowvar=False)


# ------------------------------------------------------------------------------------ Fréchet
@pytest.mark.parametrize("dims", [2, 3, 5, 32])
def test_frechet_distance_is_pytorch_fids_float(dims):
    rng = np.random.default_rng(dims)
    mu1, sigma1 = random_gaussian_stats(rng, dims, 3 * dims + 5)
    mu2, sigma2 = random_gaussian_stats(rng, dims, 2 * dims + 7)
    ours = frechet_distance(mu1, sigma1, mu2, sigma2)
    assert ours == pytorch_fid_distance(mu1, sigma1, mu2, sigma2)
    assert ours > 0
    assert abs(frechet_distance(mu1, sigma1, mu1, sigma1)) < 1e-9 * np.trace(sigma1)


def test_frechet_distance_in_one_dimension_is_the_closed_form():
    # pytorch-fid itself fails here with scipy ≥ 1.16 (sqrtm of a 1×1 matrix returns no error estimate).
    # Two 1-d Gaussians: d² = (μ₁ − μ₂)² + (s₁ − s₂)² with s the standard deviations.
    assert frechet_distance(np.array([0.5]), np.array([[4.0]]), np.array([-1.0]), np.array([[9.0]])) == 1.5**2 + 1.0


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")
def test_frechet_distance_singular_product_takes_the_eps_path_like_pytorch_fid():
    # [[0, 1], [0, 0]] has no square root: sqrtm gives inf, both add 1e-6·I to the covariances.
    mu, nilpotent, identity = np.zeros(2), np.array([[0.0, 1.0], [0.0, 0.0]]), np.eye(2)
    with pytest.warns(RuntimeWarning, match="singular covariance product; adding 1e-06"):
        ours = frechet_distance(mu, nilpotent, mu, identity)
    assert ours == pytorch_fid_distance(mu, nilpotent, mu, identity)


def test_frechet_distance_rejects_a_complex_root_and_mismatched_sizes():
    mu = np.zeros(2)
    with pytest.raises(ValueError, match="Imaginary component 1.0"):
        pytorch_fid_distance(mu, np.diag([1.0, -1.0]), mu, np.eye(2))
    with pytest.raises(DpmsError, match="^Fréchet distance: the covariance square root has an imaginary component 1;"):
        frechet_distance(mu, np.diag([1.0, -1.0]), mu, np.eye(2))
    with pytest.raises(DpmsError, match=r"^cannot compare statistics of different feature sizes: mean \(2,\) vs \(3,\)"):
        frechet_distance(mu, np.eye(2), np.zeros(3), np.eye(3))


# ------------------------------------------------------------------------------------ FeatureStats
def test_feature_stats_equal_numpy_and_merge_and_resume():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(301, 9)) * rng.uniform(0.1, 3, size=9) + rng.normal(size=9) * 5
    one_pass = FeatureStats(9)
    for k, batch in enumerate(np.array_split(features, 7)):  # uneven batches, numpy and torch inputs
        one_pass.update(torch.from_numpy(batch) if k % 2 else batch)
    np.testing.assert_allclose(one_pass.mu, features.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(one_pass.sigma, np.cov(features, rowvar=False), rtol=1e-10, atol=1e-12)
    assert one_pass.num == 301

    first, second = FeatureStats().update(features[:120]), FeatureStats(9).update(features[120:])
    merged = FeatureStats.from_state_dict(first.state_dict()).merge(FeatureStats.from_state_dict(second.state_dict()))
    np.testing.assert_allclose(merged.mu, features.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(merged.sigma, np.cov(features, rowvar=False), rtol=1e-10, atol=1e-12)
    assert merged.num == 301 and FeatureStats().merge(merged).num == 301
    with pytest.raises(DpmsError, match="^features have 4 dimensions but these statistics hold 9$"):
        merged.update(features[:, :4])
    with pytest.raises(DpmsError, match="^the covariance needs at least 2 samples, got 1$"):
        FeatureStats(9).update(features[:1]).sigma


def test_stats_npz_round_trip_foreign_files_and_errors(tmp_path):
    rng = np.random.default_rng(1)
    stats = FeatureStats().update(rng.normal(size=(40, 6)))
    stats.save(tmp_path / "ours.npz")
    loaded = load_stats(tmp_path / "ours.npz")
    assert np.array_equal(loaded.mu, stats.mu) and np.array_equal(loaded.sigma, stats.sigma) and loaded.num == 40
    with np.load(tmp_path / "ours.npz") as f:
        assert sorted(f.files) == ["mu", "num", "sigma"]

    # The published files (TTUR, pytorch-fid --save-stats) hold float32 mu and sigma only: kept as stored.
    mu, sigma = rng.normal(size=6).astype(np.float32), np.eye(6, dtype=np.float32)
    np.savez_compressed(tmp_path / "fid_stats_foreign.npz", mu=mu, sigma=sigma)
    foreign = load_stats(tmp_path / "fid_stats_foreign.npz")
    assert foreign.mu.dtype == np.float32 and np.array_equal(foreign.sigma, sigma) and foreign.num is None

    np.savez(tmp_path / "no_sigma.npz", mu=mu, pool_3=sigma)
    with pytest.raises(DpmsError) as missing:
        load_stats(tmp_path / "no_sigma.npz")
    assert str(missing.value) == (f"{tmp_path / 'no_sigma.npz'} has no 'sigma' array (found: mu, pool_3); expected a "
                                  "statistics file from `dpms stats` or `pytorch_fid --save-stats`")
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 this is not a zip archive")
    with pytest.raises(DpmsError, match=rf"^{tmp_path / 'corrupt.npz'} is not a readable \.npz file \(.*\); recreate it"):
        load_stats(tmp_path / "corrupt.npz")
    np.save(tmp_path / "array.npy", mu)
    (tmp_path / "array.npy").rename(tmp_path / "array.npz")
    with pytest.raises(DpmsError, match="holds a single array, not an .npz archive; recreate it with `dpms stats`$"):
        load_stats(tmp_path / "array.npz")
    np.savez(tmp_path / "bad_shape.npz", mu=mu, sigma=np.eye(5))
    with pytest.raises(DpmsError, match=r"'mu' has shape \(6,\) and 'sigma' \(5, 5\); expected \(D,\) and \(D, D\)$"):
        load_stats(tmp_path / "bad_shape.npz")
    with pytest.raises(MissingFileError, match="statistics file .*nope.npz not found; create it with `dpms stats"):
        load_stats(tmp_path / "nope.npz")
    for error in ("corrupt.npz", "no_sigma.npz", "bad_shape.npz"):
        with pytest.raises(DpmsError) as e:
            load_stats(tmp_path / error)
        assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------ small extractors
def write_pngs(folder, images_uint8_nhwc):
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images_uint8_nhwc):
        Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(folder / f"{i:03d}.png")


def test_module_features_on_a_folder_an_npz_and_tensors_agree(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.Tanh(), nn.Linear(12, 5))
    extractor = ModuleFeatures(net, name="FD (test features)")
    assert (extractor.name, extractor.dims) == ("FD (test features)", 5)
    images = np.random.default_rng(2).integers(0, 256, size=(11, 8, 8, 1), dtype=np.uint8)
    write_pngs(tmp_path / "pngs", images)  # grayscale files stay one channel for this extractor
    np.savez(tmp_path / "samples.npz", samples=images)
    floats = torch.from_numpy(images).permute(0, 3, 1, 2).double().div(127.5).sub(1.0).float()
    with torch.no_grad():
        expected = net(floats).double().numpy()
    for source in (tmp_path / "pngs", tmp_path / "samples.npz", torch.from_numpy(images), floats):
        stats = compute_stats(source, extractor, batch_size=4)
        np.testing.assert_allclose(stats.mu, expected.mean(0), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(stats.sigma, np.cov(expected, rowvar=False), rtol=1e-5, atol=1e-6)


def test_identity_features_and_fid_between_sources(tmp_path):
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(50, 3)), rng.normal(size=(60, 3)) + 0.5
    extractor = IdentityFeatures(3)
    assert (extractor.name, extractor.dims) == ("FD (exact features)", 3)
    assert extractor(torch.from_numpy(a)).dtype == torch.float64
    np.savez(tmp_path / "a.npz", samples=a)
    GaussianStats(b.mean(0), np.cov(b, rowvar=False)).save(tmp_path / "b_stats.npz")
    expected = pytorch_fid_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    for samples in (tmp_path / "a.npz", torch.from_numpy(a), a):
        assert fid_between(samples, tmp_path / "b_stats.npz", extractor) == pytest.approx(expected, rel=1e-10)
    with pytest.raises(DpmsError, match="^FD \\(exact features\\) expects samples of 3 numbers, got 4$"):
        compute_stats(rng.normal(size=(5, 4)), extractor)


def test_image_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DpmsError, match="empty holds no image files"):
        compute_stats(tmp_path / "empty", IdentityFeatures())
    write_pngs(tmp_path / "mixed", [np.zeros((4, 4, 3), np.uint8)])
    Image.fromarray(np.zeros((5, 4, 3), np.uint8)).save(tmp_path / "mixed" / "001.png")
    with pytest.raises(DpmsError, match=r"001.png is 4×5×3 but earlier images are 4×4×3; all images must have one size$"):
        compute_stats(tmp_path / "mixed", IdentityFeatures())


# ------------------------------------------------------------------------------------ FID Inception
@pytest.fixture(scope="module")
def random_inception(tmp_path_factory):
    """A random-weight FID Inception saved where dpms and torch.hub look: TORCH_HOME/hub/checkpoints."""
    torch_home = tmp_path_factory.mktemp("torch_home")
    path = torch_home / "hub" / "checkpoints" / FID_WEIGHTS_FILE
    return torch_home, path, save_random_fid_inception(path)


@pytest.fixture
def inception_home(random_inception, monkeypatch):
    torch_home, path, sha256 = random_inception
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.delenv("DPMS_INCEPTION", raising=False)
    monkeypatch.setattr(dpms_inception, "FID_WEIGHTS_SHA256", sha256)
    return path


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")
def test_inception_stats_and_fid_equal_pytorch_fids(inception_home, tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
    images[5] = images[5, :, :, :1]  # one gray image, written as a grayscale file
    write_pngs(tmp_path / "pngs", images[:5])
    Image.fromarray(images[5, :, :, 0]).save(tmp_path / "pngs" / "005.png")

    extractor = InceptionFeatures(device="cpu")  # found in $TORCH_HOME/hub/checkpoints
    assert (extractor.name, extractor.dims, extractor.weights_path) == ("FID (Inception)", 2048, inception_home)
    ours = compute_stats(tmp_path / "pngs", extractor, batch_size=4)

    # pytorch-fid's own wrapper with the same weights: its download is replaced by reading our file.
    monkeypatch.setattr(pf_inception, "load_state_dict_from_url",
                        lambda url, progress=True: torch.load(inception_home, weights_only=True))
    oracle = pf_inception.InceptionV3([pf_inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
    files = sorted((tmp_path / "pngs").glob("*.png"))
    # calculate_activation_statistics is exactly these three lines; the activations are kept for below.
    activations = fid_score.get_activations(files, oracle, batch_size=4, dims=2048, device="cpu", num_workers=0)
    mu, sigma = np.mean(activations, axis=0), np.cov(activations, rowvar=False)
    assert ours.num == 6 and np.abs(mu).mean() > 1  # the calibrated network's features do not vanish
    # Same float32 activations (same ops, same batches); only the float64 summation order differs.
    np.testing.assert_allclose(ours.mu, mu, rtol=1e-12, atol=1e-12 * np.abs(mu).max())
    np.testing.assert_allclose(ours.sigma, sigma, rtol=1e-9, atol=1e-11 * np.abs(sigma).max())

    # A point-mass reference (Σ = 0) keeps the 2048-d matrix square root real and several times
    # cheaper than for two full covariances; sqrtm itself is compared with pytorch-fid's above.
    reference_mu = mu + rng.normal(size=2048) * 0.1
    np.savez_compressed(tmp_path / "ref.npz", mu=reference_mu, sigma=np.zeros((2048, 2048)))
    expected = pytorch_fid_distance(mu, sigma, reference_mu, np.zeros((2048, 2048)))
    assert fid_between(ours, tmp_path / "ref.npz") == pytest.approx(expected, rel=1e-12)

    # The sampler's float convention ([-1, 1] NCHW) gives pytorch-fid's features of the 8-bit image.
    floats = torch.from_numpy(images[:1]).permute(0, 3, 1, 2).float() / 127.5 - 1
    torch.testing.assert_close(extractor(floats).double(), torch.from_numpy(activations[:1]),
                               rtol=1e-5, atol=1e-6 * np.abs(activations).max())


def test_inception_weights_lookup_order(tmp_path, monkeypatch):
    for name in ("explicit", "env", "hub/checkpoints"):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / FID_WEIGHTS_FILE).write_bytes(b"x")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("DPMS_INCEPTION", raising=False)
    assert find_inception_weights() == tmp_path / "hub/checkpoints" / FID_WEIGHTS_FILE
    monkeypatch.setenv("DPMS_INCEPTION", str(tmp_path / "env"))
    assert find_inception_weights() == tmp_path / "env" / FID_WEIGHTS_FILE
    assert find_inception_weights(tmp_path / "explicit" / FID_WEIGHTS_FILE) == tmp_path / "explicit" / FID_WEIGHTS_FILE
    with pytest.raises(MissingFileError) as missing:
        find_inception_weights(tmp_path / "elsewhere.pth")
    assert str(missing.value) == (
        f"FID Inception weights {FID_WEIGHTS_FILE} not found at {tmp_path / 'elsewhere.pth'} (--inception-weights); "
        f"download {FID_WEIGHTS_URL} into {tmp_path / 'hub' / 'checkpoints'}/, or pass --inception-weights PATH "
        "or set $DPMS_INCEPTION")


def test_missing_and_wrong_inception_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("DPMS_INCEPTION", raising=False)
    expected_place = tmp_path / "hub" / "checkpoints" / FID_WEIGHTS_FILE
    with pytest.raises(MissingFileError) as missing:
        InceptionFeatures()
    assert str(missing.value).startswith(f"FID Inception weights {FID_WEIGHTS_FILE} not found at {expected_place} "
                                         "(the torch hub folder); download")
    expected_place.parent.mkdir(parents=True)
    expected_place.write_bytes(b"not the weights")
    with pytest.raises(DpmsError) as wrong:
        InceptionFeatures()
    assert str(wrong.value) == (f"{expected_place} has sha256 35245741e72e29ed…, not that of the FID Inception weights "
                                f"(6726825d0af5f729…); replace it with {FID_WEIGHTS_URL}")


# ------------------------------------------------------------------------------------ CLI
def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_missing_inputs_fail_with_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("DPMS_INCEPTION", raising=False)
    code, _, err = run_cli(capsys, "stats", tmp_path / "nope", "--out", tmp_path / "s.npz")
    assert (code, err) == (2, f"error: {tmp_path / 'nope'} not found; pass a folder of images, a samples .npz or a "
                              "statistics .npz\n")
    code, _, err = run_cli(capsys, "fid", tmp_path / "nope.npz", tmp_path / "ref.npz")
    assert code == 2 and err.startswith(f"error: {tmp_path / 'nope.npz'} not found") and err.count("\n") == 1

    write_pngs(tmp_path / "pngs", np.zeros((2, 4, 4, 3), np.uint8))
    code, _, err = run_cli(capsys, "fid", tmp_path / "pngs", tmp_path / "ref.npz")
    assert (code, err) == (2, f"error: {tmp_path / 'ref.npz'} not found; pass a folder of images, a samples .npz or a "
                              "statistics .npz\n")
    code, _, err = run_cli(capsys, "stats", tmp_path / "pngs", "--out", tmp_path / "s.txt")
    assert (code, err) == (2, f"error: --out must end in .npz, got {tmp_path / 's.txt'}\n")

    def no_reading(*args):
        raise AssertionError("images were read before the weights were found")

    monkeypatch.setattr("dpms.evaluation.sources.read_image", no_reading)
    code, _, err = run_cli(capsys, "stats", tmp_path / "pngs", "--out", tmp_path / "s.npz")
    assert code == 2 and err.startswith(f"error: FID Inception weights {FID_WEIGHTS_FILE} not found at "
                                        f"{tmp_path / 'torch' / 'hub' / 'checkpoints' / FID_WEIGHTS_FILE}")
    assert err.count("\n") == 1


def test_cli_fid_checks_reference_dims_before_reading_images(inception_home, tmp_path, capsys, monkeypatch):
    write_pngs(tmp_path / "pngs", np.zeros((2, 4, 4, 3), np.uint8))
    np.savez(tmp_path / "ref3.npz", mu=np.zeros(3), sigma=np.eye(3))

    def no_reading(*args):
        raise AssertionError("images were read before the reference was checked")

    monkeypatch.setattr("dpms.evaluation.sources.read_image", no_reading)
    code, _, err = run_cli(capsys, "fid", tmp_path / "pngs", tmp_path / "ref3.npz")
    assert (code, err) == (2, f"error: {tmp_path / 'ref3.npz'} holds 3-d statistics but FID (Inception) gives 2048-d "
                              "features; use statistics of the same feature network\n")


def test_cli_stats_and_fid_with_exact_features(tmp_path, capsys):
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(80, 4)), rng.normal(size=(70, 4)) * 1.5
    np.savez(tmp_path / "a.npz", samples=a)
    np.savez(tmp_path / "b.npz", samples=b)
    code, out, _ = run_cli(capsys, "stats", tmp_path / "b.npz", "--out", tmp_path / "b_stats.npz", "--features", "exact")
    assert (code, out) == (0, f"70 samples, 4-d features → {tmp_path / 'b_stats.npz'}\n")
    b_stats = load_stats(tmp_path / "b_stats.npz")
    np.testing.assert_allclose(b_stats.sigma, np.cov(b, rowvar=False), rtol=1e-10, atol=1e-12)
    expected = pytorch_fid_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    code, out, _ = run_cli(capsys, "fid", tmp_path / "a.npz", tmp_path / "b_stats.npz", "--features", "exact")
    assert code == 0 and out == f"FD (exact features): {expected:.6f}\n"
