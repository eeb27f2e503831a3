"""Segmentation scores per case and region (docs/design.md §5).

* Overlap and surface scores on whole regions: Dice, HD95 and ASSD in millimetres, with the legacy
  BraTS semantics for empty masks (both empty: Dice 1, HD95 0; exactly one empty: Dice 0, HD95 374).
* BraTS lesion-wise Dice and HD95 with the 2023 and 2024 presets (clean-room, from the definitions
  in docs/design.md §5; constants in a frozen config).

Surface distances are DeepMind's surface-element method (Nikolov et al. 2021,
github.com/deepmind/surface-distance), which the official BraTS scorers use: surface elements on
the voxel-corner grid, the 95th percentile weighted by surface-element area, no interpolation,
the maximum of the two directed values. MONAI computes the same surface elements and areas
(``get_edge_surface_distance(..., use_subvoxels=True)``); only the area-weighted percentile and the
empty-mask conventions are ours.

Arrays are (X, Y, Z) label maps or boolean masks on one grid; spacing is in mm per axis. Regions
come from the label scheme (``data_catalog/label_schemes.yaml``), never from literals here.
"""

from __future__ import annotations

import logging
import re
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage as ndi

from components.progress import tqdm
from data_catalog import LabelScheme, load_label_scheme

log = logging.getLogger(__name__)

LEGACY_PENALTY_MM = 374.0  # BraTS 2017-2023: inf HD95 replaced by the 240x240x155 diagonal, ~374 mm
PENALTY_2024_MM = 337.0
# 26-connected components (cc3d connectivity=26 in the official scorers).
CC26 = ndi.generate_binary_structure(3, 3)
# The dilation element of the official scorers: generate_binary_structure(3, 2), 3x3x3 without corners.
DILATION_ELEMENT = ndi.generate_binary_structure(3, 2)
AFFINE_TOL_MM = 1e-3


class SegmentationError(ValueError):
    """A prediction/ground-truth pair cannot be scored; the message names the case and file."""


# --------------------------------------------------------------------------- configuration
class LesionwiseConfig(BaseModel):
    """Constants of the BraTS lesion-wise scores (presets: ``lesionwise_preset``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

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


class SegmentationEvalConfig(BaseModel):
    """Settings of one segmentation evaluation (saved as JSON beside the CSV)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    label_scheme: str = Field(..., description="label scheme of both ground truth and prediction")
    lesionwise: LesionwiseConfig = Field(default_factory=LesionwiseConfig)
    legacy_penalty_mm: float = Field(
        LEGACY_PENALTY_MM, gt=0.0, description="whole-region HD95/ASSD when exactly one mask is empty"
    )
    percentile: float = Field(95.0, gt=0.0, le=100.0, description="robust Hausdorff percentile")
    workers: int = Field(2, ge=1, description="cases scored in parallel")

    @classmethod
    def from_preset(cls, label_scheme: str, preset: str = "brats2023", **kw: Any) -> SegmentationEvalConfig:
        return cls(label_scheme=label_scheme, lesionwise=lesionwise_preset(preset), **kw)


# --------------------------------------------------------------------------- primitives
def region_masks(seg: np.ndarray, scheme: LabelScheme) -> dict[str, np.ndarray]:
    """Boolean mask per evaluation region of ``scheme`` (seg: (X, Y, Z) integer labels)."""
    return {region: np.isin(seg, labels) for region, labels in scheme.regions.items()}


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


# --------------------------------------------------------------------------- lesion-wise
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


