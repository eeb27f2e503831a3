"""Case reading and slice sampling: normalisation, candidate slices, seeded quotas, slice rendering."""

from __future__ import annotations

import numpy as np
import pytest

from components.metrics.slices import (
    INCEPTION_SIZE,
    brain_box,
    brain_mask,
    candidate_slices,
    case_rng,
    normalise,
    slice_images,
    slice_quotas,
)


def test_brain_window_maps_to_zero_one_and_zeroes_the_background():
    vol = np.zeros((10, 10, 10), np.float32)
    vol[2:8, 2:8, 2:8] = np.linspace(50.0, 100.0, 216).reshape(6, 6, 6)
    brain = brain_mask([vol])
    assert brain.sum() == 216
    out = normalise(vol, brain, (0.0, 100.0))
    assert out.dtype == np.float32 and out[brain].min() == 0.0 and out[brain].max() == 1.0
    assert not out[~brain].any()
    assert brain_box(brain, margin=1) == (slice(1, 9), slice(1, 9), slice(1, 9))


def test_candidate_slices_keep_planes_with_enough_brain():
    brain = np.zeros((8, 8, 8), bool)
    brain[2:6, 2:6, 2:6] = True
    brain[6, 3, 3] = True  # one voxel: 1/16 of the largest area in plane 0
    assert candidate_slices(brain, 0, 0.25).tolist() == [2, 3, 4, 5]
    assert candidate_slices(brain, 0, 0.05).tolist() == [2, 3, 4, 5, 6]
    assert candidate_slices(np.zeros((4, 4, 4), bool), 1, 0.25).size == 0


def test_case_generators_and_quotas_depend_on_names_not_order():
    a, b = case_rng(3, "C1", "t1c"), case_rng(3, "C1", "t1c")
    assert a.integers(1 << 30) == b.integers(1 << 30)
    assert case_rng(3, "C1", "t1c").integers(1 << 30) != case_rng(3, "C2", "t1c").integers(1 << 30)
    q = slice_quotas(["C2", "C0", "C1"], 8, 0, "t1c", "0")
    assert sum(q.values()) == 8 and sorted(q.values()) == [2, 3, 3]
    assert q == slice_quotas(["C0", "C1", "C2"], 8, 0, "t1c", "0")
    assert slice_quotas([], 8, 0) == {}


def test_slices_keep_their_physical_aspect_on_a_minus_one_background():
    vol = np.ones((20, 10, 10), np.float32)  # 20 x 10 voxels at 1 x 2 mm in plane 2: a square, no background
    out = slice_images(vol, 2, [3, 4], (1.0, 2.0, 1.0), size=32)
    assert out.shape == (2, 32, 32) and np.all(out == pytest.approx(1.0))
    wide = slice_images(vol, 2, [3], (1.0, 1.0, 1.0), size=32)[0]  # 20 x 10 mm: half the height is background
    assert np.all(wide[:, :6] == -1.0) and np.all(wide[:, 26:] == -1.0) and wide[16, 16] == pytest.approx(1.0)
    assert slice_images(vol, 0, [], (1.0, 1.0, 1.0)).shape == (0, INCEPTION_SIZE, INCEPTION_SIZE)
