"""Plausibility checks for augmented masks, each failure named by a reason.

Arrays are (X, Y, Z): ``seg`` holds tumour labels of one label scheme (0 background), ``head`` is
bool. Regions are the label scheme's regions (e.g. brats2023: WT {1,2,3}, TC {1,3}, ET {3}); no
label value is written in this module.

Reasons (a candidate can fail several; every failing one is counted):

- ``tumour_outside_head``: some tumour voxel (seg > 0) lies outside the head.
- ``label_lost``: a tumour label present in the source seg is absent from the candidate.
- ``nesting``: an inner region leaks out of its outer region more than in the source. For every
  pair of regions (inner, outer) whose label sets satisfy inner < outer (strict subset; brats2023:
  TC in WT, ET in TC, ET in WT), the *exposure* of inner in outer is the fraction of inner's
  boundary faces (6-neighbour faces between an inner voxel and a non-inner voxel; outside the
  array counts as background) whose non-inner voxel is also outside outer. E.g. exposure(TC in
  WT) is the share of the core's surface that touches healthy tissue instead of oedema. Nesting
  holds when, for every pair, exposure(candidate) <= exposure(source) + ``nesting_tolerance``;
  an empty inner region has exposure 0.
- ``volume_bounds``: the WT volume (voxel count x voxel volume, mm^3) is outside
  ``volume_mm3_wt``, or for a region present in the source, volume(candidate)/volume(source) is
  outside ``volume_ratio``.
- ``stray_fragment``: for some region, the candidate has more 26-connected components smaller than
  ``min_fragment_mm3`` than the source has (the source's own specks are tolerated, new ones not).
- ``head_clipped``: the head touches a face of the array that the source head did not touch
  (part of the head was pushed out of the field of view).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from components.masks.augment import bbox
from components.masks.config import CheckConfig

CHECK_REASONS: tuple[str, ...] = (
    "tumour_outside_head", "label_lost", "nesting", "volume_bounds", "stray_fragment", "head_clipped",
)
_STRUCT26 = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class MaskReference:
    """What a candidate is compared with: measurements of its source seg and host head."""

    labels: tuple[int, ...]
    regions: dict[str, tuple[int, ...]]
    spacing: tuple[float, float, float]
    volumes_mm3: dict[str, float]
    fragments: dict[str, int]
    exposure: dict[str, float]  # key "inner<outer"
    head_faces: tuple[bool, ...]  # does the head touch each of the 6 array faces


def _crop(seg: np.ndarray) -> np.ndarray:
    """Tumour bounding box padded by one background voxel on every side (all checks are local)."""
    box = bbox(seg)
    if box is None:
        return np.zeros((1, 1, 1), dtype=seg.dtype)
    return np.pad(seg[tuple(slice(a, b + 1) for a, b in zip(*box, strict=True))], 1)


def nested_pairs(regions: Mapping[str, Sequence[int]]) -> list[tuple[str, str]]:
    """(inner, outer) region pairs with set(inner) a strict subset of set(outer)."""
    return [(a, b) for a, b in itertools.permutations(regions, 2) if set(regions[a]) < set(regions[b])]


def _exposure(crop: np.ndarray, inner: Sequence[int], outer: Sequence[int]) -> float:
    m_in = np.isin(crop, inner)
    if not m_in.any():
        return 0.0
    m_out = np.isin(crop, outer)
    faces = exposed = 0
    for ax in range(3):
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[ax], b[ax] = slice(0, -1), slice(1, None)
        ia, ib = m_in[tuple(a)], m_in[tuple(b)]
        oa, ob = m_out[tuple(a)], m_out[tuple(b)]
        faces += int((ia & ~ib).sum() + (ib & ~ia).sum())
        exposed += int((ia & ~ob).sum() + (ib & ~oa).sum())
    return exposed / faces if faces else 0.0


def _n_fragments(crop: np.ndarray, labels: Sequence[int], min_voxels: float) -> int:
    lab, n = ndi.label(np.isin(crop, labels), structure=_STRUCT26)
    if n == 0:
        return 0
    sizes = np.bincount(lab.ravel())[1:]
    return int((sizes < min_voxels).sum())


def _head_faces(head: np.ndarray) -> tuple[bool, ...]:
    return tuple(bool(head.take(i, axis=ax).any()) for ax in range(3) for i in (0, -1))


def _volumes(crop: np.ndarray, regions: Mapping[str, Sequence[int]], voxel_mm3: float) -> dict[str, float]:
    return {r: float(np.isin(crop, labs).sum()) * voxel_mm3 for r, labs in regions.items()}


def _wt_labels(regions: Mapping[str, Sequence[int]]) -> tuple[int, ...]:
    return tuple(regions["WT"]) if "WT" in regions else tuple(sorted({v for labs in regions.values() for v in labs}))


def mask_reference(
    seg: np.ndarray, head: np.ndarray, regions: Mapping[str, Sequence[int]], spacing: Sequence[float], config: CheckConfig
) -> MaskReference:
    """Measure a source seg (and the head the candidate will live in) once, for ``check_mask``."""
    sp = tuple(float(s) for s in spacing)
    voxel = float(np.prod(sp))
    crop = _crop(np.asarray(seg))
    regs = {k: tuple(int(v) for v in labs) for k, labs in regions.items()}
    return MaskReference(
        labels=tuple(int(v) for v in np.flatnonzero(np.bincount(crop.ravel())) if v != 0),
        regions=regs,
        spacing=sp,
        volumes_mm3=_volumes(crop, regs, voxel),
        fragments={r: _n_fragments(crop, labs, config.min_fragment_mm3 / voxel) for r, labs in regs.items()},
        exposure={f"{i}<{o}": _exposure(crop, regs[i], regs[o]) for i, o in nested_pairs(regs)},
        head_faces=_head_faces(np.asarray(head, dtype=bool)),
    )


def check_mask(seg: np.ndarray, head: np.ndarray, reference: MaskReference, config: CheckConfig) -> list[str]:
    """Reasons (from ``CHECK_REASONS``) why the candidate (seg, head) is implausible; [] when it passes."""
    seg = np.asarray(seg)
    head = np.asarray(head, dtype=bool)
    if seg.shape != head.shape:
        raise ValueError(f"check_mask: seg shape {seg.shape} differs from head shape {head.shape}")
    voxel = float(np.prod(reference.spacing))
    regs = reference.regions
    crop = _crop(seg)
    reasons: list[str] = []
    if bool(((seg > 0) & ~head).any()):
        reasons.append("tumour_outside_head")
    present = set(int(v) for v in np.flatnonzero(np.bincount(crop.ravel())))
    if any(v not in present for v in reference.labels):
        reasons.append("label_lost")
    for i, o in nested_pairs(regs):
        if _exposure(crop, regs[i], regs[o]) > reference.exposure.get(f"{i}<{o}", 0.0) + config.nesting_tolerance:
            reasons.append("nesting")
            break
    vols = _volumes(crop, regs, voxel)
    wt = float(np.isin(crop, _wt_labels(regs)).sum()) * voxel
    bad_volume = reference.labels and not (config.volume_mm3_wt[0] <= wt <= config.volume_mm3_wt[1])
    for r, v_src in reference.volumes_mm3.items():
        if v_src > 0 and not (config.volume_ratio[0] <= vols[r] / v_src <= config.volume_ratio[1]):
            bad_volume = True
    if bad_volume:
        reasons.append("volume_bounds")
    min_vox = config.min_fragment_mm3 / voxel
    if any(_n_fragments(crop, labs, min_vox) > reference.fragments.get(r, 0) for r, labs in regs.items()):
        reasons.append("stray_fragment")
    faces = _head_faces(head)
    if any(f and not f0 for f, f0 in zip(faces, reference.head_faces, strict=True)):
        reasons.append("head_clipped")
    return reasons
