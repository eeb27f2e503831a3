"""Head label from all four modalities together (components.masks.derive_head_mask)."""

from __future__ import annotations

import numpy as np
import pytest

from components.masks import derive_head_mask
from tests import builders as b


def test_head_is_bool_and_matches_the_tissue():
    images, seg, head = b.mask_case(0)
    out = derive_head_mask(images, seg, spacing=b.MASK_SPACING)
    assert out.dtype == bool and out.shape == seg.shape
    dice = 2 * (out & head).sum() / (out.sum() + head.sum())
    assert dice > 0.97


def test_tissue_bright_in_one_modality_only_is_head():
    """GliomaGen kept the last modality's mask (t2f); a tissue dark in t2f must still count."""
    images, seg, head = b.mask_case(1)
    # a slab at the head's edge that only t2w (channel 2) sees, dark in the last channel
    edge = np.zeros(seg.shape, bool)
    edge[20:24, 20:24, 1:4] = True
    edge &= ~head
    images[:, edge] = 0.0
    images[2, edge] = 1500.0
    out = derive_head_mask(images, seg, spacing=b.MASK_SPACING)
    assert out[edge].all()
    only_last = derive_head_mask(images[3:], seg, spacing=b.MASK_SPACING)
    assert not only_last[edge].any()


def test_enclosed_dark_cavity_is_filled_and_specks_outside_are_dropped():
    images, seg, head = b.mask_case(2)
    cavity = np.zeros(seg.shape, bool)
    cavity[12:16, 18:22, 14:18] = True
    cavity &= seg == 0
    images[:, cavity] = 0.0
    images[:, 0:2, 0:2, 0:2] = 2000.0  # a bright speck outside the head
    out = derive_head_mask(images, seg, spacing=b.MASK_SPACING)
    assert out[cavity].all()
    assert not out[0:2, 0:2, 0:2].any()


def test_every_tumour_voxel_is_inside_the_head():
    images, seg, _ = b.mask_case(3)
    images[:, seg > 0] = 0.0  # the tumour is invisible in every modality
    seg[0:3, 0:3, 0:3] = 2  # and a piece lies outside the tissue altogether
    out = derive_head_mask(images, seg, spacing=b.MASK_SPACING)
    assert out[seg > 0].all()


def test_without_seg_and_with_anisotropic_spacing():
    images, _, head = b.mask_case(4)
    out = derive_head_mask(images, None, spacing=(1.0, 1.2, 2.5))
    assert 2 * (out & head).sum() / (out.sum() + head.sum()) > 0.97


@pytest.mark.parametrize("bad", ["3d", "seg_shape", "spacing"])
def test_bad_inputs_raise_value_error(bad):
    images, seg, _ = b.mask_case(0)
    with pytest.raises(ValueError):
        if bad == "3d":
            derive_head_mask(images[0], seg)
        elif bad == "seg_shape":
            derive_head_mask(images, seg[:-1])
        else:
            derive_head_mask(images, seg, spacing=(1.0, 0.0, 1.0))
