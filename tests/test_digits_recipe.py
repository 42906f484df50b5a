"""The digits DDPM's training recipe: learning-rate schedule, dequantisation, held-out data, loss curve,
and the card's memorisation and range statistics."""

import math

import pytest
import torch

from dpms import digits
from dpms.training.diffusion import learning_rate


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


def test_issue_17_recipe_trains_on_the_train_split_dequantised_with_cosine_decay(monkeypatch):
    seen = {}

    def fake_train(model, images, schedule, **kwargs):
        seen["images"], seen["kwargs"] = images, kwargs
        from dpms.training import TrainResult

        return TrainResult(ema_state_dict={}, losses=[1.0])

    monkeypatch.setattr("dpms.digits.training.train_noise_predictor", fake_train)
    _, settings = digits.train_digits_ddpm(steps=1, progress=False, held_out=True, dequantisation="uniform", lr_decay="cosine")
    train, held_out = digits.digits_split()
    assert torch.equal(seen["images"], digits.load_digits_images()[train])
    transform = seen["kwargs"]["data_transform"]
    assert seen["kwargs"]["lr_decay"] == "cosine" and transform.func is digits.dequantise and transform.keywords == {"kind": "uniform"}
    assert "360 held out" in settings["data"] and "dequantised" in settings["data"]
    _, first = digits.train_digits_ddpm(steps=1, progress=False)  # the defaults: the shipped weights' recipe
    assert seen["images"].shape[0] == 1797 and seen["kwargs"]["data_transform"] is None
    assert seen["kwargs"]["lr_decay"] == "constant" and "not dequantised" in first["data"]


def test_dequantised_batches_reach_the_network_and_are_seeded(monkeypatch):
    """The transform is applied inside the training loop, drawing from the training generator: two runs
    with one seed see the same batches, and those batches are off the 17 grey levels."""
    batches = []
    images = digits.load_digits_images()[:64]

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, n):
            batches.append(x.detach().clone())
            return x * self.w

    from dpms.training import train_noise_predictor

    for _ in range(2):
        train_noise_predictor(Probe(), images, digits.digits_schedule(), steps=1, batch_size=64, warmup_steps=0,
                              data_transform=digits.dequantise, seed=3, progress=False)
    assert torch.equal(batches[0], batches[1])


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
