"""EDM checkpoints (issue 15): networks, the safe snapshot reader, the denoiser model type, presets.

* Forward parity: dpms's SongUNet / DhariwalUNet / EDMPrecond / VPPrecond / VEPrecond against outputs of
  NVlabs/edm's own code on the same deterministic weights (tests/edm_reference.py made the data).
* The nine presets: state_dict keys, shapes and parameter counts against EDM's networks (same script) and
  the counts in shared/reference/edm.md, built on the meta device.
* The snapshot reader: snapshots written here in EDM's format (a persistence-hook record carrying a module
  source, legacy tensor blobs, ModuleDict, OrderedDict, numpy scalars) load; hostile look-alikes are refused
  in one line and nothing from them runs. With $DPMS_EDM_UPSTREAM (an NVlabs/edm checkout) a snapshot
  written by EDM's own code is read too.
* The denoiser model type on the edm schedule, and EDM's own sampler reproduced by dpms's solvers.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import pickle
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dpms.errors import DpmsError
from dpms.models import build, get_preset, load, load_edm_snapshot, presets
from dpms.models.checkpoint_formats import UnreadableCheckpoint
from dpms.models.edm import LabelIndexAdapter
from dpms.models.edm_snapshot import GENUINE_SOURCES, read_edm_snapshot
from dpms.model_wrapper import wrap_model
from dpms.schedule import NoiseSchedule

sys.path.insert(0, str(Path(__file__).parent))
from edm_reference import CASES, SAMPLER_CASES, fill_, inputs, one_hot, sampler_latents  # noqa: E402

DATA = Path(__file__).parent / "data" / "edm"
REFERENCE = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference" / "edm.md"
EDM_PRESETS = [name for name, p in presets().items() if p.arch == "edm"]


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def _filled(name: str) -> nn.Module:
    torch.manual_seed(0)
    return fill_(build("edm", CASES[name]).eval())


# ------------------------------------------------------------------------------------------ networks
@pytest.mark.parametrize("name", list(CASES))
def test_forward_matches_edm_code(name):
    reference = torch.load(DATA / "forward.pt", weights_only=True)
    kwargs, data = CASES[name], inputs(CASES[name])
    net = _filled(name)
    labels = one_hot(data.get("labels"), kwargs["label_dim"])
    with torch.no_grad():
        D = net(data["x"], data["sigma"], labels)
        # the reference was computed on another CPU: fp32 convolutions there round differently (up to 1e-4
        # on these outputs of size ~1 after a dozen layers); a wiring difference would be O(0.1)
        torch.testing.assert_close(D, reference[f"{name}/D"], rtol=1e-4, atol=1e-4)
        # informative: the U-Net's share of D is far from zero at every σ
        assert (D - data["x"] * net.coefficients(data["sigma"].reshape(-1, 1, 1, 1))[0]).abs().amax(dim=(1, 2, 3)).min() > 1e-3
        if kwargs.get("augment_dim"):
            D_aug = net(data["x"], data["sigma"], labels, augment_labels=data["augment_labels"])
            torch.testing.assert_close(D_aug, reference[f"{name}/D_augment"], rtol=1e-4, atol=1e-4)
            assert not torch.allclose(D_aug, D)


def _published_counts() -> dict[str, tuple[int, int]]:
    """{preset: (parameters, state_dict tensors)} from the table in shared/reference/edm.md."""
    counts = {}
    for line in REFERENCE.read_text().splitlines():
        match = re.match(r"\|\s*(edm-[^|]+?)\s*\|[^|]*\|\s*([\d,]+)\s*\|\s*(\d+)\s*\|", line)
        if match:
            for file in match.group(1).split(","):
                counts[file.strip().removesuffix(".pkl")] = (int(match.group(2).replace(",", "")), int(match.group(3)))
    return counts


def test_nine_presets():
    assert sorted(EDM_PRESETS) == sorted(_published_counts())
    assert len(EDM_PRESETS) == 9


@pytest.mark.parametrize("name", EDM_PRESETS)
def test_full_size_preset_has_edms_keys_shapes_and_parameter_count(name):
    upstream = json.loads((DATA / "full_size_keys.json").read_text())[name]
    preset = get_preset(name)
    with torch.device("meta"):
        net = build("edm", preset.config)
    assert [[k, list(v.shape)] for k, v in net.state_dict().items()] == upstream["state_dict"]
    params = sum(p.numel() for p in net.parameters())
    assert params == upstream["params"] == preset.params
    assert (params, len(net.state_dict())) == _published_counts()[name]
    assert preset.image_shape == (3, preset.config["img_resolution"], preset.config["img_resolution"])
    assert preset.num_classes == (preset.config["label_dim"] or None)
    assert preset.licence == "CC BY-NC-SA 4.0" and preset.format == "edm-pickle" and preset.model_type == "denoiser"
    assert preset.url == f"https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/{name}.pkl"
    assert preset.fid_reference["url"].startswith("https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"class_name": "training.networks.EvilPrecond", "img_resolution": 8, "img_channels": 3},
         "EDM class_name 'training.networks.EvilPrecond' is not one of training.networks.{EDMPrecond, VPPrecond, VEPrecond}"),
        ({"class_name": "os.EDMPrecond", "img_resolution": 8, "img_channels": 3}, "EDM class_name 'os.EDMPrecond' is not one of"),
        ({**CASES["ddpmpp-uncond-edm"], "channels": 3}, "unknown EDM SongUNet argument(s) channels; valid: "),
        ({**CASES["ddpmpp-uncond-edm"], "encoder_type": "dense"}, "EDM encoder_type='dense' is not one of standard, skip, residual"),
        ({"class_name": "EDMPrecond", "img_channels": 3}, "EDM network kwargs need img_resolution"),
    ],
)
def test_bad_network_kwargs_are_one_line(kwargs, message):
    with pytest.raises(DpmsError) as error:
        build("edm", kwargs)
    assert message in _one_line(error)


# ------------------------------------------------------------------------------------------ snapshots
STAND_IN_SOURCE = "# stand-in for EDM's training/networks.py in tests (the real text is CC BY-NC-SA)\n"
STAND_IN = {hashlib.sha256(STAND_IN_SOURCE.encode()).hexdigest(): "test stand-in"}


@contextlib.contextmanager
def _persistence_module():
    """A throwaway `torch_utils.persistence` so pickle can name EDM's hook; it is never called."""
    package, module = types.ModuleType("torch_utils"), types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):
        raise AssertionError("the writer's hook is never called")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    module._reconstruct_persistent_obj, package.persistence = _reconstruct_persistent_obj, module
    saved = {name: sys.modules.get(name) for name in ("torch_utils", "torch_utils.persistence")}
    sys.modules.update({"torch_utils": package, "torch_utils.persistence": module})
    try:
        yield _reconstruct_persistent_obj
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


