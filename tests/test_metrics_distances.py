"""Distances between feature sets: the Frechet distance, KID, and the helpers of the real-vs-real floors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from components.metrics.distances import (
    floor_reason,
    frechet_distance,
    frechet_distance_features,
    kernel_inception_distance,
    kid_subset_size,
    subsample,
)


def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians():
    # |mu1 - mu2|^2 = 1 + 4 = 5; for commuting covariances the trace term is sum (sqrt(a) - sqrt(b))^2
    # = (1 - 2)^2 + (2 - 2)^2 + (3 - 1)^2 = 5: d^2 = 10, also after rotating both by one orthogonal matrix.
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
    s1, s2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 4.0, 1.0])
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(10.0, abs=1e-9)
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((3, 3)))
    assert frechet_distance(q @ mu1, q @ s1 @ q.T, q @ mu2, q @ s2 @ q.T) == pytest.approx(10.0, abs=1e-9)


def test_frechet_distance_of_few_samples_equals_the_covariance_route():
    # N < D takes the cross-Gram route; it must equal the D x D covariance formula.
    rng = np.random.default_rng(1)
    f1, f2 = rng.standard_normal((12, 40)), 1.3 * rng.standard_normal((9, 40)) + 0.2
    full = frechet_distance(f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False))
    assert frechet_distance_features(f1, f2) == pytest.approx(full, rel=1e-6)


def test_kid_is_near_zero_for_one_distribution_and_large_for_another():
    rng = np.random.default_rng(2)
    x, y, z = rng.standard_normal((60, 32)), rng.standard_normal((60, 32)), rng.standard_normal((60, 32)) + 1.0
    same, _ = kernel_inception_distance(x, y, np.random.default_rng(0), subset_size=30, subsets=20)
    shifted, _ = kernel_inception_distance(x, z, np.random.default_rng(0), subset_size=30, subsets=20)
    assert abs(same) < 0.05 * shifted


def test_kid_std_is_a_real_spread_when_the_sets_are_smaller_than_the_subset_size():
    # 10 rows each, subset size 100: subsets of the whole set would all be identical (std exactly 0).
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((10, 32)), rng.standard_normal((10, 32)) + 0.3
    kid, std = kernel_inception_distance(x, y, np.random.default_rng(0), subset_size=100, subsets=50)
    assert math.isfinite(kid) and std > 1e-6  # not rounding noise around an exact 0
    _, std3 = kernel_inception_distance(x[:3], y[:3], np.random.default_rng(0), subset_size=100, subsets=20)
    assert std3 > 1e-6  # 3 slices a side (the smallest report): subsets of 2


def test_frechet_distance_of_identical_gaussians_is_zero_and_grows_with_a_mean_shift():
    # Same covariance: the trace terms cancel and d^2 = |mu1 - mu2|^2, so a shift of k gives k^2.
    rng = np.random.default_rng(7)
    a = rng.standard_normal((5, 5))
    cov, mu = a @ a.T + np.eye(5), rng.standard_normal(5)
    assert frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-9)
    shift = np.eye(5)[0]
    values = [frechet_distance(mu, cov, mu + k * shift, cov) for k in (0.5, 1.0, 2.0)]
    assert values == [pytest.approx(k * k, abs=1e-9) for k in (0.5, 1.0, 2.0)]


def test_frechet_distance_of_feature_sets_needs_two_rows_a_side():
    f = np.random.default_rng(8).standard_normal((4, 3))
    assert math.isnan(frechet_distance_features(f[:1], f)) and math.isnan(frechet_distance_features(f, f[:1]))
    assert frechet_distance_features(f, f) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("n1, n2, size, expected", [(300, 400, 100, 100), (10, 40, 100, 5), (3, 3, 100, 2), (1, 9, 100, 0)])
def test_kid_subset_size_is_at_most_half_the_smaller_set(n1, n2, size, expected):
    assert kid_subset_size(n1, n2, size) == expected


def test_floor_subsample_takes_exactly_n_rows_in_order_and_says_why_a_floor_is_missing():
    rows = np.arange(20)[:, None] * np.ones((1, 3))
    picked = subsample(rows, 6, np.random.default_rng(0))
    assert picked.shape == (6, 3) and np.all(np.diff(picked[:, 0]) > 0) and set(picked[:, 0]) <= set(range(20))
    assert subsample(rows, 20, np.random.default_rng(0)) is rows
    assert floor_reason("slices", 3, 9, 0, "split 'test'") == "no real case outside split 'test' to compare with"
    assert "3 real slices outside split 'test' (from 2 cases), 9 needed" in floor_reason("slices", 3, 9, 2, "split 'test'")
