"""The digits DDPM's training recipe: learning-rate schedule, dequantisation, held-out data, loss curve,
and the card's memorisation and range statistics."""

import math

import pytest
import torch

from dpms import digits
from dpms.training.diffusion import learning_rate, step_probabilities


@pytest.fixture
def recorded_training(monkeypatch):
    """Replaces the training loop under `train_digits_ddpm`: each call records the network, the images and
    the keyword arguments it was given (in the returned dict) and returns an empty result."""
    from dpms.training import TrainResult

    seen = {}

    def fake_train(model, images, schedule, **kwargs):
        seen.update(kwargs, model=model, images=images)
        return TrainResult(ema_state_dict={}, losses=[1.0])

    monkeypatch.setattr("dpms.digits.training.train_noise_predictor", fake_train)
    return seen


class Probe(torch.nn.Module):
    """A one-weight stand-in network that records what the training loop gives it: each call's inputs x,
    steps n and keyword arguments, in `calls`."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.calls = []

    def forward(self, x, n, **kwargs):
        self.calls.append((x.detach().clone(), n.clone(), kwargs))
        return x * self.w


def test_learning_rate_warms_up_then_follows_half_a_cosine_to_zero():
    assert learning_rate(0, 1.0, 10, 110, "cosine") == pytest.approx(0.1)
    assert learning_rate(9, 1.0, 10, 110, "cosine") == pytest.approx(1.0)
    assert learning_rate(10, 1.0, 10, 110, "cosine") == pytest.approx(1.0)
    assert learning_rate(60, 1.0, 10, 110, "cosine") == pytest.approx(0.5)  # half way: cos(π/2)
    assert learning_rate(35, 1.0, 10, 110, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert learning_rate(109, 1.0, 10, 110, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.99)))
    assert learning_rate(60, 1.0, 10, 110, "constant") == 1.0
    with pytest.raises(ValueError, match="cosine"):
        learning_rate(0, 1.0, 10, 110, "linear")


def test_dequantisation_fills_each_grey_level_bin_and_keeps_its_mean():
    images = digits.load_digits_images()
    x = images[:200].repeat(20, 1, 1, 1)
    noisy = digits.dequantise(x, torch.Generator().manual_seed(0))
    offset = noisy - x
    assert offset.abs().max() <= digits.GREY_LEVEL_SPACING / 2
    assert offset.mean().abs() < 2e-3  # centred: a pixel's mean stays on its level
    assert offset.std().item() == pytest.approx(digits.GREY_LEVEL_SPACING / math.sqrt(12), rel=0.02)
    # the nearest level of every dequantised pixel is the original one: no information is lost
    level = lambda v: torch.round((v + 1) / digits.GREY_LEVEL_SPACING)  # noqa: E731
    assert torch.equal(level(noisy), level(x))


def test_gaussian_dequantisation_has_a_quarter_bin_spread_and_no_edge():
    x = digits.load_digits_images()[:200].repeat(20, 1, 1, 1)
    offset = digits.dequantise(x, torch.Generator().manual_seed(0), kind="gaussian") - x
    assert offset.mean().abs() < 2e-3
    assert offset.std().item() == pytest.approx(digits.GREY_LEVEL_SPACING / 4, rel=0.02)
    assert offset.abs().max() > digits.GREY_LEVEL_SPACING  # unbounded: no wall at the bin's edge
    assert torch.equal(digits.dequantise(x, torch.Generator(), kind="none"), x)
    with pytest.raises(ValueError, match="none, uniform, gaussian"):
        digits.dequantise(x, torch.Generator(), kind="triangular")


def test_issue_17_recipe_trains_on_the_train_split_dequantised_with_cosine_decay(recorded_training):
    seen = recorded_training
    _, settings = digits.train_digits_ddpm(steps=1, progress=False, held_out=True, dequantisation="uniform", lr_decay="cosine")
    train, held_out = digits.digits_split()
    assert torch.equal(seen["images"], digits.load_digits_images()[train])
    transform = seen["data_transform"]
    assert seen["lr_decay"] == "cosine" and transform.func is digits.dequantise and transform.keywords["kind"] == "uniform"
    assert "360 held out" in settings["data"] and "dequantised" in settings["data"]
    _, first = digits.train_digits_ddpm(steps=1, progress=False, held_out=False, dequantisation="none", lr_decay="constant")
    assert seen["images"].shape[0] == 1797 and seen["data_transform"] is None
    assert seen["lr_decay"] == "constant" and "not dequantised" in first["data"]


def test_defaults_everywhere_are_the_recipe_the_shipped_card_records(monkeypatch):
    """`dpms train digits` with no options, `train_digits_ddpm()` and the card of the shipped weights agree."""
    import inspect
    import json

    from typer.testing import CliRunner

    from dpms.cli import app

    recipe = digits.SHIPPED_RECIPE
    card = json.loads((digits.DIGITS_DIR / "digits_ddpm.json").read_text())
    assert card["steps"] == recipe["steps"] and card["lr"] == recipe["lr"] and card["torch_threads"] == recipe["threads"]
    assert ("360 held out" in card["data"]) == recipe["held_out"]
    std = recipe["dequantisation_std"]
    law = "N(0, (1/32)^2)" if std == digits.GREY_LEVEL_SPACING / 4 else f"N(0, ({std:.6g})^2)"
    assert {"none": "not dequantised", "uniform": "U(-1/16, 1/16)", "gaussian": law, "gaussian-conditional": law}[recipe["dequantisation"]] in card["data"]
    assert ("folded into the forward noise" in card["data"]) == (recipe["dequantisation"] == "gaussian-conditional")
    assert card.get("dequantisation_std", std) == std
    assert card["lr_schedule"].startswith({"cosine": "linear warm-up over 500 steps, then cosine", "constant": "linear warm-up then constant"}[recipe["lr_decay"]])
    # cards written before lambda_share existed drew n uniformly, as its default 0 does
    assert card.get("steps_n", "uniform over 0..999 (DDPM)").startswith("uniform over") == (recipe["lambda_share"] == 0)
    if recipe["lambda_share"]:
        assert f"{recipe['lambda_share']:g} x uniform in lambda" in card["steps_n"]
    assert card["config"]["dropout"] == recipe["dropout"]
    assert ("shifted with probability" in card["data"]) == bool(recipe["shift_probability"])
    assert card["config"].get("augment_dim", 0) == (digits.SHIFT_AUGMENT_DIM if recipe["shift_probability"] else 0)
    keys = ("steps", "held_out", "dequantisation", "dequantisation_std", "dropout", "shift_probability", "lr", "lr_decay", "lambda_share")
    defaults = {name: p.default for name, p in inspect.signature(digits.train_digits_ddpm).parameters.items()}
    assert {key: defaults[key] for key in keys} == {k: v for k, v in recipe.items() if k != "threads"}
    seen = {}
    monkeypatch.setattr("dpms.digits.reproduce_digits_ddpm", lambda **kwargs: seen.update(kwargs) or (_ for _ in ()).throw(SystemExit(0)))
    monkeypatch.setattr("dpms.cli.set_threads", lambda n: seen.update(threads=n))
    CliRunner().invoke(app, ["train", "digits", "--out", "/nonexistent/dpms-recipe-test"])
    assert {key: seen[key] for key in keys + ("threads",)} == recipe


def test_dequantised_batches_reach_the_network_and_are_seeded(monkeypatch):
    """The transform is applied inside the training loop, drawing from the training generator: two runs
    with one seed see the same batches, and those batches are off the 17 grey levels."""
    images = digits.load_digits_images()[:64]
    from dpms.training import train_noise_predictor

    probes = [Probe(), Probe()]
    for probe in probes:
        train_noise_predictor(probe, images, digits.digits_schedule(), steps=1, batch_size=64, warmup_steps=0,
                              data_transform=digits.dequantise, seed=3, progress=False)
    assert torch.equal(probes[0].calls[0][0], probes[1].calls[0][0])


def test_step_probabilities_mix_uniform_in_n_with_uniform_in_lambda():
    schedule = digits.digits_schedule()
    assert step_probabilities(schedule, 0.0) is None  # DDPM's randint: the shipped recipe's draws unchanged
    t = torch.arange(1, schedule.N + 1, dtype=torch.float64) / schedule.N
    lambda_ = schedule.lambda_(t)
    in_lambda = step_probabilities(schedule, 1.0)
    assert in_lambda.sum().item() == pytest.approx(1.0)
    span = (lambda_[0] - lambda_[-1]).item()
    for low, high in [(-4.0, -2.0), (0.0, 1.0), (2.5, 4.0)]:  # mass of a λ interval ∝ its length
        inside = (lambda_ >= low) & (lambda_ < high)
        assert in_lambda[inside].sum().item() == pytest.approx((high - low) / span, abs=0.01)
    half = step_probabilities(schedule, 0.5)
    assert torch.allclose(half, 0.5 / schedule.N + 0.5 * in_lambda)
    low_noise = (schedule.sigma(t) / schedule.alpha(t)) < 0.03
    assert half[low_noise].sum() > 8 * low_noise.double().mean()  # the point: far more of the last stretch
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="lambda_share"):
            step_probabilities(schedule, bad)


def test_training_draws_steps_n_from_the_mixture_and_is_seeded():
    from dpms.training import train_noise_predictor

    schedule = digits.digits_schedule()
    images = digits.load_digits_images()[:128]
    probes = [Probe(), Probe()]
    for probe in probes:
        train_noise_predictor(probe, images, schedule, steps=40, batch_size=128, warmup_steps=0, lambda_share=1.0,
                              seed=5, progress=False)
    first, second = (torch.cat([n for _, n, _ in probe.calls]) for probe in probes)
    assert torch.equal(first, second)
    expected = step_probabilities(schedule, 1.0)
    for cut in (10, 100, 500):  # 5,120 draws: each share within a few standard errors
        assert (first < cut).double().mean().item() == pytest.approx(expected[:cut].sum().item(), abs=0.03)
    assert (first < 10).double().mean() > 0.1  # uniform draws would give 1 %


def test_lambda_share_outside_zero_to_one_is_one_line(tmp_path, capsys):
    from dpms.cli import main

    code = main(["train", "digits", "--lambda-share", "1.5", "--out", str(tmp_path)])
    assert (code, capsys.readouterr().err) == (2, "error: --lambda-share must be between 0 and 1, got 1.5\n")
    assert not any(tmp_path.iterdir())


def test_loss_curve_averages_whole_windows():
    assert digits.loss_curve([1.0, 3.0, 2.0, 4.0, 9.0], window=2) == [2.0, 3.0]


def test_nearest_neighbour_statistics_flag_copies_of_training_digits():
    images = digits.load_digits_images()
    train, held_out = digits.digits_split()
    copies = digits.nearest_neighbour_statistics(images[train[:100]])
    # 8-bit quantisation moves a pixel by at most 1/127.5: copies are within 8/127.5 of their digit
    assert copies["samples_to_train_split"]["median"] < 8 / 127.5 and copies["samples_to_train_split"]["fraction_below_1"] == 1.0
    unseen = digits.nearest_neighbour_statistics(images[held_out[:100]])
    assert unseen["samples_to_held_out_split"]["median"] < 8 / 127.5
    assert unseen["samples_to_train_split"]["median"] > 1.0  # real unseen digits are not near-copies
    assert unseen["held_out_to_train_split"] == copies["held_out_to_train_split"]


def test_range_statistics_measure_the_spill_beyond_each_end_as_the_data_spread():
    generator = torch.Generator().manual_seed(0)
    x = digits.load_digits_images()[:400].repeat(10, 1, 1, 1)
    data = digits.dequantise(x, generator, kind="gaussian")
    stats = digits.range_statistics(data)
    # the Gaussian recipe's data: each end's half-level spread is the dequantisation's std 1/32
    assert stats["rms_beyond_-1"] == pytest.approx(1 / 32, rel=0.02) and stats["rms_beyond_1"] == pytest.approx(1 / 32, rel=0.05)
    assert stats["fraction_pixels_within_1.1"] > 0.999
    wide = digits.range_statistics(x + (data - x) * 1.5)  # levels 1.5 times too wide, as a model's can be
    assert wide["rms_beyond_-1"] == pytest.approx(1.5 / 32, rel=0.02)
    assert wide["fraction_pixels_within_1.1"] < 0.995
    assert digits.range_statistics(x)["rms_beyond_-1"] is None and digits.range_statistics(x)["pixel_range"] == [-1.0, 1.0]


def test_conditional_target_draws_the_same_inputs_and_has_the_same_minimiser_with_less_variance():
    """simple_loss with dequantisation_std d: x_n = α x₀ + √(α²d² + σ²) ε' is distributed as α(x₀ + d z) + σ ε,
    and the least-squares predictor of ε from x_n is the same with the drawn ε and with E[ε | x_n, x₀]; only
    the residual the network cannot remove shrinks (from 1 − σ²/τ² to 0 for a point mass)."""
    from dpms.training.diffusion import simple_loss

    alpha, sigma, d = torch.tensor([0.99]), torch.tensor([0.02]), 0.03
    tau2 = (0.99 * d) ** 2 + 0.02**2
    x0, n = torch.zeros(400_000, 1, 1, 1), torch.zeros(400_000, dtype=torch.long)

    class Linear(torch.nn.Module):  # ε̂ = c·x_n records its inputs
        def __init__(self, c):
            super().__init__()
            self.c, self.inputs = c, []

        def forward(self, x, steps):
            self.inputs.append(x)
            return self.c * x

    def losses(c):
        z, eps = (torch.randn(x0.shape, generator=torch.Generator().manual_seed(k)) for k in (1, 2))
        explicit, folded = Linear(c), Linear(c)
        drawn = simple_loss(explicit, x0 + d * z, n, eps, alpha, sigma)
        conditional = simple_loss(folded, x0, n, eps, alpha, sigma, dequantisation_std=d)
        return drawn.item(), conditional.item(), explicit.inputs[0], folded.inputs[0]

    best = 0.02 / tau2  # the posterior mean E[ε | x_n] = σ x_n / τ² for a level at 0
    drawn, conditional, x_explicit, x_folded = losses(best)
    assert x_explicit.std().item() == pytest.approx(tau2**0.5, rel=0.01) == x_folded.std().item()
    assert drawn == pytest.approx(1 - 0.02**2 / tau2, rel=0.01)  # what no network can predict
    assert conditional == pytest.approx(0.0, abs=1e-10)
    for c in (0.5 * best, 1.5 * best):  # both losses rise by the same amount away from the minimiser
        worse_drawn, worse_conditional, _, _ = losses(c)
        assert worse_drawn - drawn == pytest.approx(worse_conditional - conditional, rel=0.02)
        assert worse_conditional > conditional
    assert simple_loss(Linear(0.0), x0, n, torch.ones_like(x0), alpha, sigma, dequantisation_std=d).item() == pytest.approx(0.02**2 / tau2)


def test_gaussian_conditional_trains_on_the_levels_with_the_spread_folded_into_the_noise(recorded_training):
    seen = recorded_training
    quarter = digits.GREY_LEVEL_SPACING / 4
    _, settings = digits.train_digits_ddpm(steps=1, progress=False, dequantisation="gaussian-conditional", dequantisation_std=quarter)
    assert seen["data_transform"] is None and seen["dequantisation_std"] == quarter
    assert "folded into the forward noise" in settings["data"] and "E[eps | x_n, levels]" in settings["loss"]
    digits.train_digits_ddpm(steps=1, progress=False, dequantisation="gaussian", dequantisation_std=quarter)
    assert seen["dequantisation_std"] == 0.0 and seen["data_transform"].keywords == {"kind": "gaussian", "std": quarter}
    assert torch.equal(digits.dequantise(torch.ones(3), torch.Generator(), "gaussian-conditional"), torch.ones(3))


def test_dequantisation_std_sets_both_gaussian_spreads_and_the_card_says_which(recorded_training):
    seen = recorded_training
    d = digits.GREY_LEVEL_SPACING / 8
    _, settings = digits.train_digits_ddpm(steps=1, progress=False, dequantisation="gaussian-conditional", dequantisation_std=d)
    assert seen["dequantisation_std"] == d and "N(0, (0.015625)^2)" in settings["data"] and "0.125 of one grey level" in settings["data"]
    _, settings = digits.train_digits_ddpm(steps=1, progress=False, dequantisation="gaussian", dequantisation_std=d)
    x = digits.load_digits_images()[:200].repeat(20, 1, 1, 1)
    offset = seen["data_transform"](x, torch.Generator().manual_seed(0)) - x
    assert offset.std().item() == pytest.approx(d, rel=0.02)
    with pytest.raises(ValueError, match="dequantisation_std must be positive"):
        digits.train_digits_ddpm(steps=1, progress=False, dequantisation_std=0.0)


def test_dequantise_std_outside_its_range_is_one_line(tmp_path, capsys):
    from dpms.cli import main

    code = main(["train", "digits", "--dequantise-std", "0", "--out", str(tmp_path)])
    assert code == 2 and capsys.readouterr().err.startswith("error: --dequantise-std must be above 0")
    assert not any(tmp_path.iterdir())


def test_dropout_is_the_trained_networks_and_the_cards(recorded_training):
    seen = recorded_training

    def rates():
        return {m.p for m in seen["model"].modules() if isinstance(m, torch.nn.Dropout)}

    _, settings = digits.train_digits_ddpm(steps=1, progress=False, dropout=0.0)
    assert rates() == {0.0} and settings["dropout"] == 0.0 and seen["run"]["dropout"] == 0.0
    digits.train_digits_ddpm(steps=1, progress=False)
    assert rates() == {digits.SHIPPED_RECIPE["dropout"]}
    with torch.device("meta"):
        assert list(digits.build_digits_ddpm(0.0).state_dict()) == list(digits.build_digits_ddpm().state_dict())


def test_dropout_outside_its_range_is_one_line(tmp_path, capsys):
    from dpms.cli import main

    code = main(["train", "digits", "--dropout", "1", "--out", str(tmp_path)])
    assert (code, capsys.readouterr().err) == (2, "error: --dropout must be at least 0 and below 1, got 1.0\n")
    assert not any(tmp_path.iterdir())


def test_shift_augment_moves_each_digit_by_its_label_and_fills_with_blank():
    x = digits.load_digits_images()[:300]
    shifted, labels = digits.shift_augment(x, torch.Generator().manual_seed(0), probability=0.5)
    assert labels.shape == (300, 2) and set(labels.flatten().tolist()) <= {-1.0, 0.0, 1.0}
    moved = labels.abs().sum(1) > 0
    # P(shifted) = 0.5 · 8/9 (a drawn shift may be (0, 0)); 300 draws: ±3 standard deviations
    assert abs(moved.float().mean().item() - 0.5 * 8 / 9) < 3 * (0.44 * 0.56 / 300) ** 0.5
    for image, out, (dx, dy) in zip(x, shifted, labels.long().tolist()):
        expected = torch.full_like(image, -1.0)  # out[y, x] = in[y - dy, x - dx], blank where nothing lands
        expected[..., max(dy, 0):8 + min(dy, 0), max(dx, 0):8 + min(dx, 0)] = image[..., max(-dy, 0):8 - max(dy, 0), max(-dx, 0):8 - max(dx, 0)]
        assert torch.equal(out, expected)
    assert torch.equal(shifted[~moved], x[~moved])
    again, again_labels = digits.shift_augment(x, torch.Generator().manual_seed(0), probability=0.5)
    assert torch.equal(again, shifted) and torch.equal(again_labels, labels)  # seeded by the training generator
    none, zero = digits.shift_augment(x, torch.Generator().manual_seed(0), probability=0.0)
    assert torch.equal(none, x) and not zero.any()
    with pytest.raises(ValueError, match="shift probability"):
        digits.shift_augment(x, torch.Generator(), probability=1.5)


def test_the_network_takes_shift_labels_and_label_zero_is_no_label():
    """Non-leaking: at sampling the network gets no labels, which must be the unshifted data's label (0)."""
    torch.manual_seed(0)
    plain, augmented = digits.build_digits_ddpm(augment_dim=0).eval(), digits.build_digits_ddpm(augment_dim=2).eval()
    assert set(augmented.state_dict()) - set(plain.state_dict()) == {"temb.augment.weight"}
    upstream = {k: v for k, v in digits.DIGITS_DDPM_CONFIG.items() if k != "augment_dim"}  # the DDIM repo's keys
    assert digits.digits_ddpm_config(augment_dim=0) == upstream  # what an unshifted run's card records
    assert digits.digits_ddpm_config(0.0, 2) == {**upstream, "dropout": 0.0, "augment_dim": 2}
    from dpms.models import build
    assert list(plain.state_dict()) == list(build("ddpm", upstream).state_dict())
    x, n = torch.randn(4, 1, 8, 8), torch.tensor([0, 10, 500, 999])
    with torch.no_grad():
        free = augmented(x, n)
        assert torch.equal(augmented(x, n, augment_labels=torch.zeros(4, 2)), free)
        assert not torch.allclose(augmented(x, n, augment_labels=torch.tensor([[1.0, 0.0]] * 4)), free)
        with pytest.raises(ValueError, match="without augment_dim"):
            plain(x, n, augment_labels=torch.zeros(4, 2))


