"""Metrics (docs/design.md §5): overlap/surface scores, BraTS lesion-wise scores, FID/KID/MS-SSIM.

One naming scheme for MLflow and CSVs: ``dice_<region>``, ``hd95_<region>_mm``, ``assd_<region>_mm``,
``lw_dice_<region>``, ``lw_hd95_<region>`` (with preset brats2025: ``dice_``, ``hd95_<region>_mm``,
``nsd_<region>``, ``pq_<region>``) (region names as in the label scheme, e.g. ``dice_WT``) and
``fid2d_<modality>``, ``kid_<modality>``, ``fd_rand3d_<modality>``, ``msssim_fidelity_<modality>``,
``msssim_diversity_<modality>`` (plus ``msssim_diversity_samemask_``, ``msssim_realreal_``,
``psnr_brain_``, ``ssim_brain_``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

# per-case column -> metric name pattern
SEGMENTATION_METRICS = {
    "dice": "dice_{region}",
    "hd95": "hd95_{region}_mm",
    "assd": "assd_{region}_mm",
    "lw_dice": "lw_dice_{region}",
    "lw_hd95": "lw_hd95_{region}",
    # preset brats2025 only (components.metrics.panoptic); the other presets' tables have no such columns
    "nsd": "nsd_{region}",
    "pq": "pq_{region}",
}


def code_digest() -> str:
    """sha256 of this package's source: part of the task cache key, so changed maths is never served stale.

    (The tasks' TASK_SOURCE policy only sees the thin task wrappers.)
    """
    h = hashlib.sha256()
    for f in sorted(Path(__file__).parent.glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def segmentation_metric_name(column: str, region: str) -> str:
    return SEGMENTATION_METRICS[column].format(region=region)


def flat_metrics(table: pd.DataFrame | str | Path) -> dict[str, float]:
    """A per-case segmentation table (``case_id, region, dice, ...``) or a synthesis report table
    (``metric, value``), as a DataFrame or a CSV path, -> {metric name: mean} for MLflow.

    Means skip NaN (a metric with no valid value is NaN).
    """
    df = pd.read_csv(table) if isinstance(table, (str, Path)) else table
    if {"region", "dice"} <= set(df.columns):
        out: dict[str, float] = {}
        for region in dict.fromkeys(df["region"]):
            rows = df[df["region"] == region]
            for col in SEGMENTATION_METRICS:
                if col in rows:
                    out[segmentation_metric_name(col, str(region))] = float(pd.to_numeric(rows[col]).mean())
        return out
    if {"metric", "value"} <= set(df.columns):
        return {str(m): float(v) for m, v in zip(df["metric"], pd.to_numeric(df["value"]), strict=True)}
    raise ValueError(
        f"cannot flatten a table with columns {list(df.columns)}: expected a per-case segmentation table "
        "(case_id, region, dice, hd95, ...) or a synthesis report (metric, value)"
    )
