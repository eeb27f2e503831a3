"""Whole-region overlap and surface scores: Dice, HD95 and ASSD in millimetres, with the legacy BraTS
empty-mask conventions (both empty: Dice 1, HD95 0; exactly one empty: Dice 0, HD95 374).

Surface distances are DeepMind's surface-element method (Nikolov et al. 2021,
github.com/deepmind/surface-distance), which the official BraTS scorers use: surface elements on
the voxel-corner grid, the 95th percentile weighted by surface-element area, no interpolation,
the maximum of the two directed values. MONAI computes the same surface elements and areas
(``get_edge_surface_distance(..., use_subvoxels=True)``); only the area-weighted percentile and the
empty-mask conventions are ours. Masks are (X, Y, Z) booleans on one grid; spacing is in mm per axis.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

LEGACY_PENALTY_MM = 374.0  # BraTS 2017-2023: inf HD95 replaced by the 240x240x155 diagonal, ~374 mm


def dice_score(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice 2|P∩G|/(|P|+|G|), legacy BraTS: 1 when both are empty (one empty gives 0 by the formula)."""
    p, g = int(np.count_nonzero(pred)), int(np.count_nonzero(gt))
    if p + g == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(pred & gt)) / (p + g)


@dataclass(frozen=True)
class SurfaceDistances:
    """DeepMind surface elements: distance of each element to the other surface (mm) and its area (mm^2)."""

    pred_to_gt: np.ndarray
    pred_areas: np.ndarray
    gt_to_pred: np.ndarray
    gt_areas: np.ndarray


def surface_distances(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> SurfaceDistances:
    """Surface-element distances both ways (both masks must be non-empty; (X, Y, Z) booleans)."""
    import torch
    from monai.metrics.utils import get_edge_surface_distance

    if not pred.any() or not gt.any():
        raise ValueError("surface distances need two non-empty masks; callers apply the empty-mask conventions")
    with warnings.catch_warnings():
        # MONAI 1.6 warns about its own deprecated argument inside get_mask_edges.
        warnings.simplefilter("ignore", FutureWarning)
        (e_pred, e_gt), (d_pg, d_gp), (a_pred, a_gt) = get_edge_surface_distance(
            torch.as_tensor(np.ascontiguousarray(pred, dtype=bool)),
            torch.as_tensor(np.ascontiguousarray(gt, dtype=bool)),
            spacing=[float(s) for s in spacing], use_subvoxels=True, symmetric=True, warn_empty=False,
        )
    # Distances come in the boolean-index order of the edge masks, as the areas do.
    return SurfaceDistances(
        pred_to_gt=np.asarray(d_pg, dtype=np.float64), pred_areas=a_pred[e_pred].double().numpy(),
        gt_to_pred=np.asarray(d_gp, dtype=np.float64), gt_areas=a_gt[e_gt].double().numpy(),
    )


def _weighted_percentile(distances: np.ndarray, areas: np.ndarray, percent: float) -> float:
    # DeepMind compute_robust_hausdorff: sort the distances, take the first whose cumulative area
    # fraction reaches percent/100 (no interpolation).
    order = np.argsort(distances, kind="stable")
    d, a = distances[order], areas[order]
    cum = np.cumsum(a) / a.sum()
    idx = int(np.searchsorted(cum, percent / 100.0))
    return float(d[min(idx, len(d) - 1)])


def robust_hausdorff(sd: SurfaceDistances, percent: float = 95.0) -> float:
    """Max of the two directed area-weighted percentiles (DeepMind ``compute_robust_hausdorff``), mm."""
    return max(_weighted_percentile(sd.gt_to_pred, sd.gt_areas, percent),
               _weighted_percentile(sd.pred_to_gt, sd.pred_areas, percent))


def average_symmetric_surface_distance(sd: SurfaceDistances) -> float:
    """Area-weighted mean distance over the surface elements of both masks, mm."""
    num = float(np.dot(sd.gt_to_pred, sd.gt_areas) + np.dot(sd.pred_to_gt, sd.pred_areas))
    return num / float(sd.gt_areas.sum() + sd.pred_areas.sum())


def overlap_scores(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], penalty: float = LEGACY_PENALTY_MM,
    percent: float = 95.0,
) -> dict[str, float]:
    """Dice, HD95 and ASSD (mm) of one region with the legacy BraTS empty-mask conventions.

    Both empty: Dice 1, HD95 0, ASSD 0. Exactly one empty: Dice 0, HD95 = ASSD = ``penalty``
    (MONAI returns NaN/inf there; BraTS replaces the infinite distance by the penalty).
    """
    p_any, g_any = bool(pred.any()), bool(gt.any())
    if not p_any and not g_any:
        return {"dice": 1.0, "hd95": 0.0, "assd": 0.0}
    if p_any != g_any:
        return {"dice": 0.0, "hd95": float(penalty), "assd": float(penalty)}
    pred_c, gt_c = _crop_pair(pred, gt)
    sd = surface_distances(pred_c, gt_c, spacing)
    return {"dice": dice_score(pred_c, gt_c), "hd95": robust_hausdorff(sd, percent),
            "assd": average_symmetric_surface_distance(sd)}


def _crop_pair(a: np.ndarray, b: np.ndarray, margin: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to the bounding box of their union (+margin): distances are unchanged."""
    box = ndi.find_objects((a | b).astype(np.uint8))
    if not box or box[0] is None:
        return a, b
    sl = tuple(slice(max(s.start - margin, 0), s.stop + margin) for s in box[0])
    return a[sl], b[sl]
