"""Reference outputs of NVlabs/edm's own code, for tests/test_edm.py. Run once, with an EDM checkout:

    python3 tests/edm_reference.py /path/to/NVlabs/edm     # writes tests/data/edm/*

EDM's code (CC BY-NC-SA 4.0) is imported from that checkout and never copied into this repository; only
its outputs are committed (small data). The tests build dpms's networks from the same `CASES`, fill them
with the same deterministic weights (`fill_`) and compare.

Writes
* `tests/data/edm/forward.pt`: D(x; σ) of EDM's networks (`training/networks.py`) for every case in `CASES`,
  with and without augment labels, on inputs from `inputs`;
* `tests/data/edm/sampler.pt`: EDM's `edm_sampler` (generate.py, S_churn = 0: deterministic Heun on the
  ρ = 7 grid, last step Euler to σ = 0) on two small networks, float64, with its network-call count;
* `tests/data/edm/full_size_keys.json`: state_dict keys and shapes and parameter counts of EDM's networks built
  from the network kwargs of the nine `arch: edm` presets in checkpoints/registry.yaml (meta device).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "edm"

_DDPMPP = dict(model_type="SongUNet", embedding_type="positional", encoder_type="standard", decoder_type="standard",
               channel_mult_noise=1, resample_filter=[1, 1])
_NCSNPP = dict(model_type="SongUNet", embedding_type="fourier", encoder_type="residual", decoder_type="standard",
               channel_mult_noise=2, resample_filter=[1, 3, 3, 1])
_SMALL_SONG = dict(model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0)

# Small networks covering every option the presets use, and the ones they do not (skip encoder/decoder,
# VP/VE preconditioning): EDM's network kwargs as `dpms.models.build("edm", kwargs)` takes them.
CASES: dict[str, dict] = {
    "ddpmpp-uncond-edm": dict(class_name="training.networks.EDMPrecond", **_DDPMPP, **_SMALL_SONG, augment_dim=9,
                              img_resolution=8, img_channels=3, label_dim=0, use_fp16=False),
    "ncsnpp-cond-edm": dict(class_name="training.networks.EDMPrecond", **_NCSNPP, **_SMALL_SONG, augment_dim=9,
                            img_resolution=8, img_channels=3, label_dim=10, use_fp16=False),
    "ncsnpp-skip-vp": dict(class_name="training.networks.VPPrecond", **{**_NCSNPP, "encoder_type": "skip", "decoder_type": "skip"},
                           **{**_SMALL_SONG, "channel_mult": [1, 2, 2]}, img_resolution=8, img_channels=3, label_dim=0,
                           use_fp16=False),
    "ddpmpp-cond-ve": dict(class_name="training.networks.VEPrecond", **_DDPMPP, **_SMALL_SONG, img_resolution=8,
                           img_channels=3, label_dim=10, use_fp16=False),
    "adm-cond-edm": dict(class_name="training.networks.EDMPrecond", model_type="DhariwalUNet", model_channels=64,
                         channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0, augment_dim=9,
                         img_resolution=8, img_channels=3, label_dim=10, use_fp16=True),
}
SAMPLER_CASES = ("ddpmpp-uncond-edm", "adm-cond-edm")
SIGMAS = (0.002, 0.3, 2.0, 80.0)


def fill_(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Overwrite every parameter and the Fourier frequencies with seeded values, key by key in sorted order
    (the resampling filters keep their fixed values). Weights of size ~1/√fan_in keep activations O(1)."""
    generator = torch.Generator().manual_seed(seed)
    state = net.state_dict()
    for key in sorted(state):
        if key.endswith("resample_filter"):
            continue
        tensor = state[key]
        values = torch.randn(tensor.shape, generator=generator, dtype=torch.float64)
        if tensor.dim() >= 2:
            values = values / (tensor[0].numel() ** 0.5)
        elif key.endswith("freqs"):
            values = values * 4.0
        elif "norm" in key and key.endswith("weight"):
            values = 1.0 + 0.1 * values
        else:
            values = 0.1 * values
        with torch.no_grad():
            tensor.copy_(values.to(tensor.dtype))
    return net