# --------------------------------------------------------------------------- one case
def score_case(
    pred_seg: np.ndarray, gt_seg: np.ndarray, spacing: Sequence[float], cfg: SegmentationEvalConfig,
    case_id: str = "",
) -> list[dict[str, Any]]:
    """One row per region of ``cfg.label_scheme``: legacy Dice/HD95/ASSD and lesion-wise Dice/HD95.

    pred_seg, gt_seg: (X, Y, Z) integer label maps in the same label scheme and on the same grid.
    """
    if pred_seg.shape != gt_seg.shape:
        raise SegmentationError(
            f"case {case_id}: prediction shape {tuple(pred_seg.shape)} differs from ground truth "
            f"{tuple(gt_seg.shape)}: expected the same grid"
        )
    scheme = load_label_scheme(cfg.label_scheme)
    voxel_mm3 = float(np.prod(spacing))
    rows = []
    pred_regions, gt_regions = region_masks(pred_seg, scheme), region_masks(gt_seg, scheme)
    for region in scheme.regions:
        p, g = pred_regions[region], gt_regions[region]
        legacy = overlap_scores(p, g, spacing, cfg.legacy_penalty_mm, cfg.percentile)
        lw = lesionwise_scores(p, g, spacing, region, cfg.lesionwise, cfg.percentile)
        rows.append({
            "case_id": case_id, "region": region, **legacy, "lw_dice": lw.dice, "lw_hd95": lw.hd95,
            "lw_n_gt": lw.n_gt, "lw_n_tp": lw.n_tp, "lw_n_fn": lw.n_fn, "lw_n_fp": lw.n_fp,
            "gt_volume_mm3": float(np.count_nonzero(g)) * voxel_mm3,
            "pred_volume_mm3": float(np.count_nonzero(p)) * voxel_mm3,
            "preset": cfg.lesionwise.preset,
        })
    return rows


# --------------------------------------------------------------------------- folders and datasets
NIFTI_RE = re.compile(r"\.nii(\.gz)?$")
SEG_SUFFIX_RE = re.compile(r"[-_]seg$")
CSV_COLUMNS = ["case_id", "region", "dice", "hd95", "assd", "lw_dice", "lw_hd95", "lw_n_gt", "lw_n_tp", "lw_n_fn",
               "lw_n_fp", "gt_volume_mm3", "pred_volume_mm3", "preset"]


def case_id_of(path: Path) -> str:
    """``<case_id>.nii.gz`` (nnU-Net predictions) or ``<case_id>-seg.nii.gz`` (BraTS layout)."""
    return SEG_SUFFIX_RE.sub("", NIFTI_RE.sub("", path.name))


