"""LDM-seg (Liu et al., ISBI 2025) on MONAI parts: a label-map latent diffusion model turned into a segmenter
by a ControlNet conditioned on the four MRIs; N samples per case give the segmentation (their mean,
thresholded) and a per-voxel variance map.

Training (``train``), on exactly the given cases: the label autoencoder and the unconditional latent
diffusion model on the cases' label maps (``components.labelldm.training``, the profile's ``segmenter``
stage lengths), then a MONAI ``ControlNet`` on the frozen diffusion model with the case's MRIs
(normalised inside the head, on the model grid) as its conditioning. Every draw is seeded from the
configuration's seed; the folder's ``train.json`` records settings, seed and cases, and a folder trained
with anything else is cleared (a finished one with the same record is kept; an unfinished one resumes).

Prediction (``predict``): per case, N samples (DDIM, eta 0, ``segmenter.sample_steps`` steps, sample ``s``
seeded by ``derive_seed(seed, case, s)``), each decoded to class probabilities, summed into the scheme's
regions (``nnunet_regions``: WT, TC, ET, ...), averaged over the N, thresholded at ``segmenter.threshold``
and written back as labels in region order on the case's own grid (as SegResNet does). The variance map
is, per voxel, the variance over the N samples of each region's probability, averaged over the regions
(0 when N = 1): ``<case>_variance.nii.gz`` (float32, the case's grid) and ``<case>_variance.png``. With the
true label maps of the cases, ``calibration.png`` / ``.csv`` / ``.json``: voxel error rate by variance bin.

Schedules: the names of nnU-Net's and SegResNet's (``tiny``, ``cpu-demo``, ``full``) pick the profiles
``configs/labelldm/{tiny,cpu-demo,brats-gpu}.yaml``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from components.io import atomic_path, load_nifti, save_nifti, write_json_atomic
from components.labelldm.config import LabelLdmConfig, LabelLdmError, load_profile
from components.segmentation.nnunet import ScheduleName
from data_catalog import MODALITIES, load_label_scheme

log = logging.getLogger(__name__)

PROFILES: dict[ScheduleName, str] = {"tiny": "tiny", "cpu-demo": "cpu-demo", "full": "brats-gpu"}
STAMP = "train.json"
FORMAT = 1
PREDICT_RECORD = "ldmseg_predict.json"
CALIBRATION = "calibration"


def schedule_config(schedule: ScheduleName, seed: int = 0) -> LabelLdmConfig:
    """The profile of ``schedule`` as the segmenter trains it: its ``segmenter`` stage lengths and ``seed``."""
    if schedule not in PROFILES:
        raise LabelLdmError(f"ldmseg schedule {schedule!r}: expected one of {', '.join(PROFILES)}")
    return load_profile(PROFILES[schedule]).for_segmenter(seed)


@dataclasses.dataclass(frozen=True)
class TrainedLdmseg:
    model_dir: Path
    train_keys: tuple[str, ...]
    seconds: float           # wall time of this call
    train_seconds: float     # all training, summed over resumed runs
    trained: tuple[str, ...]  # the stages this call trained ((): kept)


def _stamp(cfg: LabelLdmConfig, cases: Mapping[str, Mapping[str, str | Path]], scheme: str,
           data: Mapping[str, Any]) -> dict[str, Any]:
    return {"format": FORMAT, "config": cfg.model_dump(mode="json"), "seed": cfg.seed, "label_scheme": scheme,
            "train": sorted(cases), "files": {c: {k: str(v) for k, v in sorted(cases[c].items())} for c in sorted(cases)},
            "data": dict(data)}


def train(model_dir: str | Path, cases: Mapping[str, Mapping[str, str | Path]], label_scheme: str, cfg: LabelLdmConfig,
          gpu: str | None = None, data: Mapping[str, Any] | None = None, label: str = "",
          progress: bool | None = None, stop_after: int | None = None) -> TrainedLdmseg:
    """Train LDM-seg on ``cases`` ({case_id: {t1n, t1c, t2w, t2f, seg: path}}) into ``model_dir``."""
    from components.labelldm.data import prepare_file_cases
    from components.labelldm.training import train_label_model

    t0 = time.perf_counter()
    model_dir = Path(model_dir)
    scheme = load_label_scheme(label_scheme)
    if not cases:
        raise LabelLdmError(f"LDM-seg in {model_dir}: no training case")
    stamp = _stamp(cfg, cases, scheme.name, data or {})
    stamp_file = model_dir / STAMP
    same = stamp_file.is_file() and json.loads(stamp_file.read_text(encoding="utf-8")) == json.loads(
        json.dumps(stamp, default=str))
    if not same:
        if model_dir.exists():
            shutil.rmtree(model_dir)
        model_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(stamp_file, stamp)
    prepared = prepare_file_cases(cases, cfg.data, scheme, model_dir / "prepared", progress=progress)
    out = train_label_model(model_dir, prepared, cfg, scheme, stages=("autoencoder", "diffusion", "controlnet"),
                            card_extra={"purpose": f"segmenter ldmseg {label}".strip(), "data": dict(data or {})},
                            gpu=gpu, progress=progress, stop_after=stop_after)
    log.info("LDM-seg %s: %s", label or model_dir.name, out.line())
    return TrainedLdmseg(model_dir, tuple(prepared.case_ids), time.perf_counter() - t0, out.train_seconds,
                         tuple(out.trained))


# --------------------------------------------------------------------------- prediction
def ensemble(region_probs: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, R, *grid) region probabilities of N samples -> (mean (R, *grid), variance map (*grid), regions on
    (R, *grid) bool): the mean over the samples thresholded, and the per-voxel variance over the samples
    (population variance, 0 for N = 1) averaged over the regions."""
    p = np.asarray(region_probs, dtype=np.float64)
    if p.ndim < 3:
        raise ValueError(f"ensemble expects (N, R, *grid) region probabilities, got shape {p.shape}")
    mean = p.mean(0)
    var = p.var(0).mean(0)
    return mean.astype(np.float32), var.astype(np.float32), mean > threshold


