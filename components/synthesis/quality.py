"""Quality score of a synthetic case: how far its tissue intensities sit from the training data's.

For every modality and region (healthy head = head minus tumour, and each tumour label of the
scheme) we take the median and the interquartile range of the normalised intensities ([-1, 1]).
The training cases give a reference mean and spread of both figures (saved with the model). A
synthetic case's distance is the mean over all comparable (modality, region, figure) of
``|value - ref_mean| / (ref_std + floor)``; its score is ``1 / (1 + distance)``: 1 matches the
training statistics, values near 0 are far off. The score ranks cases for export; it is not a
realism metric (FID/KID belong to the metrics stage).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from data_catalog import MODALITIES, LabelScheme

MIN_VOXELS = 10
FLOOR = 0.05  # in normalised units: keeps a near-constant reference from blowing the distance up


def region_masks(seg: np.ndarray, head: np.ndarray, scheme: LabelScheme) -> dict[str, np.ndarray]:
    regions = {"head": np.asarray(head, dtype=bool) & (seg == 0)}
    for name, value in scheme.labels.items():
        regions[name] = seg == value
    return regions


def tissue_statistics(x: np.ndarray, seg: np.ndarray, head: np.ndarray, scheme: LabelScheme) -> dict[str, Any]:
    """x: (4, X, Y, Z) normalised intensities. Returns {modality: {region: {median, iqr, n}}}."""
    out: dict[str, Any] = {}
    regions = region_masks(seg, head, scheme)
    for c, m in enumerate(MODALITIES):
        out[m] = {}
        for r, mask in regions.items():
            n = int(mask.sum())
            if n < MIN_VOXELS:
                continue
            q25, q50, q75 = np.percentile(x[c][mask], [25, 50, 75])
            out[m][r] = {"median": float(q50), "iqr": float(q75 - q25), "n": n}
    return out


def reference_statistics(per_case: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation over training cases of each (modality, region) figure."""
    ref: dict[str, Any] = {}
    for m in MODALITIES:
        ref[m] = {}
        regions = sorted({r for s in per_case for r in s.get(m, {})})
        for r in regions:
            vals = [s[m][r] for s in per_case if r in s.get(m, {})]
            med = np.array([v["median"] for v in vals])
            iqr = np.array([v["iqr"] for v in vals])
            ref[m][r] = {"median_mean": float(med.mean()), "median_std": float(med.std()),
                         "iqr_mean": float(iqr.mean()), "iqr_std": float(iqr.std()), "n_cases": len(vals)}
    return ref


def quality_distance(stats: dict[str, Any], reference: dict[str, Any]) -> float:
    terms = []
    for m, regions in stats.items():
        for r, s in regions.items():
            ref = reference.get(m, {}).get(r)
            if ref is None:
                continue
            terms.append(abs(s["median"] - ref["median_mean"]) / (ref["median_std"] + FLOOR))
            terms.append(abs(s["iqr"] - ref["iqr_mean"]) / (ref["iqr_std"] + FLOOR))
    return float(np.mean(terms)) if terms else math.nan


def quality_score(x: np.ndarray, seg: np.ndarray, head: np.ndarray, scheme: LabelScheme,
                  reference: dict[str, Any]) -> float:
    """Score in (0, 1] of a normalised synthetic volume (4, X, Y, Z); NaN when nothing is comparable."""
    d = quality_distance(tissue_statistics(x, seg, head, scheme), reference)
    return math.nan if math.isnan(d) else 1.0 / (1.0 + d)
