"""An interrupted training run resumes to the same weights as an uninterrupted one."""

from functools import partial

import pytest
import torch
from torch import nn

from dpms import digits
from dpms.errors import DpmsError
from dpms.training import train_noise_predictor


class TinyNet(nn.Module):
    """Small ε-network with dropout, so that the global RNG (not only the training generator) matters."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Conv2d(1, 8, 3, padding=1)
        self.drop = nn.Dropout(0.3)
        self.out = nn.Conv2d(8, 1, 3, padding=1)
        self.time = nn.Embedding(1000, 8)

    def forward(self, x, n):
        return self.out(self.drop(torch.relu(self.inp(x) + self.time(n)[:, :, None, None])))


class LabelledTinyNet(TinyNet):
    """TinyNet with an augmentation-label input, as the shipped digits U-Net has for its shifts."""

    def __init__(self):
        super().__init__()
        self.labels = nn.Linear(2, 8, bias=False)

    def forward(self, x, n, augment_labels=None):
        h = self.inp(x) + self.time(n)[:, :, None, None] + self.labels(augment_labels)[:, :, None, None]
        return self.out(self.drop(torch.relu(h)))


class Interrupt(Exception):
    pass


def run(steps, state_path=None, stop_at=None, run_info=None, lambda_share=0.5, model=None, device="cpu", shifts=False):
    torch.manual_seed(0)
    model = model or (LabelledTinyNet() if shifts else TinyNet())

    def stop(step, weights):
        if step == stop_at:
            raise Interrupt

    images = digits.load_digits_images()[:100]
    return train_noise_predictor(model, images, digits.digits_schedule(), steps=steps, batch_size=32, warmup_steps=3,
                                 lr_decay="cosine", lambda_share=lambda_share, data_transform=digits.dequantise, seed=1,
                                 progress=False, log_every=4 if stop_at else 0, snapshot=stop, state_path=state_path,
                                 state_every=4, run=run_info or {"what": "test"}, device=device,
                                 augmentation=partial(digits.shift_augment, probability=0.5) if shifts else None)


@pytest.mark.parametrize("shifts", [False, True], ids=["plain", "shift-augmented"])
def test_interrupted_run_resumes_to_the_same_weights(tmp_path, shifts):
    straight = run(14, shifts=shifts)  # 14 steps of batch 32 over 100 images: crosses epochs, so the batch order is resumed too
    state = tmp_path / "state.pt"
    with pytest.raises(Interrupt):
        run(14, state_path=state, stop_at=8, shifts=shifts)
    assert state.is_file()
    torch.manual_seed(123)  # a fresh process: the global RNG is not where the interrupted run left it
    resumed = run(14, state_path=state, shifts=shifts)
    assert resumed.resumed_from == [8] and straight.resumed_from == []
    assert resumed.losses == straight.losses
    assert resumed.ema_state_dict.keys() == straight.ema_state_dict.keys()
    for key, value in straight.ema_state_dict.items():
        assert torch.equal(resumed.ema_state_dict[key], value), key


def test_a_state_of_another_recipe_is_refused_in_one_line(tmp_path):
    state = tmp_path / "state.pt"
    with pytest.raises(Interrupt):
        run(14, state_path=state, stop_at=4)
    with pytest.raises(DpmsError, match=r"other settings \(lambda_share\); resume it with the same options, or delete it"):
        run(14, state_path=state, lambda_share=0.0)
    with pytest.raises(DpmsError, match=r"other settings \(run, steps\)"):
        run(20, state_path=state, run_info={"what": "other"})
    state.write_bytes(b"not a state")
    with pytest.raises(DpmsError, match="is not a dpms training state"):
        run(14, state_path=state)


def test_dpms_train_digits_resumes_and_removes_its_state_when_done(tmp_path, monkeypatch):
    """reproduce_digits_ddpm keeps OUT/train_state.pt while it trains and deletes it once the weights are written."""
    calls = {}

    def fake_train(**kwargs):
        calls.update(kwargs)
        assert kwargs["state_path"] == tmp_path / digits.TRAIN_STATE_FILE
        kwargs["state_path"].write_bytes(b"state")
        from dpms.training import TrainResult

        model = digits.build_digits_ddpm()
        return TrainResult(ema_state_dict=model.state_dict(), losses=[1.0] * 10, wall_time_s=1.0, resumed_from=[4]), {"batch_size": 128}

    monkeypatch.setattr("dpms.digits.training.train_digits_ddpm", fake_train)
    monkeypatch.setattr("dpms.digits.training.check_digits_ddpm", lambda directory, card, console, **kw: {**card, "check_wall_time_s": 0.0})
    card = digits.reproduce_digits_ddpm(steps=10, directory=tmp_path)
    assert not (tmp_path / digits.TRAIN_STATE_FILE).exists() and (tmp_path / digits.DDPM_FILE).is_file()
    assert card["resumed_at_steps"] == [4]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (runs on a lent GPU machine)")
def test_a_gpu_run_draws_what_the_cpu_run_draws_and_resumes(tmp_path):
    """Same data order, steps n and noise on every device, so the GPU run's losses track the CPU run's
    (other kernels: not bitwise); its weights come back on the CPU; an interrupted GPU run resumes bitwise."""
    cpu, gpu = run(10), run(10, device="cuda")
    assert gpu.losses == pytest.approx(cpu.losses, rel=1e-3)
    assert all(value.device.type == "cpu" for value in gpu.ema_state_dict.values())
    state = tmp_path / "state.pt"
    with pytest.raises(Interrupt):
        run(10, state_path=state, stop_at=4, device="cuda")
    resumed = run(10, state_path=state, device="cuda")
    assert resumed.losses == pytest.approx(gpu.losses, rel=1e-6)
    with pytest.raises(DpmsError, match="device"):
        run(10, state_path=state)  # a GPU run's state is not continued on the CPU


def test_explicit_cpu_device_is_the_default_run_and_a_missing_gpu_is_one_line(tmp_path, capsys):
    default, explicit = run(6), run(6, device="cpu")
    assert default.losses == explicit.losses
    for key, value in default.ema_state_dict.items():
        assert torch.equal(explicit.ema_state_dict[key], value), key
    if torch.cuda.is_available():
        return
    from dpms.cli import main

    code = main(["train", "digits", "--device", "cuda", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --device cuda: CUDA is not available") and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())
