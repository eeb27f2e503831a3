"""Whole-region overlap and surface scores: spacing in HD95/ASSD, empty-mask conventions."""

from __future__ import annotations

import numpy as np
import pytest

from components.metrics.surface import LEGACY_PENALTY_MM, dice_score, overlap_scores


def box(lo, hi, shape) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return m


@pytest.mark.parametrize("spacing, expected_hd", [((1.0, 1.0, 1.0), 1.0), ((1.0, 1.0, 3.0), 3.0)])
def test_hd95_applies_anisotropic_spacing(spacing, expected_hd):
    # GT: a 20 x 20 x 4 slab; prediction: the same slab grown by one slice on each side in z. Most of
    # the top and bottom faces (well over 5 % of either surface) lie one slice = spacing[2] mm from
    # the other mask, the sides coincide and nothing is farther: HD95 = spacing[2] (1 mm isotropic,
    # 3 mm at 1 x 1 x 3). Dice = 2 * 1600 / (1600 + 2400) = 0.8 whatever the spacing.
    shape = (32, 32, 24)
    gt, pred = box((6, 6, 8), (26, 26, 12), shape), box((6, 6, 7), (26, 26, 13), shape)
    s = overlap_scores(pred, gt, spacing)
    assert s["dice"] == pytest.approx(0.8)
    assert s["hd95"] == pytest.approx(expected_hd, abs=1e-5)
    assert 0 < s["assd"] < expected_hd


def sphere_mm(center_mm, r_mm, shape, spacing) -> np.ndarray:
    """{|x - c| <= r} with x the voxel positions in mm (``spacing`` per axis)."""
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum((g * s - c) ** 2 for g, s, c in zip(grid, spacing, center_mm, strict=True)) <= r_mm * r_mm


@pytest.mark.parametrize("axis", [0, 2])
@pytest.mark.parametrize("offset_mm", [2.0, 4.0, 8.0])
def test_hd95_of_two_spheres_offset_by_k_mm_is_about_k_mm_on_an_anisotropic_grid(axis, offset_mm):
    # Two 12 mm spheres offset by k mm, voxels of 1 x 1 x 2 mm: the farthest surface points are k mm
    # apart (the poles), most are nearer, so HD95 is a little under k along x (1 mm voxels) and along
    # z (2 mm voxels, half as many voxels for the same offset).
    spacing, shape = (1.0, 1.0, 2.0), (56, 48, 28)
    center = np.array([24.0, 24.0, 26.0])
    moved = center.copy()
    moved[axis] += offset_mm
    s = overlap_scores(sphere_mm(moved, 12.0, shape, spacing), sphere_mm(center, 12.0, shape, spacing), spacing)
    assert 0.85 * offset_mm <= s["hd95"] <= offset_mm + 1e-6
    assert 0 < s["assd"] < s["hd95"] and 0 < s["dice"] < 1


def test_empty_masks_follow_the_legacy_brats_conventions():
    empty, blob = np.zeros((8, 8, 8), bool), box((2, 2, 2), (5, 5, 5), (8, 8, 8))
    assert overlap_scores(empty, empty, (1.0, 1.0, 1.0)) == {"dice": 1.0, "hd95": 0.0, "assd": 0.0}
    for pred, gt in ((blob, empty), (empty, blob)):
        assert overlap_scores(pred, gt, (1.0, 1.0, 1.0)) == {"dice": 0.0, "hd95": LEGACY_PENALTY_MM,
                                                             "assd": LEGACY_PENALTY_MM}
    assert overlap_scores(blob, empty, (1.0, 1.0, 1.0), penalty=99.0)["hd95"] == 99.0
    assert dice_score(empty, empty) == 1.0 and dice_score(blob, blob) == 1.0 and dice_score(blob, empty) == 0.0