def find_seg_files(folder: str | Path) -> tuple[dict[str, Path], list[dict[str, str]]]:
    """Case id -> seg file under ``folder`` (searched recursively), plus problems (duplicates, odd names).

    Images beside the segmentations (``<case>-t1n.nii.gz`` ...) and MSD image folders are ignored.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SegmentationError(f"{folder} is not a folder of segmentation files")
    found: dict[str, Path] = {}
    problems: list[dict[str, str]] = []
    modality_re = re.compile(r"[-_](t1n|t1c|t2w|t2f|t1|t1ce|t2|flair)$")
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name.startswith(".") or not NIFTI_RE.search(p.name):
            continue
        if any(part in ("imagesTr", "imagesTs") for part in p.relative_to(folder).parts[:-1]):
            continue
        stem = NIFTI_RE.sub("", p.name)
        if modality_re.search(stem):
            continue
        cid = case_id_of(p)
        if cid in found:
            problems.append({"case_id": cid, "file": str(p),
                             "reason": f"case {cid}: file {p} repeats a case already found at {found[cid]}; kept the first"})
            continue
        found[cid] = p
    return found, problems


def _load_seg(path: Path, case_id: str, role: str) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    from components.io import load_nifti

    try:
        arr, aff, spacing = load_nifti(path)
        arr = np.asarray(arr)
    except Exception as err:  # nibabel and gzip raise many types for broken files
        raise SegmentationError(
            f"case {case_id}: {role} file {path} is unreadable: expected a complete NIfTI, found "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no detail'}"
        ) from err
    if arr.ndim != 3:
        raise SegmentationError(
            f"case {case_id}: {role} file {path} is not 3-D: expected shape (X, Y, Z), found {tuple(arr.shape)}"
        )
    if not np.issubdtype(arr.dtype, np.integer):
        rounded = np.rint(arr)
        if not np.array_equal(rounded, arr):
            raise SegmentationError(f"case {case_id}: {role} file {path} holds non-integer values: expected labels")
        arr = rounded
    return arr.astype(np.int16, copy=False), aff, spacing


def _check_labels(arr: np.ndarray, scheme: LabelScheme, case_id: str, role: str, path: Path) -> None:
    present = set(np.unique(arr).tolist())
    bad = sorted(present - set(scheme.values))
    if bad:
        raise SegmentationError(
            f"case {case_id}: {role} file {path} holds labels {bad} outside scheme {scheme.name!r} "
            f"(allowed {list(scheme.values)}): check --label-scheme"
        )


def score_pair(pred_path: Path, gt_path: Path, case_id: str, cfg: SegmentationEvalConfig) -> list[dict[str, Any]]:
    """Load one prediction and its ground truth, check them, and score every region."""
    scheme = load_label_scheme(cfg.label_scheme)
    gt, gt_aff, spacing = _load_seg(gt_path, case_id, "ground-truth")
    pred, pred_aff, pred_spacing = _load_seg(pred_path, case_id, "prediction")
    if pred.shape != gt.shape:
        raise SegmentationError(
            f"case {case_id}: prediction {pred_path} has shape {tuple(pred.shape)}, expected {tuple(gt.shape)} "
            f"as in ground truth {gt_path}"
        )
    if np.max(np.abs(np.asarray(pred_spacing) - np.asarray(spacing))) > AFFINE_TOL_MM:
        log.warning("case %s: prediction spacing %s differs from ground truth %s; using the ground truth's",
                    case_id, pred_spacing, spacing)
    _check_labels(gt, scheme, case_id, "ground-truth", gt_path)
    _check_labels(pred, scheme, case_id, "prediction", pred_path)
    return score_case(pred, gt, spacing, cfg, case_id)


@dataclass
class SegmentationReport:
    table: pd.DataFrame  # one row per case and region (CSV_COLUMNS)
    problems: list[dict[str, str]]  # {case_id, file, reason}
    n_cases: int
    seconds: float

    def summary(self) -> pd.DataFrame:
        return summarise(self.table)


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and std per region of dice, hd95, assd, lw_dice, lw_hd95 (regions in table order)."""
    cols = ["dice", "hd95", "assd", "lw_dice", "lw_hd95"]
    if table.empty:
        return pd.DataFrame(columns=["region", "n", *[f"{c}_{s}" for c in cols for s in ("mean", "std")]])
    regions = list(dict.fromkeys(table["region"]))
    rows = []
    for r in regions:
        t = table[table["region"] == r]
        row: dict[str, Any] = {"region": r, "n": len(t)}
        for c in cols:
            row[f"{c}_mean"] = float(t[c].mean())
            row[f"{c}_std"] = float(t[c].std(ddof=0))
        rows.append(row)
    return pd.DataFrame(rows)


def evaluate_pairs(
    pairs: list[tuple[str, Path, Path]], cfg: SegmentationEvalConfig, progress: bool | None = None,
) -> SegmentationReport:
    """Score (case_id, pred_path, gt_path) pairs; a bad pair is reported, never fatal."""
    t0 = time.perf_counter()
    problems: list[dict[str, str]] = []

    def one(item: tuple[str, Path, Path]) -> list[dict[str, Any]] | dict[str, str]:
        cid, pred_path, gt_path = item
        try:
            return score_pair(pred_path, gt_path, cid, cfg)
        except SegmentationError as err:
            return {"case_id": cid, "file": str(pred_path), "reason": str(err)}
        except Exception as err:  # one bad case never stops the evaluation
            log.exception("case %s failed unexpectedly", cid)
            return {"case_id": cid, "file": str(pred_path), "reason": f"case {cid}: unexpected {type(err).__name__}: {err}"}

    rows: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=cfg.workers) as pool:
        for out in tqdm(pool.map(one, pairs), total=len(pairs), desc="evaluate segmentation", unit="case",
                        disable=(not progress) if progress is not None else None):
            if isinstance(out, dict):
                problems.append(out)
                log.warning("%s", out["reason"])
            else:
                rows.extend(out)
    table = pd.DataFrame(rows, columns=CSV_COLUMNS)
    n_cases = int(table["case_id"].nunique()) if len(table) else 0
    return SegmentationReport(table=table, problems=problems, n_cases=n_cases, seconds=time.perf_counter() - t0)


