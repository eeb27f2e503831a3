"""Tumour features in millimetres against analytic values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from components.masks import feature_columns, mask_features

REGIONS = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}


def _ellipsoid(shape, centre_vox, radii_mm, spacing, value=2):
    grids = np.meshgrid(*[(np.arange(n) - c) * s for n, c, s in zip(shape, centre_vox, spacing, strict=True)], indexing="ij")
    inside = sum((g / r) ** 2 for g, r in zip(grids, radii_mm, strict=True)) <= 1.0
    return np.where(inside, value, 0).astype(np.uint8)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.0, 1.2, 2.5)])
def test_ball_volume_surface_sphericity_in_mm(spacing):
    r = 12.0
    shape = tuple(int(math.ceil(2 * r / s)) + 6 for s in spacing)
    centre = tuple((n - 1) / 2 for n in shape)
    seg = _ellipsoid(shape, centre, (r, r, r), spacing)
    f = mask_features(seg, REGIONS, spacing)
    assert f["volume_mm3_wt"] == pytest.approx(4 / 3 * math.pi * r**3, rel=0.05)
    # binary marching cubes: the voxel staircase adds 8-15 % to a ball's area (features.py docstring)
    assert 1.0 < f["surface_mm2_wt"] / (4 * math.pi * r**2) < 1.16
    assert 0.85 < f["sphericity_wt"] <= 1.0
    for k, a in enumerate("xyz"):
        assert f[f"centroid_{a}_mm_wt"] == pytest.approx(centre[k] * spacing[k], abs=1e-6)
        assert f[f"bbox_{a}_mm_wt"] == pytest.approx(2 * r, abs=2 * spacing[k] + 1e-6)
    assert f["n_components_wt"] == 1


def test_elongated_shape_is_less_spherical():
    sp = (1.0, 1.0, 1.0)
    ball = mask_features(_ellipsoid((40, 40, 40), (20, 20, 20), (10, 10, 10), sp), REGIONS, sp)
    rod = mask_features(_ellipsoid((40, 40, 40), (20, 20, 20), (18, 4, 4), sp), REGIONS, sp)
    assert rod["sphericity_wt"] < ball["sphericity_wt"] - 0.2


def test_regions_follow_the_label_scheme_and_empty_regions():
    sp = (2.0, 2.0, 2.0)
    seg = _ellipsoid((30, 30, 30), (15, 15, 15), (16, 16, 16), sp, value=2)
    seg[_ellipsoid((30, 30, 30), (15, 15, 15), (8, 8, 8), sp) > 0] = 3
    f = mask_features(seg, REGIONS, sp)
    assert f["volume_mm3_et"] == pytest.approx(np.sum(seg == 3) * 8.0)
    assert f["volume_mm3_tc"] == f["volume_mm3_et"]  # no necrosis: TC = ET
    assert f["volume_mm3_wt"] == pytest.approx(np.sum(seg > 0) * 8.0)
    empty = mask_features(np.zeros((8, 8, 8), np.uint8), REGIONS, sp)
    assert empty["volume_mm3_wt"] == 0 and math.isnan(empty["sphericity_wt"]) and math.isnan(empty["centroid_x_mm_wt"])
    assert list(f) == feature_columns(list(REGIONS))


def test_bad_input_raises():
    with pytest.raises(ValueError):
        mask_features(np.zeros((4, 4), np.uint8), REGIONS, (1, 1, 1))
    with pytest.raises(ValueError):
        mask_features(np.zeros((4, 4, 4), np.uint8), REGIONS, (1, -1, 1))
