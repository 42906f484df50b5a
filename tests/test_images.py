"""Samples → uint8 images: both quantisation conventions of the papers' FID pipelines, and files that agree.

* "floor": guided-diffusion's sample scripts, ((x + 1)·127.5).clamp(0, 255).to(uint8).
* "round": torchvision's save_image of (x + 1)/2 (ermongroup/ddim, PNDM, DPM-Solver's ddpm runner).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dpms.errors import DpmsError
from dpms.images import to_uint8


def _samples(n=4, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g) * 0.6  # some pixels beyond [-1, 1] too


def test_floor_truncates_and_round_goes_to_the_nearest_level():
    # (x + 1)·127.5 = 0.6, 1.7, 254.4, 254.6 → floor 0, 1, 254, 254; round 1, 2, 254, 255 (out of range: clamped)
    levels = torch.tensor([0.6, 1.7, 254.4, 254.6, -3.0, 300.0])
    x = (levels / 127.5 - 1.0).reshape(1, 1, 1, -1)
    assert to_uint8(x, "floor").flatten().tolist() == [0, 1, 254, 254, 0, 255]
    assert to_uint8(x, "round").flatten().tolist() == [1, 2, 254, 255, 0, 255]
    assert to_uint8(x).flatten().tolist() == to_uint8(x, "floor").flatten().tolist()  # the default


def test_floor_is_guided_diffusions_quantisation():
    x = _samples()
    expected = ((x + 1) * 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)  # guided-diffusion sample scripts
    assert torch.equal(to_uint8(x, "floor"), expected)


def test_round_is_torchvision_save_image_of_the_ddim_runners(tmp_path):
    tvu = pytest.importorskip("torchvision.utils")
    x = _samples()
    got = to_uint8(x, "round").numpy()
    inverse = torch.clamp((x + 1.0) / 2.0, 0.0, 1.0)  # the runners' inverse_data_transform
    for i in range(x.shape[0]):
        tvu.save_image(inverse[i], tmp_path / f"{i}.png")
        assert np.array_equal(np.asarray(Image.open(tmp_path / f"{i}.png")), got[i])


def test_the_conventions_differ_by_one_level_in_about_half_the_pixels():
    x = _samples(n=16)
    diff = to_uint8(x, "round").int() - to_uint8(x, "floor").int()
    assert set(diff.unique().tolist()) <= {0, 1}
    inside = ((x > -1) & (x < 1)).permute(0, 2, 3, 1)
    assert 0.4 < diff[inside].float().mean().item() < 0.6


def _image_target(convention: str):
    from dpms.generate import Target
    from dpms.schedule import NoiseSchedule

    def make_noise_fn(y=None):
        return lambda x, t: 0.3 * x  # a stand-in network: samples spread over (and beyond) [-1, 1]

    return Target("toy", NoiseSchedule.discrete_linear(1000), (3, 8, 8), True, make_noise_fn, uint8=convention)


def _pngs(folder) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))])


def test_generate_writes_the_targets_convention_and_pngs_equal_the_npz(tmp_path):
    from dpms.generate import generate

    written = {}
    for convention in ("floor", "round"):
        out = tmp_path / convention
        generate(_image_target(convention), "ddim", 4, 6, 4, 0, out, console=None)
        samples = np.load(out / "samples.npz")["samples"]
        assert samples.dtype == np.uint8 and samples.shape == (6, 8, 8, 3)
        assert np.array_equal(_pngs(out / "images"), samples)
        written[convention] = samples.astype(int)
    diff = written["round"] - written["floor"]
    assert set(np.unique(diff)) == {0, 1}  # same samples, quantised both ways


def test_npz_holds_one_copy_and_guided_diffusions_arr_0_files_are_read_too(tmp_path):
    """samples.npz: `samples` (N×H×W×C uint8) and `labels`, once; an .npz of guided-diffusion's scripts
    (`arr_0`, `arr_1`) is read by `dpms fid` / `dpms stats` as the same samples."""
    import dataclasses

    from dpms.evaluation.sources import load_samples, source_kind
    from dpms.generate import generate

    target = dataclasses.replace(_image_target("floor"), num_classes=10)
    generate(target, "ddim", 3, 5, 2, 0, tmp_path, class_labels=[7, 2], console=None)
    npz = np.load(tmp_path / "samples.npz")
    assert sorted(npz.files) == ["labels", "samples"]
    assert npz["samples"].dtype == np.uint8 and npz["samples"].shape == (5, 8, 8, 3)
    assert npz["labels"].tolist() == [7, 2, 7, 2, 7]
    np.savez(tmp_path / "adm.npz", arr_0=npz["samples"], arr_1=npz["labels"])
    assert source_kind(tmp_path / "adm.npz") == "samples"
    assert np.array_equal(load_samples(tmp_path / "adm.npz"), npz["samples"])


def test_samples_stream_into_one_preallocated_uint8_array(tmp_path, monkeypatch):
    """No float copy and no concatenation of all samples: the .npz is written from views of one uint8
    buffer, and an interrupted run saves the batches it finished."""
    from dpms import generate as generate_module

    saved, real_save_pngs = {}, generate_module.save_pngs

    def save_pngs_then_interrupt(images, folder, first):
        if first > 0:
            raise KeyboardInterrupt
        real_save_pngs(images, folder, first)

    monkeypatch.setattr(generate_module, "save_pngs", save_pngs_then_interrupt)
    monkeypatch.setattr(generate_module, "atomic_save_npz", lambda path, **arrays: saved.update(arrays))
    summary = generate_module.generate(_image_target("round"), "ddim", 3, 12, 4, 0, tmp_path, console=None)
    assert summary["num"] == 4
    samples = saved["samples"]
    assert samples.dtype == np.uint8 and samples.shape == (4, 8, 8, 3)
    assert samples.base is not None and samples.base.shape == (12, 8, 8, 3)  # a view of the run's buffer
    assert np.array_equal(_pngs(tmp_path / "images"), samples)


def test_unknown_convention_is_one_line():
    with pytest.raises(DpmsError, match="unknown uint8 convention 'nearest'; use one of floor, round"):
        to_uint8(_samples(), "nearest")
