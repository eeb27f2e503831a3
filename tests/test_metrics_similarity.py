"""Similarity of volume pairs: MS-SSIM sizes and values, in-brain PSNR/SSIM, the pairs compared."""

from __future__ import annotations

import math

import numpy as np
import pytest

from components.metrics.similarity import msssim_3d, msssim_params, psnr_ssim_in_brain, random_pairs, union_box


@pytest.mark.parametrize("shape, expected", [
    ((240, 240, 155), (7, 5)),  # BraTS: kernel 7, five scales
    ((96, 96, 96), (5, 5)),     # reference A4: 96^3 needs kernel <= 5
    ((32, 32, 32), (3, 4)),     # test sizes: fewer scales
])
def test_msssim_parameters_fit_the_volume(shape, expected):
    kernel, _, weights = msssim_params(shape)
    assert (kernel, len(weights)) == expected and sum(weights) == pytest.approx(1.0)


def test_msssim_runs_on_small_volumes_and_is_one_for_identical_ones():
    rng = np.random.default_rng(3)
    a = rng.random((32, 32, 32)).astype(np.float32)
    kernel, sigma, weights = msssim_params(a.shape)
    vals = msssim_3d([(a, a), (a, rng.random(a.shape).astype(np.float32))], kernel, sigma, weights)
    assert vals[0] == pytest.approx(1.0, abs=1e-5) and vals[1] < 0.9


def test_psnr_and_ssim_in_brain_are_perfect_for_identical_volumes_and_nan_without_a_brain():
    rng = np.random.default_rng(5)
    real = rng.random((16, 16, 16)).astype(np.float32)
    brain = np.zeros(real.shape, bool)
    brain[4:12, 4:12, 4:12] = True
    psnr, ssim = psnr_ssim_in_brain(real, real, brain)
    assert psnr == math.inf and ssim == pytest.approx(1.0)
    # a constant error of 0.1 inside the brain: MSE 0.01, PSNR 20 dB
    psnr, ssim = psnr_ssim_in_brain(real, real + np.float32(0.1), brain)
    assert psnr == pytest.approx(20.0, abs=1e-3) and ssim < 1.0
    assert all(math.isnan(v) for v in psnr_ssim_in_brain(real, real, np.zeros_like(brain)))


def test_random_pairs_are_seeded_and_capped_and_union_box_spans_every_mask():
    ids = [f"C{i}" for i in range(6)]
    assert random_pairs(ids[:3], 5, np.random.default_rng(0)) == [("C0", "C1"), ("C0", "C2"), ("C1", "C2")]
    a, b = random_pairs(ids, 4, np.random.default_rng(1)), random_pairs(ids, 4, np.random.default_rng(1))
    assert a == b and len(set(a)) == 4 and all(x < y for x, y in a)
    m1, m2 = np.zeros((10, 10, 10), bool), np.zeros((10, 10, 10), bool)
    m1[2:4, 3:5, 4:6] = True
    m2[6:7, 1:2, 8:9] = True
    assert union_box([m1, m2], margin=1) == (slice(1, 8), slice(0, 6), slice(3, 10))
    assert union_box([np.zeros((4, 4, 4), bool)]) is None