def test_training_gives_the_network_each_batchs_shift_labels(monkeypatch):
    from functools import partial

    from dpms.training import train_noise_predictor

    images = digits.load_digits_images()[:64]
    augmentation = partial(digits.shift_augment, probability=1.0)
    labelled = Probe()
    train_noise_predictor(labelled, images, digits.digits_schedule(), steps=2, batch_size=64, warmup_steps=0,
                          augmentation=augmentation, seed=3, progress=False)
    seen = [kwargs["augment_labels"] for _, _, kwargs in labelled.calls]
    assert len(seen) == 2 and all(labels.shape == (64, 2) for labels in seen) and seen[0].abs().sum() > 0
    plain = Probe()
    train_noise_predictor(plain, images, digits.digits_schedule(), steps=1, batch_size=64, warmup_steps=0, seed=3, progress=False)
    assert plain.calls[-1][2] == {}  # no augmentation: the network is called as every public model is, (x, n)


def test_shift_recipe_builds_the_labelled_network_and_its_weights_load(recorded_training, tmp_path):
    seen = recorded_training
    _, settings = digits.train_digits_ddpm(steps=1, progress=False, shift_probability=0.3)
    assert seen["augmentation"].keywords == {"probability": 0.3} and settings["shift_probability"] == 0.3
    assert "shifted with probability 0.3" in settings["data"] and "non-leaking" in settings["data"]
    assert seen["run"]["shift_probability"] == 0.3  # part of the training state's identity
    model = seen["model"].eval()
    torch.save(model.state_dict(), tmp_path / digits.DDPM_FILE)
    loaded = digits.load_digits_ddpm(directory=tmp_path)
    x, n = torch.randn(2, 1, 8, 8), torch.tensor([3, 700])
    with torch.no_grad():
        assert torch.equal(loaded(x, n), model(x, n))
    _, settings = digits.train_digits_ddpm(steps=1, progress=False, shift_probability=0.0)
    assert seen["augmentation"] is None and "no other augmentation" in settings["data"] and "shift_probability" not in settings
    assert "temb.augment.weight" not in seen["model"].state_dict()  # whatever the registry's config says


def test_shift_augment_outside_zero_to_one_is_one_line(tmp_path, capsys):
    from dpms.cli import main

    code = main(["train", "digits", "--shift-augment", "1.5", "--out", str(tmp_path)])
    assert (code, capsys.readouterr().err) == (2, "error: --shift-augment must be between 0 and 1 (the share of shifted digits), got 1.5\n")
    assert not any(tmp_path.iterdir())
