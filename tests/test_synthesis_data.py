"""Synthesizer data: conditioning channels, grid fitting with true affines, intensity scaling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.synthesis.config import DataConfig, SynthesisError
from components.synthesis.data import (
    condition_labels,
    denormalise,
    fallback_head_mask,
    fit_case,
    intensity_window,
    n_condition_channels,
    normalise,
    one_hot,
)
from data_catalog import load_label_scheme
from tests import builders as b


@pytest.mark.parametrize("scheme_name,expected", [("brats2023", 5), ("brats2024_post", 6), ("brats2021", 5)])
def test_condition_channels_come_from_the_scheme_without_dead_channels(scheme_name, expected):
    scheme = load_label_scheme(scheme_name)
    values = sorted(scheme.labels.values())
    seg = np.zeros((6, 6, 6), np.uint8)
    for i, v in enumerate(values):
        seg[i, 0, 0] = v
    head = np.zeros_like(seg, bool)
    head[:, :, 1:5] = True
    labels = condition_labels(seg, head, scheme)
    oh = one_hot(torch.from_numpy(labels)[None], n_condition_channels(scheme))[0]
    assert n_condition_channels(scheme) == expected
    assert torch.all(oh.sum(0) == 1)
    # every channel is used: background, head and each tumour label (2021's label 4 -> channel 4)
    assert sorted(np.unique(labels).tolist()) == list(range(expected))
    assert labels[0, 5, 5] == 0 and labels[0, 5, 2] == 1 and labels[0, 0, 0] == 2


def test_condition_labels_refuse_values_outside_the_scheme():
    seg = np.zeros((4, 4, 4), np.uint8)
    seg[0, 0, 0] = 4
    with pytest.raises(SynthesisError, match="not in label scheme"):
        condition_labels(seg, seg > 0, load_label_scheme("brats2023"))


def _world_labels(seg: np.ndarray, affine: np.ndarray, src_seg: np.ndarray, src_affine: np.ndarray) -> float:
    """Fraction of voxels whose label equals the source label at the same world position."""
    idx = np.argwhere(np.ones(seg.shape, bool))
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    src = np.rint((world - src_affine[:3, 3]) @ np.linalg.inv(src_affine[:3, :3]).T).astype(int)
    inside = np.all((src >= 0) & (src < np.array(src_seg.shape)), axis=1)
    ref = np.zeros(len(idx), np.uint8)
    ref[inside] = src_seg[tuple(src[inside].T)]
    return float((ref == seg[tuple(idx.T)]).mean())


def test_fit_case_crops_to_the_profile_shape_with_a_true_affine_and_inverts():
    images, seg, head = b.tissue_case(1)
    aff = b.affine(b.TISSUE_SPACING)
    fc = fit_case(images, seg, head, aff, DataConfig(shape=(16, 16, 16)))
    assert fc.seg.shape == fc.head.shape == (16, 16, 16) and fc.images.shape == (4, 16, 16, 16)
    assert not fc.resampled and fc.lost_tumour_voxels == 0 and fc.lost_head_voxels == 0
    assert _world_labels(fc.seg, fc.affine, seg, aff) == 1.0
    np.testing.assert_allclose(fc.grid_affine, aff)
    back = fc.to_grid(fc.seg[None].astype(np.float32))[0]
    assert back.shape == seg.shape
    np.testing.assert_array_equal(back, seg)


def test_fit_case_resamples_images_linear_and_labels_nearest_with_the_new_affine():
    images, seg, head = b.tissue_case(2)
    aff = b.affine(b.TISSUE_SPACING)
    fc = fit_case(images, seg, head, aff, DataConfig(spacing=(2.0, 2.0, 2.0), shape=(16, 16, 16)))
    assert fc.resampled
    np.testing.assert_allclose(np.abs(np.diag(fc.grid_affine)[:3]), [2.0, 2.0, 2.0])
    np.testing.assert_allclose(np.abs(np.diag(fc.affine)[:3]), [2.0, 2.0, 2.0])
    assert set(np.unique(fc.seg)) <= set(np.unique(seg))  # nearest: no new label values
    assert _world_labels(fc.grid_seg, fc.grid_affine, seg, aff) > 0.9
    # tumour centre at the same place in millimetres (within one voxel)
    def centre(s, a):
        return a[:3, :3] @ np.argwhere(s > 0).mean(0) + a[:3, 3]
    assert np.linalg.norm(centre(fc.seg, fc.affine) - centre(seg, aff)) < 2.0
    assert fc.to_grid(np.zeros((4, 16, 16, 16), np.float32)).shape[1:] == fc.grid_seg.shape


def test_normalise_maps_the_head_window_to_minus_one_one_and_back():
    images, seg, head = b.tissue_case(3)
    lo, hi = intensity_window(images, head, (0.5, 99.5))
    x = normalise(images, head, lo, hi)
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert np.all(x[:, ~head] == -1.0)
    back = denormalise(x, head, lo, hi)
    assert np.all(back[:, ~head] == 0.0)
    inside = head & np.all((images >= lo[:, None, None, None]) & (images <= hi[:, None, None, None]), axis=0)
    np.testing.assert_allclose(back[:, inside], images[:, inside], rtol=1e-4, atol=1e-2)


def test_fallback_head_mask_is_nonzero_voxels_plus_tumour():
    images, seg, head = b.tissue_case(0)
    images[:, seg > 0] = 0.0
    assert np.array_equal(fallback_head_mask(images, seg), head)