class _EdmFormatPickler(pickle.Pickler):
    """Pickles dpms modules the way EDM's persistent classes pickle: hook(meta) with the module source,
    class name and the object's `__dict__`; `nn.ModuleDict`, tensors and parameters pickle as torch does."""

    def __init__(self, file, hook, source: str, top: nn.Module, init_kwargs: dict, class_name: str | None = None):
        super().__init__(file, protocol=4)
        self.hook, self.source, self.top, self.init_kwargs, self.class_name = hook, source, top, init_kwargs, class_name

    def reducer_override(self, obj):
        if not isinstance(obj, nn.Module) or isinstance(obj, nn.ModuleDict):
            return NotImplemented
        state = dict(obj.__dict__)
        if obj is self.top:
            state.update(_init_args=(), _init_kwargs=self.init_kwargs, sigma_data_np=np.float64(0.5))
        name = self.class_name if (obj is self.top and self.class_name) else type(obj).__name__
        meta = dict(type="class", version=6, module_src=self.source, class_name=name, state=state)
        return self.hook, (meta,)


def write_snapshot(path: Path, net: nn.Module, network_kwargs: dict, source: str = STAND_IN_SOURCE, class_name=None) -> Path:
    """An EDM-format snapshot of a dpms EDM network (`dict(ema, loss_fn, augment_pipe, dataset_kwargs)`)."""
    init_kwargs = {k: v for k, v in network_kwargs.items() if k != "class_name"}
    init_kwargs["dropout"] = np.float64(init_kwargs.get("dropout", 0.0))  # EDM's kwargs hold numpy scalars
    data = dict(ema=net, loss_fn=None, augment_pipe=None,
                dataset_kwargs=dict(class_name="training.dataset.ImageFolderDataset", path="cifar10-32x32.zip", xflip=False))
    with _persistence_module() as hook, open(path, "wb") as f:
        _EdmFormatPickler(f, hook, source, net, init_kwargs, class_name).dump(data)
    return path


