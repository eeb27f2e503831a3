"""The tumour features sbldm is conditioned on, their stored normalisation, and controllability.

The features are ``components.masks.features.mask_features`` columns (``<feature>_<region>``, in mm, mm^2,
mm^3; centroids in millimetres of the model grid, origin at its voxel 0), measured on the model grid so
that training cases, requests and generated masks share one frame. They are normalised with the mean and
std of the training cases (stored with the model); an undefined feature (the sphericity or centroid of an
empty region) becomes 0 after normalisation, i.e. the training mean.

``controllability_metrics(workspace, dataset)`` returns the flat metrics of a synthetic dataset
(``ctrl_err_<feature>``: mean absolute error between requested and generated features, and
``mask_pass_rate``) for the pipeline to log next to FID/KID/MS-SSIM.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.masks.features import mask_features
from components.sbldm.config import FeatureConfig, SbldmError
from components.synthesis.data import HEAD, condition_channels
from data_catalog import LabelScheme, open_dataset

CTRL_PREFIX = "ctrl_err_"


def feature_regions(cfg: FeatureConfig, scheme: LabelScheme) -> dict[str, tuple[int, ...]]:
    regions = {k: tuple(v) for k, v in scheme.regions.items()}
    if cfg.regions is None:
        return regions
    unknown = [r for r in cfg.regions if r not in regions]
    if unknown:
        raise SbldmError(f"features.regions {unknown} are not regions of label scheme {scheme.name!r} "
                         f"(it has {', '.join(regions)})")
    return {r: regions[r] for r in cfg.regions}


def feature_columns(cfg: FeatureConfig, scheme: LabelScheme) -> list[str]:
    """The conditioning vector's columns, in order: ``<name>_<region>``."""
    return [f"{n}_{r.lower()}" for r in feature_regions(cfg, scheme) for n in cfg.names]


def seg_from_labels(labels: np.ndarray, scheme: LabelScheme) -> tuple[np.ndarray, np.ndarray]:
    """Conditioning label map (0 background, 1 head, 2.. tumour ranks) -> (seg in the scheme's values, head)."""
    labels = np.asarray(labels)
    seg = np.zeros(labels.shape, np.uint8)
    for value, channel in condition_channels(scheme).items():
        seg[labels == channel] = value
    return seg, labels >= HEAD


def measure(seg: np.ndarray, cfg: FeatureConfig, scheme: LabelScheme, spacing: Sequence[float]) -> dict[str, float]:
    """The conditioning features of a seg (scheme values) on a grid of ``spacing`` mm."""
    allf = mask_features(seg, feature_regions(cfg, scheme), spacing)
    return {c: float(allf[c]) for c in feature_columns(cfg, scheme)}


@dataclass(frozen=True)
class FeatureNorm:
    """Per-feature mean and std of the training cases (stored in the model's card and diffusion.pt)."""

    columns: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def fit(cls, rows: Sequence[Mapping[str, float]], columns: Sequence[str]) -> FeatureNorm:
        a = np.array([[r.get(c, math.nan) for c in columns] for r in rows], dtype=float)
        mean, std = [], []
        for j in range(a.shape[1]):
            v = a[:, j][np.isfinite(a[:, j])]
            mean.append(float(v.mean()) if v.size else 0.0)
            s = float(v.std()) if v.size > 1 else 0.0
            std.append(s if s > 1e-6 * max(abs(mean[-1]), 1.0) else 1.0)  # a constant feature: unit scale
        return cls(tuple(columns), tuple(mean), tuple(std))

    def to_dict(self) -> dict[str, Any]:
        return {"columns": list(self.columns), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureNorm:
        return cls(tuple(d["columns"]), tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"]))

    def normalise(self, row: Mapping[str, float], where: str = "") -> np.ndarray:
        """(F,) float32; a missing column is refused, an undefined (NaN) value becomes 0 (the training mean)."""
        missing = [c for c in self.columns if c not in row]
        if missing:
            raise SbldmError(f"{where or 'requested features'}: missing {missing}; the model is conditioned on "
                             f"{list(self.columns)}")
        x = np.array([(float(row[c]) - m) / s for c, m, s in zip(self.columns, self.mean, self.std, strict=True)])
        return np.nan_to_num(x, nan=0.0).astype(np.float32)


def control_errors(requested: Mapping[str, float], generated: Mapping[str, float], columns: Sequence[str]) -> dict[str, float]:
    """|generated - requested| per feature (NaN when either is undefined), as ``ctrl_err_<feature>``."""
    return {f"{CTRL_PREFIX}{c}": abs(float(generated[c]) - float(requested[c])) for c in columns}


def summarise(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> dict[str, Any]:
    """dataset.json's ``controllability`` block: mean absolute error per feature over the generated cases and
    the share of generated masks that passed the plausibility checks."""
    checked = [r for r in rows if "mask_check" in r and isinstance(r.get("mask_check"), str)]
    errs = {}
    for c in columns:
        v = np.array([float(r.get(f"{CTRL_PREFIX}{c}", math.nan)) for r in checked], dtype=float)
        v = v[np.isfinite(v)]
        errs[c] = float(v.mean()) if v.size else math.nan
    passed = sum(1 for r in checked if r["mask_check"] == "")
    reasons: dict[str, int] = {}
    for r in checked:
        for reason in filter(None, str(r["mask_check"]).split(",")):
            reasons[reason] = reasons.get(reason, 0) + 1
    return {"mean_abs_error": errs, "mask_pass_rate": passed / len(checked) if checked else math.nan,
            "n_checked": len(checked), "n_passed": passed, "rejections": reasons,
            "units": "volume mm^3, surface mm^2, centroid and bbox mm, sphericity unitless"}


def controllability_metrics(workspace: str | Path, dataset: str) -> dict[str, float]:
    """Flat metrics of an sbldm synthetic dataset: ``ctrl_err_<feature>`` (mean absolute error) and
    ``mask_pass_rate``, read from its dataset.json (SbldmError for a dataset sbldm did not write)."""
    ds = open_dataset(workspace, dataset)
    block = ds.info.get("controllability")
    if not isinstance(block, dict):
        raise SbldmError(f"dataset {dataset!r} in {ds.root}: dataset.json has no 'controllability' block; "
                         f"only datasets written by the sbldm synthesizer have one")
    out = {f"{CTRL_PREFIX}{k}": float(v) for k, v in block["mean_abs_error"].items()}
    out["mask_pass_rate"] = float(block["mask_pass_rate"])
    if "request_ok_rate" in block:
        out["mask_request_ok_rate"] = float(block["request_ok_rate"])
    return out
