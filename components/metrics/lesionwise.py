"""BraTS lesion-wise Dice and HD95 and their 2023 and 2024 presets: the rules people audit (clean-room,
from the definitions in docs/design.md §5; constants in a frozen config)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import Field
from scipy import ndimage as ndi

from components.config_base import FrozenModel
from components.metrics.surface import LEGACY_PENALTY_MM, robust_hausdorff, surface_distances

PENALTY_2024_MM = 337.0
# 26-connected components (cc3d connectivity=26 in the official scorers).
CC26 = ndi.generate_binary_structure(3, 3)
# The dilation element of the official scorers: generate_binary_structure(3, 2), 3x3x3 without corners.
DILATION_ELEMENT = ndi.generate_binary_structure(3, 2)


class LesionwiseConfig(FrozenModel):
    """Constants of the BraTS lesion-wise scores (presets: ``lesionwise_preset``)."""

    preset: str = Field("brats2023", description="name recorded with the scores ('custom' when edited)")
    dilation: int = Field(3, ge=0, description="dilations of a ground-truth lesion when matching predicted components")
    merge_dilation: dict[str, int] = Field(
        default_factory=dict,
        description="per-region dilation used to merge components into lesions (default: `dilation`)",
    )
    threshold_mm3: float = Field(50.0, ge=0.0, description="lesions at or under this volume are dropped")
    region_thresholds_mm3: dict[str, float] = Field(default_factory=dict, description="per-region thresholds")
    penalty_mm: float = Field(LEGACY_PENALTY_MM, gt=0.0, description="HD95 of a missed lesion or a false positive")
    merge_pred_by_dilation: bool = Field(False, description="merge predicted components by dilation (2024)")
    remove_small_pred: bool = Field(False, description="drop predicted lesions at or under the threshold first (2024)")

    def threshold(self, region: str) -> float:
        return float(self.region_thresholds_mm3.get(region, self.threshold_mm3))

    def merge_dilation_for(self, region: str) -> int:
        return int(self.merge_dilation.get(region, self.dilation))


def lesionwise_preset(name: str) -> LesionwiseConfig:
    """``brats2023``: dilation 3, 50 mm^3, penalty 374 (GLI, rachitsaluja/BraTS-2023-Metrics).

    ``brats2024``: penalty 337; thresholds ET 10, others 20; predicted components merged by dilation
    and small predicted lesions removed before scoring; merge dilation 5 for NETC and RC (the official
    script's "SFNH" typo leaves SNFH at 3, and we reproduce it) (rachitsaluja/BraTS-2024-Metrics,
    metrics_GLI.py). Not reproduced: its merging of touching lesions across tissues (NETC/ET/RC/SNFH),
    and its voxel-count (not mm^3) threshold for predicted lesions, identical at 1 mm.
    """
    if name == "brats2023":
        return LesionwiseConfig(preset="brats2023")
    if name == "brats2024":
        return LesionwiseConfig(
            preset="brats2024", dilation=3, merge_dilation={"NETC": 5, "RC": 5}, threshold_mm3=20.0,
            region_thresholds_mm3={"ET": 10.0}, penalty_mm=PENALTY_2024_MM, merge_pred_by_dilation=True,
            remove_small_pred=True,
        )
    raise ValueError(f"unknown lesion-wise preset {name!r}: expected 'brats2023' or 'brats2024'")


@dataclass
class LesionwiseResult:
    """Lesion-wise scores of one region; ``lesions`` lists every ground-truth lesion before the threshold."""

    dice: float
    hd95: float
    n_gt: int  # lesions kept after the threshold
    n_tp: int  # kept lesions hit by a predicted component
    n_fn: int  # kept lesions missed
    n_fp: int  # predicted components touching no dilated ground-truth lesion
    lesions: list[dict[str, Any]] = field(default_factory=list)


def merged_components(mask: np.ndarray, dilation: int) -> tuple[np.ndarray, int]:
    """26-connected components, merged when they fall in one component of the mask dilated ``dilation`` times.

    BraTS 2023 lesion definition: ground-truth components inside one dilated component are one lesion.
    Returns (labels (X, Y, Z) int32, count), labels 1..count.
    """
    if dilation <= 0:
        lab, n = ndi.label(mask, structure=CC26)
        return lab.astype(np.int32, copy=False), int(n)
    dilated = ndi.binary_dilation(mask, structure=DILATION_ELEMENT, iterations=dilation)
    lab, n = ndi.label(dilated, structure=CC26)
    # Every dilated component contains mask voxels, so the labels stay consecutive.
    return np.where(mask, lab, 0).astype(np.int32), int(n)


def _expand(sl: tuple[slice, ...], margin: int, shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(sl, shape, strict=True))


def _union_box(boxes: list[tuple[slice, ...]]) -> tuple[slice, ...]:
    return tuple(slice(min(b[i].start for b in boxes), max(b[i].stop for b in boxes)) for i in range(len(boxes[0])))


def lesionwise_scores(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], region: str, cfg: LesionwiseConfig,
    percent: float = 95.0,
) -> LesionwiseResult:
    """BraTS lesion-wise Dice and HD95 of one region (pred, gt: (X, Y, Z) booleans).

    Written here, not taken from a package: the official scorers need numpy<2 and old pandas, and
    BraTS-evaluation/panoptica use different definitions (one-to-one matching, no dilation); see
    docs/design.md §5. Definition: ground-truth lesions are 26-connected
    components merged by dilation; each predicted component touching a lesion dilated ``dilation``
    times counts for it (Dice/HD95 of the undilated lesion against the union of those whole
    components); predicted components touching none are false positives of any size; lesions at or
    under the threshold are dropped after matching.
    LW-Dice = sum(Dice)/(N_gt+N_fp); LW-HD95 = (sum(HD95) + penalty*N_fp)/(N_gt+N_fp); 0/0 gives 1 and 0.
    """
    voxel_mm3 = float(np.prod(spacing))
    threshold = cfg.threshold(region)
    merge_dil = cfg.merge_dilation_for(region)
    # Work inside the union's bounding box, padded past every dilation: components and dilations
    # there are exactly those of the full volume, at a fraction of the cost on a 240x240x155 grid.
    union = ndi.find_objects((pred | gt).astype(np.uint8))
    if not union or union[0] is None:
        return LesionwiseResult(dice=1.0, hd95=0.0, n_gt=0, n_tp=0, n_fn=0, n_fp=0)
    crop = _expand(union[0], max(cfg.dilation, merge_dil) + 2, gt.shape)
    pred, gt = pred[crop], gt[crop]
    shape = gt.shape

    if cfg.merge_pred_by_dilation:
        pred_lab, n_pred = merged_components(pred, merge_dil)
    else:
        pred_lab, n_pred = merged_components(pred, 0)
    if cfg.remove_small_pred and n_pred:
        # BraTS 2024: predicted lesions at or under the threshold vanish before any scoring.
        sizes = np.bincount(pred_lab.ravel(), minlength=n_pred + 1)
        keep = sizes * voxel_mm3 > threshold
        keep[0] = False
        new_ids = np.zeros(n_pred + 1, dtype=np.int32)
        new_ids[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
        pred_lab, n_pred = new_ids[pred_lab], int(keep.sum())
    pred_sizes = np.bincount(pred_lab.ravel(), minlength=n_pred + 1)
    pred_boxes = ndi.find_objects(pred_lab, max_label=n_pred) if n_pred else []

    gt_lab, n_gt = merged_components(gt, merge_dil)
    gt_boxes = ndi.find_objects(gt_lab, max_label=n_gt) if n_gt else []
    matched_any: set[int] = set()
    lesions: list[dict[str, Any]] = []
    for lesion_id in range(1, n_gt + 1):
        box = _expand(gt_boxes[lesion_id - 1], cfg.dilation + 1, shape)
        lesion = gt_lab[box] == lesion_id
        size = int(np.count_nonzero(lesion))
        zone = ndi.binary_dilation(lesion, structure=DILATION_ELEMENT, iterations=cfg.dilation) if cfg.dilation else lesion
        hits = np.unique(pred_lab[box][zone])
        hits = [int(h) for h in hits if h != 0]
        matched_any.update(hits)
        if hits:
            inter = int(np.count_nonzero(lesion & np.isin(pred_lab[box], hits)))
            p_size = int(pred_sizes[hits].sum())
            dice = 2.0 * inter / (size + p_size)
            ubox = _expand(_union_box([gt_boxes[lesion_id - 1], *(pred_boxes[h - 1] for h in hits)]), 1, shape)
            sd = surface_distances(np.isin(pred_lab[ubox], hits), gt_lab[ubox] == lesion_id, spacing)
            hd = robust_hausdorff(sd, percent)
        else:
            dice, hd = 0.0, float(cfg.penalty_mm)
        vol = size * voxel_mm3
        lesions.append({"lesion": lesion_id, "volume_mm3": vol, "kept": vol > threshold, "pred_components": hits,
                        "dice": dice, "hd95": hd})
    n_fp = n_pred - len(matched_any)
    kept = [le for le in lesions if le["kept"]]
    denom = len(kept) + n_fp
    if denom == 0:
        lw_dice, lw_hd = 1.0, 0.0
    else:
        lw_dice = sum(le["dice"] for le in kept) / denom
        lw_hd = (sum(le["hd95"] for le in kept) + cfg.penalty_mm * n_fp) / denom
    n_tp = sum(1 for le in kept if le["pred_components"])
    return LesionwiseResult(dice=float(lw_dice), hd95=float(lw_hd), n_gt=len(kept), n_tp=n_tp,
                            n_fn=len(kept) - n_tp, n_fp=int(n_fp), lesions=lesions)