def _globals_of(path: Path, monkeypatch) -> set[str]:
    """The globals the reader is asked for while reading `path`."""
    from dpms.models import edm_snapshot

    seen, find_class = set(), edm_snapshot._SnapshotUnpickler.find_class

    def recording(self, module, name):
        seen.add(f"{module}.{name}")
        return find_class(self, module, name)

    with monkeypatch.context() as patch:
        patch.setattr(edm_snapshot._SnapshotUnpickler, "find_class", recording)
        read_edm_snapshot(path, trusted_sources=STAND_IN)
    return seen


@pytest.mark.parametrize("name", ["ncsnpp-cond-edm", "adm-cond-edm", "ncsnpp-skip-vp"])
def test_snapshot_in_edms_format_loads_the_same_network(tmp_path, monkeypatch, name):
    net = _filled(name)
    path = write_snapshot(tmp_path / "network-snapshot.pkl", net, CASES[name])
    # the globals of a real snapshot, no more (numpy's module name depends on its major version)
    seen = _globals_of(path, monkeypatch)
    assert seen <= {
        "torch_utils.persistence._reconstruct_persistent_obj", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
        "torch.storage._load_from_bytes", "collections.OrderedDict", "torch.nn.modules.container.ModuleDict", "numpy.dtype",
        "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar"}
    assert {"torch.storage._load_from_bytes", "torch._utils._rebuild_parameter", "torch.nn.modules.container.ModuleDict",
            "numpy.dtype"} <= seen
    loaded = load_edm_snapshot(path, trusted_sources=STAND_IN)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    data = inputs(CASES[name])
    labels = one_hot(data.get("labels"), CASES[name]["label_dim"])
    with torch.no_grad():
        assert torch.equal(loaded(data["x"], data["sigma"], labels), net(data["x"], data["sigma"], labels))
    snapshot = read_edm_snapshot(path, trusted_sources=STAND_IN)
    assert snapshot.network_kwargs["class_name"] == CASES[name]["class_name"]
    assert isinstance(snapshot.network_kwargs["dropout"], float)


def test_snapshot_with_a_source_that_is_not_edms_is_refused(tmp_path):
    path = write_snapshot(tmp_path / "s.pkl", _filled("ddpmpp-uncond-edm"), CASES["ddpmpp-uncond-edm"])
    with pytest.raises(DpmsError) as error:
        load_edm_snapshot(path)  # the stand-in source is not one of EDM's published versions
    digest = next(iter(STAND_IN))
    # pickle rebuilds the innermost record first, so the first class named is a leaf module's
    assert re.fullmatch(
        rf"refused to read {re.escape(str(path))} as an EDM snapshot: the embedded source of class '\w+' \(sha256 {digest[:16]}\.\.\.\) "
        r"is not one of EDM's published training/\*\.py versions; dpms runs no code from checkpoint files", _one_line(error))


def test_hostile_source_is_never_executed(tmp_path):
    marker = tmp_path / "ran"
    source = f"open({str(marker)!r}, 'w').write('pwned')\n"
    path = write_snapshot(tmp_path / "s.pkl", _filled("ddpmpp-uncond-edm"), CASES["ddpmpp-uncond-edm"], source=source)
    with pytest.raises(DpmsError, match="is not one of EDM's published training/"):
        load_edm_snapshot(path)
    assert not marker.exists()


