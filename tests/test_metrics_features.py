"""Feature extractors: the random 3-D network, and FID behaviour of the features of a whole dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.metrics.distances import frechet_distance_features
from components.metrics.features import RandomConv3d, extract_features
from components.metrics.synthesis import SynthesisEvalConfig
from data_catalog import open_dataset
from tests import builders as b


def test_random_3d_network_is_fixed_by_its_seed_and_leaves_global_rng_alone():
    torch_state, np_state = torch.random.get_rng_state(), np.random.get_state()
    vol = np.random.default_rng(4).random((20, 24, 16)).astype(np.float32)
    nets = [RandomConv3d(seed=7, size=32), RandomConv3d(seed=7, size=32), RandomConv3d(seed=8, size=32)]
    feats = [n.features(n.prepare(vol, (1.0, 1.0, 2.0))[None]) for n in nets]
    assert feats[0].shape == (1, 256)
    np.testing.assert_array_equal(feats[0], feats[1])
    assert not np.allclose(feats[0], feats[2])
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    assert all(np.array_equal(x, y) for x, y in zip(np.random.get_state()[1:3], np_state[1:3], strict=True))


NOISE = (0.0, 0.1, 0.5)


@pytest.fixture(scope="module")
def fid_series(tmp_path_factory):
    """2-D FID of copies of a 4-case dataset with growing noise (3 slices per dataset: a few seconds)."""
    ws = tmp_path_factory.mktemp("fid")
    cases = {f"C{i}": b.brain_case(seed=i) for i in range(4)}
    b.write_metrics_dataset(ws, "real", cases)
    cfg = SynthesisEvalConfig(modalities=("t1c",), max_slices=3)
    net = RandomConv3d(cfg.rand3d_seed, 32)
    real = extract_features(open_dataset(ws, "real"), sorted(cases), cfg, "cpu", net)
    out = {}
    for sigma in NOISE:
        name = f"noise{sigma:g}"
        b.write_metrics_dataset(ws, name, b.noisy_copy(cases, sigma, seed=5), kind="synthetic")
        synth = extract_features(open_dataset(ws, name), sorted(cases), cfg, "cpu", net)
        out[sigma] = frechet_distance_features(real.inception["t1c"], synth.inception["t1c"])
    return out


def test_fid_of_a_dataset_against_its_copy_is_zero(fid_series):
    # Slice positions depend on the case id, not the dataset: an identical copy gives identical features.
    assert fid_series[0.0] == pytest.approx(0.0, abs=1e-3)


def test_fid_grows_monotonically_with_noise(fid_series):
    values = [fid_series[s] for s in NOISE]
    assert all(a < c for a, c in zip(values, values[1:], strict=False)), values