def region_probabilities(class_probs: np.ndarray, regions: Sequence[tuple[str, list[int], int]]) -> np.ndarray:
    """(N, C, *grid) class probabilities -> (N, R, *grid): each region's probability is the sum of its classes'."""
    return np.stack([class_probs[:, idx].sum(1) for _, idx, _ in regions], axis=1)


def predict(model_dir: str | Path, cases: Mapping[str, Sequence[str | Path]], out_dir: str | Path, label_scheme: str,
            samples: int | None = None, gpu: str | None = None,
            truth: Mapping[str, str | Path] | None = None, progress: bool | None = None) -> dict[str, Path]:
    """Label maps of ``{case_id: [t1n, t1c, t2w, t2f]}`` into ``<out_dir>/<case_id>.nii.gz`` (uint8, the input's
    grid and affine, ``label_scheme``'s labels), with ``<case_id>_variance.nii.gz`` / ``.png``; with ``truth``
    ({case_id: seg path}) for the predicted cases, the calibration figure and tables."""
    from components.labelldm.data import fit_mri, load_mri, region_classes, to_source_grid
    from components.labelldm.sampling import segment_samples
    from components.labelldm.store import load_label_model
    from components.progress import tqdm
    from components.seeds import derive_seed
    from components.segmentation.segresnet import regions_to_labels
    from components.synthesis.data import derive_head, spacing_of

    scheme = load_label_scheme(label_scheme)
    model = load_label_model(model_dir, controlnet=True, gpu=gpu)
    if model.scheme.name != scheme.name:
        raise LabelLdmError(f"LDM-seg {model_dir} predicts label scheme {model.scheme.name!r}; the cases are "
                            f"{scheme.name!r}")
    cfg = model.config
    n = int(samples or cfg.segmenter.samples)
    regions = region_classes(scheme)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    record: dict[str, Any] = {"samples": n, "sample_steps": cfg.segmenter.sample_steps, "eta": 0.0,
                              "threshold": cfg.segmenter.threshold, "seed": cfg.seed,
                              "seeds": "derive_seed(seed, case_id, sample)", "regions": [r[0] for r in regions],
                              "variance": "per voxel: variance over the N samples of each region's probability, "
                                          "mean over the regions", "cases": {}}
    t0 = time.perf_counter()
    for cid in tqdm(sorted(cases), desc="LDM-seg predict", unit="case", disable=None if progress is None else not progress):
        tc = time.perf_counter()
        images, affine = load_mri(list(cases[cid]), cid)
        head = derive_head(images, None, spacing_of(affine))
        if not head.any():
            raise LabelLdmError(f"case {cid}: the head mask derived from its four images ({cases[cid][0]}, ...) is "
                                f"empty; expected a head (are the images blank?)")
        fc, x = fit_mri(images, head, affine, cfg.data)
        seeds = [derive_seed(cfg.seed, cid, s) for s in range(n)]
        probs = region_probabilities(segment_samples(model, x, seeds), regions)
        mean, var, _ = ensemble(probs, cfg.segmenter.threshold)
        back = to_source_grid(np.concatenate([mean, var[None]]), fc, affine, images.shape[1:])
        mean_b, var_b = back[:-1], np.clip(back[-1], 0.0, None)
        labels = regions_to_labels(mean_b > cfg.segmenter.threshold, scheme)
        out[cid] = out_dir / f"{cid}.nii.gz"
        save_nifti(out[cid], labels, affine, dtype=np.uint8)
        save_nifti(out_dir / f"{cid}_variance.nii.gz", var_b, affine, dtype=np.float32)
        variance_png(out_dir / f"{cid}_variance.png", images[MODALITIES.index("t2f")], labels, var_b, cid, n)
        record["cases"][cid] = {"seconds": round(time.perf_counter() - tc, 3), "mean_variance": float(var_b.mean()),
                                "max_variance": float(var_b.max())}
    record["seconds"] = round(time.perf_counter() - t0, 3)
    if truth:
        known = {c: truth[c] for c in out if c in truth}
        if known:
            record["calibration"] = calibration(out_dir, {c: out[c] for c in known}, known, cfg.segmenter.calibration_bins)
    write_json_atomic(out_dir / PREDICT_RECORD, record)
    log.info("LDM-seg predicted %d cases (%d samples each) in %.1f s -> %s", len(out), n, record["seconds"], out_dir)
    return out


