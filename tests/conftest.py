"""Shared test settings.

The reference facts (checkpoint key lists, published tables) live in `shared/reference/` beside the
repository checkout (`<repo>/../shared/reference`), where CI also puts them; `$DPMS_REFERENCE`
overrides the location. Tests that need them skip when the folder is absent, except in CI (CI=true),
where they run and fail.
"""

import json
import os
import re
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("DPMS_REFERENCE", REPO.parent / "shared" / "reference"))
KEYS = REFERENCE / "checkpoint-keys"  # one <name>.txt per public checkpoint (key, shape, dtype), and summary.json
needs_reference = pytest.mark.skipif(not KEYS.is_dir() and not os.environ.get("CI"), reason=f"reference key lists not found at {KEYS}")


def reference_rows(name: str) -> list[tuple[str, tuple[int, ...], str]]:
    """(key, shape, dtype) of every tensor of a public checkpoint, in file order (dtype "" where the dump has none)."""
    rows = []
    for line in (KEYS / f"{name}.txt").read_text().splitlines():
        key, shape, dtype = (line.split("\t") + [""])[:3]
        rows.append((key, tuple(int(n) for n in re.findall(r"\d+", shape)), dtype))
    return rows


def reference_keys(name: str) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) of every tensor of a public checkpoint, in file order."""
    return [(key, shape) for key, shape, _ in reference_rows(name)]


def reference_summary() -> dict:
    """summary.json: parameter counts and format facts per public checkpoint."""
    return json.loads((KEYS / "summary.json").read_text())


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny networks: on a shared 2-core machine OpenMP hand-offs cost more than the maths."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------ the exact model, for solver tests
@pytest.fixture(scope="module")
def gmm():
    from dpms.models import GaussianMixture

    return GaussianMixture.default()


@pytest.fixture(scope="module")
def problem(gmm):
    """16 prior draws and their DOP853 solution: the ground truth of convergence-order measurements."""
    from dpms.sampler import ode_reference

    x_T = gmm.prior(16, torch.Generator().manual_seed(0))
    return x_T, ode_reference(gmm, gmm.schedule, x_T)


def mean_error(x, ref) -> float:
    """Mean over samples of the L2 distance to the reference."""
    return (x - ref).pow(2).sum(1).sqrt().mean().item()