class _Reduce:
    """Pickles as a call of `func(*args)`: what a hostile file does to run code on load."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize(
    "payload, refused",
    [
        (lambda marker: _Reduce(os.system, f"touch {marker}"), f"{os.system.__module__}.system"),
        (lambda marker: _Reduce(eval, f"open({str(marker)!r}, 'w')"), "builtins.eval"),
        (lambda marker: _Reduce(exec, f"open({str(marker)!r}, 'w')"), "builtins.exec"),
        (lambda marker: _Reduce(functools.partial, print, marker), "functools.partial"),
    ],
)
def test_reduce_to_a_callable_is_refused_and_not_called(tmp_path, payload, refused):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pkl"
    with _persistence_module():
        pickle.dump({"ema": payload(marker), "loss_fn": None}, open(path, "wb"), protocol=4)
    with pytest.raises(DpmsError) as error:
        load_edm_snapshot(path)
    assert _one_line(error) == (
        f"refused to read {path} as an EDM snapshot: it references {refused}, which an EDM snapshot does not; "
        "dpms runs no code from checkpoint files"
    )
    assert not marker.exists()


def test_hostile_global_inside_a_genuine_looking_record_is_refused(tmp_path):
    """The hook is allowlisted, but what its state references still goes through the allowlist."""
    marker = tmp_path / "ran"
    net = _filled("ddpmpp-uncond-edm")
    net.payload = _Reduce(os.system, f"touch {marker}")
    path = write_snapshot(tmp_path / "s.pkl", net, CASES["ddpmpp-uncond-edm"])
    with pytest.raises(DpmsError, match=rf"it references {os.system.__module__}.system, which an EDM snapshot does not"):
        load_edm_snapshot(path, trusted_sources=STAND_IN)
    assert not marker.exists()


def test_persistent_ids_and_other_record_classes_are_refused(tmp_path):
    class WithIds(pickle.Pickler):
        def persistent_id(self, obj):
            return "storage-0" if isinstance(obj, str) and obj == "x" else None

    path = tmp_path / "ids.pkl"
    with open(path, "wb") as f:
        WithIds(f, protocol=4).dump({"ema": "x"})
    with pytest.raises(DpmsError, match="it uses pickle persistent ids, which an EDM snapshot does not"):
        load_edm_snapshot(path)

    other = write_snapshot(tmp_path / "o.pkl", _filled("ddpmpp-uncond-edm"), CASES["ddpmpp-uncond-edm"], class_name="Mystery")
    with pytest.raises(DpmsError) as error:
        load_edm_snapshot(other, trusted_sources=STAND_IN)
    assert _one_line(error) == f"{other}: the 'ema' network is a Mystery; dpms builds EDMPrecond, VPPrecond, VEPrecond"


def test_truncated_snapshot_is_one_line(tmp_path):
    path = write_snapshot(tmp_path / "s.pkl", _filled("ddpmpp-uncond-edm"), CASES["ddpmpp-uncond-edm"])
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UnreadableCheckpoint) as error:
        load_edm_snapshot(path, trusted_sources=STAND_IN)
    assert _one_line(error).startswith(f"{path} is corrupt or unreadable (pickle: ")


def test_snapshot_weights_that_do_not_fit_are_one_line(tmp_path):
    net = _filled("ddpmpp-uncond-edm")
    del net.model.map_layer1.bias
    net.model.map_layer1.bias = None
    path = write_snapshot(tmp_path / "s.pkl", net, CASES["ddpmpp-uncond-edm"])
    with pytest.raises(DpmsError) as error:
        load_edm_snapshot(path, trusted_sources=STAND_IN)
    assert _one_line(error) == (
        f"checkpoint {path} does not fit EDM EDMPrecond: 1 missing key(s), first 'model.map_layer1.bias'; "
        "use the preset this checkpoint was published for"
    )


@pytest.mark.skipif(not os.environ.get("DPMS_EDM_UPSTREAM"), reason="set DPMS_EDM_UPSTREAM to an NVlabs/edm checkout")
def test_snapshot_written_by_edms_own_code_loads(tmp_path):
    """A snapshot pickled by EDM's own classes (embedding its real networks.py, loss.py and augment.py)."""
    upstream = os.environ["DPMS_EDM_UPSTREAM"]
    sys.path.insert(0, upstream)
    try:
        from training import augment, loss, networks  # EDM's code, from the checkout
    finally:
        sys.path.remove(upstream)
    kwargs = dict(CASES["ncsnpp-cond-edm"])
    cls = getattr(networks, kwargs.pop("class_name").rsplit(".", 1)[-1])
    torch.manual_seed(0)
    ema = fill_(cls(**kwargs).eval())
    path = tmp_path / "network-snapshot-000000.pkl"
    data = dict(ema=ema, loss_fn=loss.EDMLoss(), augment_pipe=augment.AugmentPipe(p=0.12, xflip=1e8, yflip=1, scale=1),
                dataset_kwargs=dict(class_name="training.dataset.ImageFolderDataset", path="x.zip"))
    with open(path, "wb") as f:
        pickle.dump(data, f)
    snapshot = read_edm_snapshot(path)
    assert "training/networks.py @ b2a26c9" in snapshot.sources
    net = load_edm_snapshot(path)
    x = inputs(CASES["ncsnpp-cond-edm"])
    labels = one_hot(x["labels"], 10)
    with torch.no_grad():
        assert torch.equal(net(x["x"], x["sigma"], labels), ema(x["x"], x["sigma"], labels))


