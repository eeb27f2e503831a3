"""Segmentation scores per case and region (docs/design.md §5): the evaluation driver, its settings,
the folders and datasets it reads, and the report.

Each region gets the whole-region Dice, HD95 and ASSD of ``surface`` and the BraTS lesion-wise Dice
and HD95 of ``lesionwise`` (presets ``brats2023``, ``brats2024``), or, with preset ``brats2025``, the
panoptica scores of ``panoptic`` (global Dice/HD95/NSD, PQ/SQ/RQ, lesion counts). Arrays are (X, Y, Z)
label maps on one grid; spacing is in mm per axis.
Regions come from the label scheme (``data_catalog/label_schemes.yaml``), never from literals here.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field

from components.config_base import FrozenModel
from components.errors import InputError
from components.io import NIFTI_RE
from components.metrics.lesionwise import LesionwiseConfig, lesionwise_preset, lesionwise_scores
from components.metrics.panoptic import PANOPTIC_COLUMNS, PanopticConfig, panoptic_preset, panoptic_scores
from components.metrics.surface import LEGACY_PENALTY_MM, overlap_scores
from components.progress import tqdm
from data_catalog import LabelScheme, load_label_scheme

log = logging.getLogger(__name__)

AFFINE_TOL_MM = 1e-3


class SegmentationError(InputError):
    """A prediction/ground-truth pair cannot be scored; the message names the case and file."""


class SegmentationEvalConfig(FrozenModel):
    """Settings of one segmentation evaluation (saved as JSON beside the CSV)."""

    label_scheme: str = Field(..., description="label scheme of both ground truth and prediction")
    lesionwise: LesionwiseConfig = Field(default_factory=LesionwiseConfig)
    legacy_penalty_mm: float = Field(
        LEGACY_PENALTY_MM, gt=0.0, description="whole-region HD95/ASSD when exactly one mask is empty"
    )
    percentile: float = Field(95.0, gt=0.0, le=100.0, description="robust Hausdorff percentile")
    workers: int = Field(2, ge=1, description="cases scored in parallel")
    panoptic: PanopticConfig | None = Field(
        None, description="score with panoptica (preset brats2025) instead of the legacy and lesion-wise scores"
    )

    @property
    def preset(self) -> str:
        return self.panoptic.preset if self.panoptic is not None else self.lesionwise.preset

    @property
    def columns(self) -> list[str]:
        """Columns of the per-case table this config produces."""
        return PANOPTIC_CSV_COLUMNS if self.panoptic is not None else CSV_COLUMNS

    @classmethod
    def from_preset(cls, label_scheme: str, preset: str = "brats2023", **kw: Any) -> SegmentationEvalConfig:
        if preset in PANOPTIC_PRESETS:
            return cls(label_scheme=label_scheme, panoptic=panoptic_preset(preset), **kw)
        if preset not in LESIONWISE_PRESETS:
            raise SegmentationError(
                f"unknown scoring preset {preset!r}: expected one of {', '.join(LESIONWISE_PRESETS + PANOPTIC_PRESETS)}"
            )
        return cls(label_scheme=label_scheme, lesionwise=lesionwise_preset(preset), **kw)


LESIONWISE_PRESETS = ("brats2023", "brats2024")
PANOPTIC_PRESETS = ("brats2025",)


# --------------------------------------------------------------------------- regions
def region_masks(seg: np.ndarray, scheme: LabelScheme) -> dict[str, np.ndarray]:
    """Boolean mask per evaluation region of ``scheme`` (seg: (X, Y, Z) integer labels)."""
    return {region: np.isin(seg, labels) for region, labels in scheme.regions.items()}


# --------------------------------------------------------------------------- one case
def score_case(
    pred_seg: np.ndarray, gt_seg: np.ndarray, spacing: Sequence[float], cfg: SegmentationEvalConfig,
    case_id: str = "",
) -> list[dict[str, Any]]:
    """One row per region of ``cfg.label_scheme``: legacy Dice/HD95/ASSD and lesion-wise Dice/HD95, or with
    ``cfg.panoptic`` the panoptica scores (``PANOPTIC_CSV_COLUMNS``).

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
    if cfg.panoptic is not None:
        scores = panoptic_scores(pred_seg, gt_seg, spacing, scheme, cfg.panoptic)
        return [{
            "case_id": case_id, "region": region, **scores[region],
            "gt_volume_mm3": float(np.count_nonzero(gt_regions[region])) * voxel_mm3,
            "pred_volume_mm3": float(np.count_nonzero(pred_regions[region])) * voxel_mm3,
            "preset": cfg.panoptic.preset,
        } for region in scheme.regions]
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
SEG_SUFFIX_RE = re.compile(r"[-_]seg$")
CSV_COLUMNS = ["case_id", "region", "dice", "hd95", "assd", "lw_dice", "lw_hd95", "lw_n_gt", "lw_n_tp", "lw_n_fn",
               "lw_n_fp", "gt_volume_mm3", "pred_volume_mm3", "preset"]
PANOPTIC_CSV_COLUMNS = ["case_id", "region", *PANOPTIC_COLUMNS, "gt_volume_mm3", "pred_volume_mm3", "preset"]


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


def load_pair(
    pred_path: Path, gt_path: Path, case_id: str, scheme: LabelScheme,
) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Load one prediction and its ground truth and check them: (pred, gt, ground-truth spacing in mm).

    Both must be 3-D integer label maps of ``scheme`` on one grid; anything else raises SegmentationError.
    """
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
    return pred, gt, spacing


def score_pair(pred_path: Path, gt_path: Path, case_id: str, cfg: SegmentationEvalConfig) -> list[dict[str, Any]]:
    """Load one prediction and its ground truth, check them, and score every region."""
    pred, gt, spacing = load_pair(pred_path, gt_path, case_id, load_label_scheme(cfg.label_scheme))
    return score_case(pred, gt, spacing, cfg, case_id)


@dataclass
class SegmentationReport:
    table: pd.DataFrame  # one row per case and region (CSV_COLUMNS, or PANOPTIC_CSV_COLUMNS for brats2025)
    problems: list[dict[str, str]]  # {case_id, file, reason}
    n_cases: int
    seconds: float

    def summary(self) -> pd.DataFrame:
        return summarise(self.table)


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and std per region of dice, hd95, assd, lw_dice, lw_hd95, plus nsd, pq, sq, rq when the table has
    them (brats2025); a column the table lacks is NaN (regions in table order)."""
    cols = ["dice", "hd95", "assd", "lw_dice", "lw_hd95", *[c for c in ("nsd", "pq", "sq", "rq") if c in table]]
    if table.empty:
        return pd.DataFrame(columns=["region", "n", *[f"{c}_{s}" for c in cols for s in ("mean", "std")]])
    regions = list(dict.fromkeys(table["region"]))
    rows = []
    for r in regions:
        t = table[table["region"] == r]
        row: dict[str, Any] = {"region": r, "n": len(t)}
        for c in cols:
            v = pd.to_numeric(t[c]) if c in t else pd.Series([np.nan] * len(t), dtype=float)
            row[f"{c}_mean"] = float(v.mean())
            with np.errstate(invalid="ignore"):  # brats2025 HD95 can be inf: its std is NaN
                row[f"{c}_std"] = float(v.std(ddof=0))
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
    table = pd.DataFrame(rows, columns=cfg.columns)
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
    files = {}
    for rec in ds.records():
        seg = rec.path_of("seg")
        if seg is not None:
            files[rec.case_id] = seg
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
