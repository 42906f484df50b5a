"""dpms.sampler.noise: the x_T, step-noise and label streams of every sample are disjoint and depend
on (seed, i) alone."""

from __future__ import annotations

import pytest

from dpms.errors import DpmsError
from dpms.sampler.noise import MAX_SEED, label_seeds, labels, sample_seed, step_noise_seeds


def test_label_seeds_never_equal_a_noise_seed():
    indices = range(3000)
    noise = set()
    label = set()
    for seed in range(4):
        noise |= {sample_seed(seed, i) for i in indices} | set(step_noise_seeds(indices, seed))
        label |= set(label_seeds(indices, seed))
    assert len(noise) == 2 * 4 * 3000 and len(label) == 4 * 3000  # no collision inside a stream either
    assert not noise & label
    # The extremes: the largest noise seed of the largest seed and index is below the smallest label seed.
    top = max(sample_seed(MAX_SEED, 1_000_002), *step_noise_seeds([1_000_002], MAX_SEED))
    assert top < min(label_seeds([0], 0)) and max(label_seeds([1_000_002], MAX_SEED)) < 2**64


def test_labels_depend_on_the_sample_alone():
    whole = labels(1000, range(40), seed=5)
    assert labels(1000, range(20, 40), seed=5).tolist() == whole[20:].tolist()
    assert labels(1000, [7], seed=5).tolist() == [whole[7].item()]
    assert labels(1000, range(40), seed=6).tolist() != whole.tolist()


def test_x_T_and_step_seeds_are_those_of_the_committed_results():
    # The committed tables were sampled with these seeds; the label stream moved, these did not.
    assert sample_seed(3, 17) == 2 * (3 * 1_000_003 + 17) and step_noise_seeds([17], 3) == [sample_seed(3, 17) + 1]


@pytest.mark.parametrize("seed,index", [(-1, 0), (MAX_SEED + 1, 0), (0, -1), (0, 1_000_003)])
def test_out_of_range_seeds_and_indices_are_refused(seed, index):
    with pytest.raises(DpmsError, match="^(seed must lie in|sample index)"):
        sample_seed(seed, index)