# ------------------------------------------------------------------------------------------ presets and sampling
def test_edm_schedule_is_sigma_as_time():
    schedule = NoiseSchedule.from_spec({"type": "edm"})
    assert (schedule.T, schedule.t_end) == (80.0, 0.002)
    t = torch.tensor([0.002, 0.5, 1.0, 80.0], dtype=torch.float64)
    torch.testing.assert_close(schedule.alpha(t), 1 / torch.sqrt(1 + t**2), rtol=1e-15, atol=0)
    torch.testing.assert_close(schedule.sigma(t) / schedule.alpha(t), t, rtol=1e-14, atol=0)
    torch.testing.assert_close(schedule.lambda_(t), -torch.log(t), rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(schedule.inverse_lambda(-torch.log(t)), t, rtol=1e-15, atol=0)
    h = 1e-6
    numeric = (schedule.log_alpha(t + h) - schedule.log_alpha(t - h)) / (2 * h)
    torch.testing.assert_close(schedule.d_log_alpha_dt(t), numeric, rtol=1e-6, atol=1e-12)


def test_denoiser_model_type_is_eps_in_ve_coordinates():
    """ε = (x_VE − D(x_VE; σ))/σ with x_VE = x/α and σ = e^{−λ}; on any schedule, not only edm."""
    net = _filled("ncsnpp-cond-edm")
    y = torch.tensor([1, 4, 7, 9])
    for schedule, t in ((NoiseSchedule.edm(), torch.tensor([0.002, 0.3, 2.0, 80.0], dtype=torch.float64)),
                        (NoiseSchedule.linear(), torch.tensor([1e-3, 0.2, 0.6, 1.0], dtype=torch.float64))):
        x = torch.randn(4, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        eps = wrap_model(LabelIndexAdapter(net), schedule, model_type="denoiser", condition=y)(x, t)
        alpha, sigma = schedule.alpha(t).reshape(-1, 1, 1, 1), (schedule.sigma(t) / schedule.alpha(t)).reshape(-1, 1, 1, 1)
        with torch.no_grad():
            D = net(x / alpha, sigma.flatten(), torch.nn.functional.one_hot(y, 10).float()).double()
        torch.testing.assert_close(eps, (x / alpha - D) / sigma, rtol=1e-12, atol=1e-12)
        assert eps.dtype == torch.float64


def _tiny_preset_load(monkeypatch, name: str, tiny: dict):
    from dpms.models import checkpoints, edm_snapshot

    monkeypatch.setattr(checkpoints, "load", functools.partial(checkpoints.load, config_override=tiny))
    monkeypatch.setattr(edm_snapshot, "GENUINE_SOURCES", {**GENUINE_SOURCES, **STAND_IN})


def test_preset_loads_a_snapshot_and_samples(tmp_path, monkeypatch):
    tiny = {k: v for k, v in CASES["ddpmpp-uncond-edm"].items()}
    _tiny_preset_load(monkeypatch, "edm-cifar10-32x32-uncond-vp", tiny)
    from dpms.models import checkpoints

    path = write_snapshot(tmp_path / "edm-cifar10-32x32-uncond-vp.pkl", _filled("ddpmpp-uncond-edm"), tiny)
    model = checkpoints.load("edm-cifar10-32x32-uncond-vp", checkpoint=path)
    assert model.image_shape == (3, 8, 8) and model.num_classes is None and model.schedule.T == 80.0
    import dpms

    x_T = torch.randn(2, 3, 8, 8, dtype=torch.float64) * model.schedule.sigma(torch.tensor(80.0, dtype=torch.float64))
    x0 = dpms.sample(model, model.schedule, x_T, solver="dpmpp2m", nfe=6)
    assert torch.isfinite(x0).all() and x0.shape == x_T.shape


def test_preset_refuses_a_snapshot_of_another_network(tmp_path, monkeypatch):
    _tiny_preset_load(monkeypatch, "edm-cifar10-32x32-uncond-vp", CASES["ddpmpp-uncond-edm"])
    from dpms.models import checkpoints

    path = write_snapshot(tmp_path / "s.pkl", _filled("ncsnpp-cond-edm"), CASES["ncsnpp-cond-edm"])
    with pytest.raises(DpmsError) as error:
        checkpoints.load("edm-cifar10-32x32-uncond-vp", checkpoint=path)
    assert _one_line(error) == (
        f"EDM snapshot {path} describes embedding_type=fourier, but preset edm-cifar10-32x32-uncond-vp has "
        "embedding_type=positional; point the preset at its own file"
    )


def test_a_flat_file_for_an_edm_preset_is_refused_naming_both_formats(tmp_path):
    path = tmp_path / "flat.pt"
    torch.save({"a": torch.zeros(1)}, path)
    with pytest.raises(DpmsError) as error:
        load("edm-cifar10-32x32-uncond-vp", checkpoint=path)
    assert _one_line(error).startswith(f"{path} is a flat checkpoint but preset edm-cifar10-32x32-uncond-vp declares format edm-pickle; ")


def test_cli_samples_an_edm_preset(tmp_path, monkeypatch, capsys):
    from dpms.cli import main

    tiny = dict(CASES["ncsnpp-cond-edm"])
    _tiny_preset_load(monkeypatch, "edm-cifar10-32x32-cond-ve", tiny)
    path = write_snapshot(tmp_path / "m.pkl", _filled("ncsnpp-cond-edm"), tiny)
    out = tmp_path / "out"
    code = main(["sample", "--model", "edm-cifar10-32x32-cond-ve", "--checkpoint", str(path), "--solver", "dpmpp2m",
                 "--nfe", "4", "--num", "3", "--no-png", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    with np.load(out / "samples.npz") as f:
        assert f["samples"].shape == (3, 8, 8, 3) and f["samples"].dtype == np.uint8
        assert f["labels"].shape == (3,)


def test_models_lists_the_edm_presets(capsys):
    from dpms.cli import main

    assert main(["models"]) == 0
    listed = capsys.readouterr().out
    for name in EDM_PRESETS:
        assert name[:12] in listed


def test_fid_reads_edms_reference_statistics(tmp_path):
    """EDM's fid.py writes np.savez(mu=..., sigma=...); dpms's statistics reader takes it as it is."""
    from dpms.evaluation.frechet import frechet_distance
    from dpms.evaluation.fid import fid_between

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(500, 4)), rng.normal(loc=0.3, size=(500, 4))
    for name, feats in (("ref", a), ("gen", b)):
        with open(tmp_path / f"{name}.npz", "wb") as f:
            np.savez(f, mu=feats.mean(0), sigma=np.cov(feats, rowvar=False))
    value = fid_between(tmp_path / "gen.npz", tmp_path / "ref.npz")
    expected = frechet_distance(b.mean(0), np.cov(b, rowvar=False), a.mean(0), np.cov(a, rowvar=False))
    assert value == pytest.approx(expected, rel=1e-12)


# ------------------------------------------------------------------------------------------ EDM's own sampler
def _has_solver(name: str) -> bool:
    from dpms.sampler.registry import get_solver

    try:
        get_solver(name)
        return True
    except DpmsError:
        return False


@pytest.mark.parametrize("name", SAMPLER_CASES)
def test_edm_sampler_is_heun_on_the_karras_grid_with_a_final_euler_step(name):
    """EDM's `edm_sampler` (18 steps, ρ = 7, S_churn = 0, NFE 35) is dpms's heun on skip="karras" with
    denoise_to_zero, NFE 35, on the edm schedule (reference: EDM's code on the same random weights)."""
    if not _has_solver("heun"):
        pytest.skip("needs the heun solver, skip='karras' and denoise_to_zero (issue 13, engineer solvers-b): not on main yet")
    import dpms

    reference = torch.load(DATA / "sampler.pt", weights_only=True)
    kwargs, data = CASES[name], sampler_latents(CASES[name])
    net = _filled(name)
    calls = []

    def counted(x, sigma, y=None):
        calls.append(x.shape[0])
        return LabelIndexAdapter(net)(x, sigma, y)

    schedule = NoiseSchedule.edm()
    noise_fn = wrap_model(counted, schedule, model_type="denoiser", condition=data.get("labels"))
    x_T = data["latents"] * 80.0 * schedule.alpha(torch.tensor(80.0, dtype=torch.float64))  # x_VP = α x_VE
    x0 = dpms.sample(noise_fn, schedule, x_T, solver="heun", skip="karras", nfe=35, denoise_to_zero=True)
    assert len(calls) == int(reference[f"{name}/nfe"]) == 35
    torch.testing.assert_close(x0, reference[f"{name}/x0"], rtol=1e-5, atol=1e-5)


def test_half_precision_autocast_follows_the_dtype_option():
    """`--dtype` is autocast (`noise_fn(autocast_dtype=...)`); EDM networks run under it (bf16 on the CPU here;
    fp16 on CUDA, where `use_fp16` networks also cast their U-Net to fp16 as EDM does)."""
    net = _filled("adm-cond-edm")
    schedule, y = NoiseSchedule.edm(), torch.tensor([1, 2, 3, 4])
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([0.05, 0.5, 5.0, 50.0])
    full = wrap_model(LabelIndexAdapter(net), schedule, model_type="denoiser", condition=y)(x, t)
    half = wrap_model(LabelIndexAdapter(net), schedule, model_type="denoiser", condition=y, autocast_dtype=torch.bfloat16)(x, t)
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    assert (half - full).norm() / full.norm() < 0.05
    assert not torch.equal(half, full)


def test_download_of_an_edm_preset_fetches_the_snapshot_into_place(tmp_path, monkeypatch):
    """`dpms download` of an EDM preset: the edm-pickle format fetches one file (no published hash), atomically,
    and the downloaded file is found and read as that preset's snapshot."""
    import dataclasses

    from dpms.models import checkpoints
    from dpms.models.download import download

    (tmp_path / "mirror").mkdir()
    source = write_snapshot(tmp_path / "mirror" / "m.pkl", _filled("ddpmpp-uncond-edm"), CASES["ddpmpp-uncond-edm"])
    preset = dataclasses.replace(get_preset("edm-cifar10-32x32-uncond-vp"), url=source.as_uri())
    path = download(preset, to=tmp_path / "root")
    assert path == tmp_path / "root" / "edm" / "edm-cifar10-32x32-uncond-vp.pkl"
    assert path.read_bytes() == source.read_bytes() and sorted(p.name for p in path.parent.iterdir()) == [path.name]
    monkeypatch.setenv("DPMS_CHECKPOINTS", str(tmp_path / "root"))
    assert checkpoints.find_checkpoint(preset) == path
    _tiny_preset_load(monkeypatch, preset.name, CASES["ddpmpp-uncond-edm"])
    assert checkpoints.load(preset.name).image_shape == (3, 8, 8)