def match_cases(
    gt_files: dict[str, Path], pred_files: dict[str, Path],
) -> tuple[list[tuple[str, Path, Path]], list[dict[str, str]]]:
    """Pair prediction and ground-truth files by case id; unmatched files become problems."""
    pairs = [(cid, pred_files[cid], gt_files[cid]) for cid in sorted(gt_files) if cid in pred_files]
    problems = [
        {"case_id": cid, "file": str(gt_files[cid]), "reason": f"case {cid}: no prediction for ground truth {gt_files[cid]}"}
        for cid in sorted(set(gt_files) - set(pred_files))
    ] + [
        {"case_id": cid, "file": str(pred_files[cid]),
         "reason": f"case {cid}: prediction {pred_files[cid]} has no ground truth (no matching case id)"}
        for cid in sorted(set(pred_files) - set(gt_files))
    ]
    return pairs, problems


def resolve_ground_truth(gt: str, workspace: str | Path) -> tuple[dict[str, Path], str | None]:
    """``gt`` is a folder of seg files or a dataset name; returns (case id -> seg file, dataset label scheme).

    For a dataset only ok cases with a seg file are used.
    """
    p = Path(gt)
    if p.is_dir():
        files, _ = find_seg_files(p)
        return files, None
    from data_catalog import open_dataset

    ds = open_dataset(workspace, gt)
    ok = ds.ok_cases()
    files = {}
    for _, row in ok.iterrows():
        rel = row.get("seg")
        if isinstance(rel, str) and rel:
            files[str(row["case_id"])] = ds.root / rel
    return files, ds.info.get("label_scheme")


def evaluate_segmentation(
    gt: str, pred: str | Path, cfg: SegmentationEvalConfig, workspace: str | Path = "workspace",
    progress: bool | None = None,
) -> SegmentationReport:
    """Evaluate the predictions in folder ``pred`` against ``gt`` (a folder or a dataset name)."""
    gt_files, ds_scheme = resolve_ground_truth(gt, workspace)
    if ds_scheme is not None and ds_scheme != cfg.label_scheme:
        raise SegmentationError(
            f"dataset {gt!r} uses label scheme {ds_scheme!r} but --label-scheme is {cfg.label_scheme!r}: "
            f"pass --label-scheme {ds_scheme}"
        )
    if not gt_files:
        raise SegmentationError(f"no ground-truth segmentation found in {gt!r}")
    pred_files, problems = find_seg_files(pred)
    pairs, unmatched = match_cases(gt_files, pred_files)
    problems = problems + unmatched
    for pr in problems:
        log.warning("%s", pr["reason"])
    report = evaluate_pairs(pairs, cfg, progress=progress)
    report.problems = problems + report.problems
    return report


def inputs_digest(gt: str, pred: str | Path, workspace: str | Path) -> tuple[str, str]:
    """Cheap digests of the ground truth (manifest digest or file stats) and the predictions (file stats).

    The cache key of an evaluation: any replaced, added or touched file changes it.
    """
    from components.io import stat_fingerprint
    from data_catalog import open_dataset

    if Path(gt).is_dir():
        gt_digest = stat_fingerprint(list(find_seg_files(gt)[0].values()), root=Path(gt))
    else:
        gt_digest = open_dataset(workspace, gt).manifest_digest
    pred_digest = stat_fingerprint(list(find_seg_files(pred)[0].values()), root=Path(pred)) if Path(pred).is_dir() else ""
    return gt_digest, pred_digest


def write_segmentation_report(
    report: SegmentationReport, out: str | Path, cfg: SegmentationEvalConfig, extra: dict[str, Any] | None = None,
) -> tuple[Path, Path]:
    """The per-case CSV at ``out`` and, beside it, ``<out>.json``: resolved config, problems, summary, flat means."""
    from components.io import atomic_path, write_json_atomic
    from components.metrics import flat_metrics

    out = Path(out)
    with atomic_path(out, suffix=".csv") as tmp:
        report.table.to_csv(tmp, index=False)
    side = out.with_suffix(".json")
    write_json_atomic(side, {
        **(extra or {}), "csv": str(out), "config": cfg.model_dump(mode="json"), "n_cases": report.n_cases,
        "problems": report.problems, "summary": report.summary().to_dict(orient="records"),
        "metrics": flat_metrics(report.table), "seconds": round(report.seconds, 2),
    })
    return out, side