def inputs(kwargs: dict, seed: int = 1) -> dict[str, torch.Tensor]:
    """x, σ (one per sample, `SIGMAS`), one-hot class labels and augment labels for a case."""
    generator = torch.Generator().manual_seed(seed)
    n, c, r = len(SIGMAS), kwargs["img_channels"], kwargs["img_resolution"]
    sigma = torch.tensor(SIGMAS, dtype=torch.float32)
    x = torch.randn(n, c, r, r, generator=generator) * (1 + sigma.reshape(-1, 1, 1, 1) ** 2).sqrt()
    out = {"x": x, "sigma": sigma, "augment_labels": torch.randn(n, kwargs.get("augment_dim", 0) or 1, generator=generator)}
    if kwargs["label_dim"]:
        out["labels"] = torch.arange(n) * 3 % kwargs["label_dim"]
    return out


def one_hot(labels: torch.Tensor | None, label_dim: int) -> torch.Tensor | None:
    return None if labels is None else torch.nn.functional.one_hot(labels, label_dim).to(torch.float32)


def sampler_latents(kwargs: dict, seed: int = 2) -> dict[str, torch.Tensor]:
    """EDM's sampler input: standard normal latents (it scales them by σ_max itself) and class indices."""
    generator = torch.Generator().manual_seed(seed)
    c, r = kwargs["img_channels"], kwargs["img_resolution"]
    out = {"latents": torch.randn(2, c, r, r, generator=generator, dtype=torch.float64)}
    if kwargs["label_dim"]:
        out["labels"] = torch.tensor([3, 7])
    return out


def _edm_network(networks, kwargs: dict) -> torch.nn.Module:
    kwargs = dict(kwargs)
    cls = getattr(networks, kwargs.pop("class_name").rsplit(".", 1)[-1])
    return cls(**kwargs)


def main(upstream: str) -> None:
    sys.path.insert(0, str(Path(upstream).resolve()))
    torch.set_num_threads(1)
    from training import networks  # EDM's own code, from the checkout

    import generate  # EDM's generate.py: edm_sampler

    DATA.mkdir(parents=True, exist_ok=True)
    forward = {}
    for name, kwargs in CASES.items():
        torch.manual_seed(0)
        net = fill_(_edm_network(networks, kwargs).eval())
        data = inputs(kwargs)
        labels = one_hot(data.get("labels"), kwargs["label_dim"])
        with torch.no_grad():
            forward[f"{name}/D"] = net(data["x"], data["sigma"], labels)
            if kwargs.get("augment_dim"):
                forward[f"{name}/D_augment"] = net(data["x"], data["sigma"], labels, augment_labels=data["augment_labels"])
    torch.save(forward, DATA / "forward.pt")

    sampler = {}
    for name in SAMPLER_CASES:
        kwargs = CASES[name]
        torch.manual_seed(0)
        net = fill_(_edm_network(networks, kwargs).eval())
        calls = []

        def counted(x, sigma, class_labels=None, _net=net, _calls=calls):
            _calls.append(1)
            return _net(x, sigma, class_labels)

        counted.sigma_min, counted.sigma_max, counted.round_sigma = net.sigma_min, net.sigma_max, net.round_sigma
        data = sampler_latents(kwargs)
        with torch.no_grad():
            sampler[f"{name}/x0"] = generate.edm_sampler(counted, data["latents"], one_hot(data.get("labels"), kwargs["label_dim"]),
                                                         num_steps=18, sigma_min=0.002, sigma_max=80, rho=7)
        sampler[f"{name}/nfe"] = torch.tensor(len(calls))
    torch.save(sampler, DATA / "sampler.pt")

    import yaml

    registry = yaml.safe_load((REPO / "checkpoints" / "registry.yaml").read_text())["presets"]
    keys = {}
    for name, preset in registry.items():
        if preset.get("arch") != "edm":
            continue
        with torch.device("meta"):
            net = _edm_network(networks, preset["config"])
        keys[name] = {"params": sum(p.numel() for p in net.parameters()),
                      "state_dict": [[k, list(v.shape)] for k, v in net.state_dict().items()]}
    (DATA / "full_size_keys.json").write_text("{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}" for k, v in keys.items()) + "\n}\n")
    print(f"wrote {DATA}/forward.pt, sampler.pt, full_size_keys.json")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python3 tests/edm_reference.py /path/to/NVlabs/edm")
    main(sys.argv[1])
