"""Reading a case for the synthesis scores and sampling its 2.5-D slices: brain mask, percentile
normalisation, seeded slice choice, and slices rendered at the FID Inception's input size."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage as ndi

from components.errors import InputError
from components.seeds import derive_rng
from data_catalog import Dataset

if TYPE_CHECKING:
    from components.metrics.synthesis import SynthesisEvalConfig

INCEPTION_SIZE = 299  # side of the FID Inception's input: slices are rendered at it
PLANES = (0, 1, 2)


class SynthesisMetricsError(InputError):
    """The datasets cannot be compared (missing extractor, no usable case, ...)."""


def brain_mask(volumes: Sequence[np.ndarray], threshold: float = 0.02) -> np.ndarray:
    """Brain = voxels above ``threshold`` x the 99.5th percentile in any modality ((X, Y, Z) each)."""
    mask = np.zeros(volumes[0].shape, dtype=bool)
    for v in volumes:
        hi = float(np.percentile(v, 99.5))
        if hi > 0:
            mask |= v > threshold * hi
    return mask


def normalise(volume: np.ndarray, brain: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """Map the brain's [p_lo, p_hi] intensity window to [0, 1], clip, and zero the background."""
    out = np.zeros(volume.shape, dtype=np.float32)
    if not brain.any():
        return out
    lo, hi = np.percentile(volume[brain], percentiles)
    scale = float(hi - lo) if hi > lo else 1.0
    out[brain] = np.clip((volume[brain] - lo) / scale, 0.0, 1.0)
    return out


def brain_box(brain: np.ndarray, margin: int = 2) -> tuple[slice, ...]:
    """Bounding box of the brain (+margin): slices are taken inside it, so field-of-view padding does not matter."""
    box = ndi.find_objects(brain.astype(np.uint8))
    if not box or box[0] is None:
        return tuple(slice(0, s) for s in brain.shape)
    return tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(box[0], brain.shape, strict=True))


def candidate_slices(brain: np.ndarray, plane: int, min_area: float) -> np.ndarray:
    """Indices along ``plane`` whose brain area is at least ``min_area`` x the plane's largest."""
    axes = tuple(a for a in range(3) if a != plane)
    area = brain.sum(axis=axes)
    if area.max() == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(area >= min_area * area.max())


def slice_images(volume01: np.ndarray, plane: int, indices: Sequence[int], spacing: Sequence[float],
                 size: int = INCEPTION_SIZE) -> np.ndarray:
    """Slices ``indices`` along ``plane`` of a [0, 1] volume -> (k, size, size) in [-1, 1].

    Physical aspect kept (resampled so the longer side spans ``size``), centred on a -1 background.
    """
    import torch
    import torch.nn.functional as F

    if len(indices) == 0:
        return np.zeros((0, size, size), np.float32)
    imgs = np.stack([np.take(volume01, int(i), axis=plane) for i in indices])
    sp = [s for a, s in enumerate(spacing) if a != plane]
    ext = (imgs.shape[1] * sp[0], imgs.shape[2] * sp[1])
    scale = size / max(ext)
    hw = (max(1, min(size, round(ext[0] * scale))), max(1, min(size, round(ext[1] * scale))))
    t = torch.from_numpy(np.ascontiguousarray(imgs, dtype=np.float32))[:, None]
    t = F.interpolate(t, size=hw, mode="bilinear", align_corners=False, antialias=True)[:, 0]
    out = torch.full((len(imgs), size, size), -1.0)
    y0, x0 = (size - hw[0]) // 2, (size - hw[1]) // 2
    out[:, y0:y0 + hw[0], x0:x0 + hw[1]] = t.clamp(0, 1) * 2 - 1
    return out.numpy()


def case_rng(seed: int, *keys: str) -> np.random.Generator:
    """A generator for one (case, modality, ...) that depends on the names, not on the dataset or order.

    The same case in two datasets gets the same slice positions: a dataset against itself scores 0.
    """
    h = hashlib.sha256("\0".join(keys).encode()).digest()
    return derive_rng(seed, int.from_bytes(h[:8], "little"))  # the names enter as one 64-bit sha256 word


@dataclass
class CaseData:
    """One case, normalised: volumes01[m] in [0, 1] (X, Y, Z), its brain mask and spacing."""

    case_id: str
    spacing: tuple[float, ...]
    brain: np.ndarray
    volumes01: dict[str, np.ndarray]


def load_case(ds: Dataset, case_id: str, modalities: Sequence[str], cfg: SynthesisEvalConfig) -> CaseData:
    """Read ``modalities`` of one case, find its brain (any modality) and normalise each inside it."""
    from components.io import load_nifti

    raw = {}
    spacing: tuple[float, ...] = (1.0, 1.0, 1.0)
    for m in modalities:
        path = ds.path(case_id, m)
        try:
            arr, _, spacing = load_nifti(path)
        except Exception as err:  # nibabel/gzip raise many types
            raise SynthesisMetricsError(
                f"dataset {ds.name!r}, case {case_id}: file {path} ({m}) is unreadable: {type(err).__name__}: {err}"
            ) from err
        if np.ndim(arr) != 3:
            raise SynthesisMetricsError(
                f"dataset {ds.name!r}, case {case_id}: file {path} ({m}) is not 3-D: found shape {np.shape(arr)}"
            )
        raw[m] = np.asarray(arr, dtype=np.float32)
    brain = brain_mask(list(raw.values()), cfg.brain_threshold)
    vols = {m: normalise(v, brain, cfg.percentiles) for m, v in raw.items()}
    return CaseData(case_id, tuple(spacing), brain, vols)


def slice_quotas(case_ids: Sequence[str], total: int, seed: int, *keys: str) -> dict[str, int]:
    """Spread ``total`` slices over the cases: total // N each, one more for total % N cases drawn at random.

    Decided before any volume is read, so memory holds only the slices that are used. The draw
    depends on the case ids and keys, not on the dataset: an identical copy gets identical quotas.
    """
    ids = sorted(case_ids)
    if not ids:
        return {}
    base, extra = divmod(total, len(ids))
    rng = case_rng(seed, *keys, "quotas", *ids)
    lucky = set(rng.choice(len(ids), extra, replace=False).tolist()) if extra else set()
    return {cid: base + (1 if i in lucky else 0) for i, cid in enumerate(ids)}


def sample_slices(case: CaseData, modality: str, quotas: dict[int, int], cfg: SynthesisEvalConfig) -> list[tuple[int, int]]:
    """(plane, index) of up to ``quotas[plane]`` brain slices per plane, drawn with the case's own generator.

    Indices are relative to the brain bounding box (``brain_box``).
    """
    rng = case_rng(cfg.seed, case.case_id, modality, "slices")
    brain = case.brain[brain_box(case.brain)]
    chosen = []
    for plane in PLANES:
        cand = candidate_slices(brain, plane, cfg.min_brain_area)
        k = min(quotas.get(plane, 0), len(cand))
        if k:
            chosen.extend((plane, int(i)) for i in np.sort(rng.choice(cand, k, replace=False)))
    return chosen
