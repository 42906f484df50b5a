"""A random-weight network of the FID Inception architecture, for tests that must not download the
91 MB pytorch-fid weights. Not a test module: test_evaluation and test_bench import it."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dpms.evaluation import inception as dpms_inception


def save_random_fid_inception(path: Path) -> str:
    """Save a random-weight FID Inception state_dict at `path`; return its sha256.

    Batch-norm statistics are calibrated on two small noise images so activations keep their scale
    through the network (with default initialisation they would shrink to ~1e-8 by pool3)."""
    torch.manual_seed(0)
    net = dpms_inception.build_fid_inception()
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # running stats = this batch's stats
    net.train()
    with torch.no_grad():
        dpms_inception.InceptionPool3(net).layers(torch.randn(2, 3, 107, 107))  # small: 2×2 maps at the end
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return dpms_inception.file_sha256(path)