def variance_png(path: Path, flair: np.ndarray, labels: np.ndarray, variance: np.ndarray, case_id: str, n: int) -> Path:
    """FLAIR, the prediction and the variance map on the axial slice where the variance (else the tumour) is largest."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weight = variance.sum((0, 1)) if variance.any() else (labels > 0).sum((0, 1))
    z = int(np.argmax(weight)) if np.any(weight) else labels.shape[2] // 2
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.3))
    f = flair[:, :, z].T
    lo, hi = np.percentile(flair, [0.5, 99.5]) if flair.any() else (0.0, 1.0)
    for ax in axes[:2]:
        ax.imshow(f, cmap="gray", origin="lower", vmin=lo, vmax=hi if hi > lo else lo + 1)
    axes[1].imshow(np.ma.masked_equal(labels[:, :, z].T, 0), cmap="autumn", origin="lower", alpha=0.6)
    im = axes[2].imshow(variance[:, :, z].T, cmap="magma", origin="lower", vmin=0.0)
    fig.colorbar(im, ax=axes[2], fraction=0.046)
    for ax, title in zip(axes, ("FLAIR", "LDM-seg labels", f"variance over {n} samples"), strict=True):
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.suptitle(f"{case_id}, axial slice {z}", fontsize=9)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return path


def _auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for ``positive`` (Mann-Whitney U / (n+ n-)); NaN without both classes."""
    from scipy.stats import rankdata

    pos = positive.astype(bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if not n_pos or not n_neg:
        return math.nan
    ranks = rankdata(score)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def calibration(out_dir: Path, preds: Mapping[str, Path], truth: Mapping[str, str | Path], bins: int = 10) -> dict[str, Any]:
    """Voxel error (predicted label != true label) against the variance map, over the given cases.

    Voxels counted: those within 2 voxels of a predicted or true tumour voxel, or with a variance above 1e-6
    (elsewhere both are background and the variance 0: counting them only dilutes the error rate). Bins: the
    zero-variance voxels, then ``bins`` - 1 equal-count bins of the rest. Writes calibration.csv / .json / .png;
    returns the summary (``error_auc``: how well the variance ranks erroneous voxels above correct ones)."""
    import pandas as pd
    from scipy import ndimage as ndi

    var_all, err_all = [], []
    for cid, p in preds.items():
        pred = np.asarray(load_nifti(p)[0])
        var = np.asarray(load_nifti(out_dir / f"{cid}_variance.nii.gz")[0], dtype=np.float64)
        gt = np.asarray(load_nifti(truth[cid])[0])
        if gt.shape != pred.shape:
            raise LabelLdmError(f"case {cid}: true labels {truth[cid]} have shape {gt.shape}; expected {pred.shape} as "
                                f"its prediction {p}")
        roi = ndi.binary_dilation((pred > 0) | (gt > 0), iterations=2) | (var > 1e-6)
        var_all.append(var[roi])
        err_all.append((pred != gt)[roi])
    var_v = np.concatenate(var_all) if var_all else np.zeros(0)
    err_v = np.concatenate(err_all) if err_all else np.zeros(0, bool)
    zero = var_v <= 1e-6
    edges = np.quantile(var_v[~zero], np.linspace(0, 1, bins)) if (~zero).any() else np.zeros(0)
    idx = np.where(zero, 0, 1 + np.clip(np.searchsorted(edges, var_v, side="right") - 1, 0, max(len(edges) - 2, 0)))
    rows = []
    for b in range(int(idx.max()) + 1 if len(idx) else 0):
        sel = idx == b
        if sel.any():
            rows.append({"bin": b, "variance_low": float(var_v[sel].min()), "variance_high": float(var_v[sel].max()),
                         "variance_mean": float(var_v[sel].mean()), "voxels": int(sel.sum()),
                         "error_rate": float(err_v[sel].mean())})
    table = pd.DataFrame(rows, columns=["bin", "variance_low", "variance_high", "variance_mean", "voxels", "error_rate"])
    summary = {"cases": sorted(preds), "voxels": int(len(var_v)), "error_rate": float(err_v.mean()) if len(err_v) else math.nan,
               "error_auc": _auc(var_v, err_v), "mean_variance": float(var_v.mean()) if len(var_v) else math.nan,
               "bins": rows}
    with atomic_path(out_dir / f"{CALIBRATION}.csv", suffix=".csv") as tmp:
        table.to_csv(tmp, index=False)
    write_json_atomic(out_dir / f"{CALIBRATION}.json", summary)
    _calibration_png(out_dir / f"{CALIBRATION}.png", table, summary)
    return summary


def _calibration_png(path: Path, table: Any, summary: Mapping[str, Any]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    if len(table):
        ax.plot(table["variance_mean"], table["error_rate"], "-o", color="tab:red")
        for _, r in table.iterrows():
            ax.annotate(f"{int(r['voxels'])}", (r["variance_mean"], r["error_rate"]), fontsize=6,
                        textcoords="offset points", xytext=(2, 4))
    else:
        ax.text(0.5, 0.5, "no voxel to score", ha="center", transform=ax.transAxes)
    ax.set_xscale("symlog", linthresh=1e-6)  # equal-count bins crowd near 0 on a linear axis; the zero bin stays
    ax.set_xlabel("per-voxel variance over the samples (bin mean, symlog)")
    ax.set_ylabel("voxel error rate (label != truth)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(f"LDM-seg calibration, {len(summary['cases'])} test cases: AUC of variance for errors "
                 f"{summary['error_auc']:.2f}\n(numbers: voxels per bin)", fontsize=7)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path


def prediction_artifacts(out_dir: str | Path) -> list[Path]:
    """The files ``predict`` writes besides the label maps: variance maps (NIfTI, PNG), calibration, its record."""
    out_dir = Path(out_dir)
    files = sorted(out_dir.glob("*_variance.nii.gz")) + sorted(out_dir.glob("*_variance.png"))
    files += [p for p in (out_dir / f"{CALIBRATION}.png", out_dir / f"{CALIBRATION}.csv",
                          out_dir / f"{CALIBRATION}.json", out_dir / PREDICT_RECORD) if p.is_file()]
    return files


def prediction_metrics(out_dir: str | Path) -> dict[str, float]:
    """Flat MLflow metrics of a prediction folder: ``ldmseg_mean_variance`` and, with a calibration,
    ``ldmseg_error_auc`` and ``ldmseg_error_rate`` (over the calibration's voxels)."""
    f = Path(out_dir) / PREDICT_RECORD
    if not f.is_file():
        return {}
    rec = json.loads(f.read_text(encoding="utf-8"))
    cases = rec.get("cases", {})
    out = {"ldmseg_mean_variance": float(np.mean([c["mean_variance"] for c in cases.values()])) if cases else math.nan,
           "ldmseg_samples": float(rec.get("samples", math.nan))}
    cal = rec.get("calibration")
    if cal:
        out.update(ldmseg_error_auc=float(cal["error_auc"]), ldmseg_error_rate=float(cal["error_rate"]))
    return out
