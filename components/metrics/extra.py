"""GliomaGen's extra segmentation scores: per case Cohen's kappa, voxel accuracy and per-class F1 over the
voxels of the case, and over the cases the Pearson correlation of predicted against true tumour (WT) volume.

These sit beside the region scores of ``segmentation`` (docs/scoring.md); they are computed from the
label maps (classes of the label scheme's ``labels``, background included in kappa and accuracy),
not from the evaluation regions.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score

from components.errors import InputError
from components.metrics.segmentation import SegmentationError, load_pair
from components.progress import tqdm
from data_catalog import LabelScheme, load_label_scheme

log = logging.getLogger(__name__)

VOLUME_REGION = "WT"  # the tumour volume correlated over cases
EMPTY_F1 = 1.0  # F1 of a class absent from both masks (GliomaGen scores Dice 1 for empty/empty)


def _scheme(scheme: str | LabelScheme) -> LabelScheme:
    return load_label_scheme(scheme) if isinstance(scheme, str) else scheme


def extra_columns(scheme: str | LabelScheme) -> list[str]:
    """Columns of the per-case table of ``extra_scores`` for ``scheme``."""
    s = _scheme(scheme)
    return ["case_id", "kappa", "accuracy", *[f"f1_{c}" for c in s.labels], "gt_wt_volume_mm3", "pred_wt_volume_mm3"]


def case_extra_scores(
    pred_seg: np.ndarray, gt_seg: np.ndarray, spacing: Sequence[float], scheme: str | LabelScheme, case_id: str = "",
) -> dict[str, Any]:
    """Kappa, accuracy, F1 per class and the WT volumes (mm^3) of one case.

    pred_seg, gt_seg: (X, Y, Z) integer label maps of ``scheme`` on one grid; spacing in mm per axis.
    Kappa is NaN when it is undefined (both maps hold a single, identical label, e.g. both empty).
    """
    s = _scheme(scheme)
    if pred_seg.shape != gt_seg.shape:
        raise SegmentationError(
            f"case {case_id}: prediction shape {tuple(pred_seg.shape)} differs from ground truth "
            f"{tuple(gt_seg.shape)}: expected the same grid"
        )
    if VOLUME_REGION not in s.regions:
        raise InputError(f"label scheme {s.name!r} has no {VOLUME_REGION} region (it has {sorted(s.regions)}): "
                         "expected one for the tumour-volume correlation")
    values = np.asarray(s.values)
    k = len(values)
    gi, pi = np.searchsorted(values, gt_seg.ravel()), np.searchsorted(values, pred_seg.ravel())
    if not (np.array_equal(values[np.minimum(gi, k - 1)], gt_seg.ravel())
            and np.array_equal(values[np.minimum(pi, k - 1)], pred_seg.ravel())):
        found = sorted((set(np.unique(gt_seg).tolist()) | set(np.unique(pred_seg).tolist())) - set(s.values))
        raise SegmentationError(f"case {case_id}: labels outside scheme {s.name!r}: expected {list(s.values)}, "
                                f"found {found}")
    # The K x K confusion counts in one pass, handed to scikit-learn as weighted label pairs: its scores
    # then cost K^2 instead of three passes over ~9 million voxels each.
    counts = np.bincount(gi * k + pi, minlength=k * k)
    y_true, y_pred = np.repeat(values, k), np.tile(values, k)
    nz = counts > 0
    y_true, y_pred, w = y_true[nz], y_pred[nz], counts[nz]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined kappa is reported as NaN, by design
        kappa = cohen_kappa_score(y_true, y_pred, labels=list(values), sample_weight=w)
    f1 = f1_score(y_true, y_pred, labels=list(s.labels.values()), average=None, sample_weight=w,
                  zero_division=EMPTY_F1)
    voxel_mm3 = float(np.prod(spacing))
    wt = list(s.regions[VOLUME_REGION])
    return {
        "case_id": case_id, "kappa": float(kappa), "accuracy": float(accuracy_score(y_true, y_pred, sample_weight=w)),
        **{f"f1_{c}": float(v) for c, v in zip(s.labels, f1, strict=True)},
        "gt_wt_volume_mm3": float(np.count_nonzero(np.isin(gt_seg, wt))) * voxel_mm3,
        "pred_wt_volume_mm3": float(np.count_nonzero(np.isin(pred_seg, wt))) * voxel_mm3,
    }


def volume_pearson_r(table: pd.DataFrame) -> float:
    """Pearson r of predicted against true WT volume over the cases of ``table``; NaN under 2 cases or a
    constant volume (r undefined)."""
    x = pd.to_numeric(table["gt_wt_volume_mm3"]).to_numpy(float)
    y = pd.to_numeric(table["pred_wt_volume_mm3"]).to_numpy(float)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(stats.pearsonr(x, y).statistic)


@dataclass
class ExtraScores:
    metrics: dict[str, float]  # kappa, accuracy, f1_<class> (means over cases, NaN skipped), volume_pearson_r
    table: pd.DataFrame  # one row per case: extra_columns(scheme)
    problems: list[dict[str, str]]  # {case_id, file, reason}: pairs that could not be scored
    seconds: float


def extra_scores(
    pairs: list[tuple[str, Path, Path]], scheme: str | LabelScheme, workers: int = 2, progress: bool | None = None,
) -> ExtraScores:
    """GliomaGen's extra scores of (case_id, pred_path, gt_path) pairs; a bad pair is reported, never fatal.

    ``metrics`` is flat, for MLflow: ``kappa``, ``accuracy``, ``f1_<class>`` per class of the scheme's
    ``labels`` and ``volume_pearson_r`` (over the scored cases).
    """
    t0 = time.perf_counter()
    s = _scheme(scheme)

    def one(item: tuple[str, Path, Path]) -> dict[str, Any] | dict[str, str]:
        cid, pred_path, gt_path = item
        try:
            pred, gt, spacing = load_pair(Path(pred_path), Path(gt_path), cid, s)
            return case_extra_scores(pred, gt, spacing, s, cid)
        except SegmentationError as err:
            return {"case_id": cid, "file": str(pred_path), "reason": str(err)}
        except Exception as err:  # one bad case never stops the evaluation
            log.exception("case %s failed unexpectedly", cid)
            return {"case_id": cid, "file": str(pred_path), "reason": f"case {cid}: unexpected {type(err).__name__}: {err}"}

    rows: list[dict[str, Any]] = []
    problems: list[dict[str, str]] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for out in tqdm(pool.map(one, pairs), total=len(pairs), desc="extra scores", unit="case",
                        disable=(not progress) if progress is not None else None):
            if "reason" in out:
                problems.append(out)
                log.warning("%s", out["reason"])
            else:
                rows.append(out)
    table = pd.DataFrame(rows, columns=extra_columns(s))
    metrics = {c: float(pd.to_numeric(table[c]).mean()) for c in ["kappa", "accuracy", *[f"f1_{c}" for c in s.labels]]}
    metrics["volume_pearson_r"] = volume_pearson_r(table)
    return ExtraScores(metrics=metrics, table=table, problems=problems, seconds=time.perf_counter() - t0)
