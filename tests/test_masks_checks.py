"""Plausibility checks, verified by an independent checker written here (not the production one)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.measure import label as sk_label

from components.masks import (
    CHECK_REASONS,
    CheckConfig,
    MaskAugmentConfig,
    MaskCase,
    apply_mask_params,
    check_mask,
    derive_head_mask,
    mask_reference,
    sample_mask_params,
)
from data_catalog import load_label_scheme
from tests import builders as b

REGIONS = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}  # brats2023, spelled out on purpose
PAIRS = [("TC", "WT"), ("ET", "TC"), ("ET", "WT")]


def _exposure(seg: np.ndarray, inner, outer) -> float:
    """Share of inner's boundary faces whose outside neighbour is also outside ``outer``."""
    s = np.pad(seg, 1)
    boundary = exposed = 0
    for ax in range(3):
        for shift in (1, -1):
            nb = np.roll(s, shift, axis=ax)  # the pad keeps the wrap-around on background
            here_in = np.isin(s, inner)
            nb_in = np.isin(nb, inner)
            face = here_in & ~nb_in
            boundary += face.sum()
            exposed += (face & ~np.isin(nb, outer)).sum()
    return exposed / boundary if boundary else 0.0


def _small_parts(seg: np.ndarray, labels, min_vox: float) -> int:
    lab = sk_label(np.isin(seg, labels), connectivity=3)
    sizes = np.bincount(lab.ravel())[1:]
    return int(np.sum(sizes < min_vox))


def _faces(head: np.ndarray) -> list[bool]:
    return [head[0].any(), head[-1].any(), head[:, 0].any(), head[:, -1].any(), head[:, :, 0].any(), head[:, :, -1].any()]


def independent_violations(seg, head, src_seg, src_head, spacing, cfg: CheckConfig) -> set[str]:
    """The checks of components.masks.checks, re-derived from their written definition."""
    out = set()
    vox = float(np.prod(spacing))
    if np.count_nonzero(seg[~head.astype(bool)]):
        out.add("tumour_outside_head")
    if set(np.unique(src_seg)) - set(np.unique(seg)):
        out.add("label_lost")
    if any(_exposure(seg, REGIONS[i], REGIONS[o]) > _exposure(src_seg, REGIONS[i], REGIONS[o]) + cfg.nesting_tolerance
           for i, o in PAIRS):
        out.add("nesting")
    wt = np.isin(seg, REGIONS["WT"]).sum() * vox
    ratios = [np.isin(seg, labs).sum() / np.isin(src_seg, labs).sum() for labs in REGIONS.values()
              if np.isin(src_seg, labs).any()]
    if not cfg.volume_mm3_wt[0] <= wt <= cfg.volume_mm3_wt[1] or any(
            not cfg.volume_ratio[0] <= r <= cfg.volume_ratio[1] for r in ratios):
        out.add("volume_bounds")
    min_vox = cfg.min_fragment_mm3 / vox
    if any(_small_parts(seg, labs, min_vox) > _small_parts(src_seg, labs, min_vox) for labs in REGIONS.values()):
        out.add("stray_fragment")
    if any(f and not f0 for f, f0 in zip(_faces(head), _faces(src_head), strict=True)):
        out.add("head_clipped")
    return out


def _cases(n=3):
    cases = {}
    for i in range(n):
        images, seg, _ = b.mask_case(i)
        head = derive_head_mask(images, seg, spacing=b.MASK_SPACING)
        cases[f"c{i}"] = MaskCase(f"c{i}", "train", seg, head, b.MASK_SPACING, 0)
    return cases


def test_kept_and_rejected_masks_agree_with_the_independent_checker():
    cases = _cases()
    cfg = MaskAugmentConfig(
        flip={"p": 0.5}, affine={"p": 0.8, "rotation_deg": 15, "translation_mm": 8},
        elastic={"p": 0.8, "magnitude_mm": (1.0, 5.0)}, tumour_scale={"p": 0.8, "scale": (0.5, 1.8)},
        relocate={"p": 0.6, "p_other_case": 0.5},
    )
    regions = load_label_scheme("brats2023").regions
    kept = rejected = 0
    seen = set()
    for cid, case in cases.items():
        rng = np.random.default_rng(7)
        hosts = [h for h in cases if h != cid]
        for _ in range(16):
            p = sample_mask_params(rng, case, cfg, hosts, cases.__getitem__)
            host = cases[p.host_case]
            seg, head = apply_mask_params(case.seg, case.head, p, host.head)
            ref = mask_reference(case.seg, host.head, regions, case.spacing, cfg.checks)
            reasons = set(check_mask(seg, head, ref, cfg.checks))
            assert reasons == independent_violations(seg, head, case.seg, host.head, case.spacing, cfg.checks), p
            kept += not reasons
            rejected += bool(reasons)
            seen |= reasons
    assert kept >= 10 and rejected >= 5
    assert {"tumour_outside_head", "volume_bounds"} <= seen


@pytest.fixture
def source():
    images, seg, _ = b.mask_case(5)
    head = derive_head_mask(images, seg, spacing=b.MASK_SPACING)
    cfg = CheckConfig()
    ref = mask_reference(seg, head, load_label_scheme("brats2023").regions, b.MASK_SPACING, cfg)
    return seg, head, ref, cfg


def _assert_flags(source, seg, head, reason):
    src_seg, src_head, ref, cfg = source
    got = check_mask(seg, head, ref, cfg)
    assert reason in got
    assert reason in independent_violations(seg, head, src_seg, src_head, b.MASK_SPACING, cfg)


def test_source_itself_passes(source):
    seg, head, ref, cfg = source
    assert check_mask(seg, head, ref, cfg) == []
    assert independent_violations(seg, head, seg, head, b.MASK_SPACING, cfg) == set()


def test_tumour_outside_head(source):
    seg, head = source[0], source[1].copy()
    head[np.nonzero(seg == 2)[0][0]] = False  # cut a slab through the oedema out of the head
    _assert_flags(source, seg, head, "tumour_outside_head")


def test_label_lost(source):
    seg = source[0].copy()
    seg[seg == 1] = 3  # necrosis gone
    _assert_flags(source, seg, source[1], "label_lost")


def test_nesting(source):
    seg = source[0].copy()
    seg[seg == 2] = 0  # no oedema: the core touches healthy tissue everywhere
    _assert_flags(source, seg, source[1], "nesting")


def test_volume_bounds(source):
    seg = source[0].copy()
    idx = np.argwhere(seg == 2)
    seg[tuple(idx[: int(0.9 * len(idx))].T)] = 0  # lose most of the oedema
    _assert_flags(source, seg, source[1], "volume_bounds")


def test_stray_fragment(source):
    seg, head = source[0].copy(), source[1]
    far = head & (ndi.distance_transform_edt(seg == 0) > 3)  # head voxels 3+ voxels from the tumour
    x, y, z = np.argwhere(far)[0]
    seg[x, y, z] = 2  # a lone oedema voxel away from the tumour
    _assert_flags(source, seg, head, "stray_fragment")


def test_head_clipped(source):
    seg, head = source[0], source[1].copy()
    head[0, 18:22, 14:18] = True  # the head now reaches the x=0 face
    _assert_flags(source, seg, head, "head_clipped")


def test_reasons_are_the_documented_ones():
    assert set(CHECK_REASONS) == {"tumour_outside_head", "label_lost", "nesting", "volume_bounds", "stray_fragment",
                                  "head_clipped"}
