"""How close generated masks are to held-out real masks, each score next to its real-vs-real floor.

- Feature distances: per tumour feature (``components.masks.features``: volume, surface, sphericity,
  centroid, bounding box, components, per region), the 1-Wasserstein distance (``scipy.stats``) between
  the generated masks and the real TEST-split masks; the floor is the same distance between the real
  TRAIN-split masks and the test masks at the same sample size (both sets subsampled to
  n = min(generated, train), seeded). A generator as good as new real data scores about its floor.
- FID on label maps: each mask rendered as colour images (one-hot classes through a fixed palette:
  background black, head grey, one colour per tumour label), three slices through the tumour's centroid
  (one per array axis, physical aspect kept, 299 x 299), through the project's FID Inception
  (``components.metrics.features``) and its Frechet distance (``components.metrics.distances``);
  generated vs test, floor train vs test, at the same n.

Metric names (flat, for MLflow): ``mask_wdist_<feature>`` and ``mask_wdist_<feature>_floor``,
``mask_fid`` and ``mask_fid_floor``, ``mask_realism_n`` (the sample size) and ``mask_realism_n_test``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from components.masks.features import FEATURES, feature_columns
from components.seeds import derive_rng

log = logging.getLogger(__name__)

FID_SIZE = 299
# RGB in [0, 1] per class: background, head, then the tumour labels by rank.
PALETTE = ((0.0, 0.0, 0.0), (0.5, 0.5, 0.5), (1.0, 0.15, 0.15), (0.15, 0.85, 0.15), (0.2, 0.35, 1.0),
           (1.0, 0.9, 0.1), (0.9, 0.2, 0.9), (0.1, 0.9, 0.9))


def realism_features(regions: Sequence[str]) -> list[str]:
    """The feature columns the distances are computed on (all of ``mask_features``' columns)."""
    return feature_columns(list(regions))


def render_label_slices(classes: np.ndarray, spacing: Sequence[float], n_classes: int,
                        size: int = FID_SIZE) -> np.ndarray:
    """(3, 3, size, size) float32 in [-1, 1]: the class map (X, Y, Z; 0 background, 1 head, 2.. tumour) sliced
    through the tumour's centroid (the head's when there is no tumour) along each axis, one-hot classes
    coloured by ``PALETTE``, resampled to the physical aspect (antialiased) and centred on black."""
    import torch
    import torch.nn.functional as F

    if n_classes > len(PALETTE):
        raise ValueError(f"render_label_slices: {n_classes} classes, the palette has {len(PALETTE)} colours")
    classes = np.asarray(classes)
    fg = classes >= 2 if (classes >= 2).any() else classes >= 1
    centre = np.rint(np.argwhere(fg).mean(0)).astype(int) if fg.any() else np.array(classes.shape) // 2
    palette = torch.tensor(PALETTE[:n_classes], dtype=torch.float32)  # (C, 3)
    out = torch.full((3, 3, size, size), -1.0)
    for plane in range(3):
        sl = np.take(classes, int(centre[plane]), axis=plane)
        sp = [s for a, s in enumerate(spacing) if a != plane]
        ext = (sl.shape[0] * sp[0], sl.shape[1] * sp[1])
        scale = size / max(ext)
        hw = (max(1, min(size, round(ext[0] * scale))), max(1, min(size, round(ext[1] * scale))))
        rgb = palette[torch.from_numpy(sl.astype(np.int64))].permute(2, 0, 1)[None]  # (1, 3, H, W)
        rgb = F.interpolate(rgb, size=hw, mode="bilinear", align_corners=False, antialias=True)[0]
        y0, x0 = (size - hw[0]) // 2, (size - hw[1]) // 2
        out[plane, :, y0:y0 + hw[0], x0:x0 + hw[1]] = rgb.clamp(0, 1) * 2 - 1
    return out.numpy()


def label_map_features(classes: np.ndarray, spacing: Sequence[float], n_classes: int, device: str = "cpu") -> np.ndarray | None:
    """(3, 2048) FID-Inception features of ``render_label_slices``, or None when the Inception weights are not
    installed (the FID is then NaN, and the reason is logged once)."""
    import torch

    from components.metrics.features import load_inception
    from components.metrics.slices import SynthesisMetricsError

    try:
        model = load_inception(device)
    except SynthesisMetricsError as err:
        if not getattr(label_map_features, "_warned", False):
            log.warning("mask FID not computed: %s", err)
            label_map_features._warned = True  # type: ignore[attr-defined]
        return None
    x = torch.from_numpy(render_label_slices(classes, spacing, n_classes)).to(device)
    with torch.inference_mode():
        return model(x).double().cpu().numpy()


def _subsample(n_items: int, n: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.permutation(n_items)[:n]) if n < n_items else np.arange(n_items)


def mask_realism(generated: pd.DataFrame, train: pd.DataFrame, test: pd.DataFrame, regions: Sequence[str],
                 seed: int = 0, fid_features: tuple[Sequence[np.ndarray | None], Sequence[np.ndarray | None],
                                                    Sequence[np.ndarray | None]] | None = None) -> dict[str, Any]:
    """Distances of the generated masks' features to the real test masks', with floors (module docstring).

    generated / train / test: one row per mask with the feature columns (a masks manifest's ok rows, a
    source_features table); fid_features: per-mask (3, 2048) Inception features of the same rows in the same
    order (None entries: not computed). Returns {"metrics": flat dict, "n": ..., "features": [...],
    "notes": [...]}.
    """
    from scipy.stats import wasserstein_distance

    from components.metrics.distances import frechet_distance_features

    rng = derive_rng(seed, "mask-realism")
    n = min(len(generated), len(train))
    gi, ti = _subsample(len(generated), n, rng), _subsample(len(train), n, rng)
    g, t = generated.iloc[gi], train.iloc[ti]
    metrics: dict[str, float] = {"mask_realism_n": float(n), "mask_realism_n_test": float(len(test))}
    notes = []
    feats = [c for c in realism_features(regions) if c in generated and c in train and c in test]
    for col in feats:
        vg, vt, vr = (pd.to_numeric(d[col], errors="coerce").dropna().to_numpy(float) for d in (g, t, test))
        ok = len(vr) > 0
        metrics[f"mask_wdist_{col}"] = float(wasserstein_distance(vg, vr)) if ok and len(vg) else math.nan
        metrics[f"mask_wdist_{col}_floor"] = float(wasserstein_distance(vt, vr)) if ok and len(vt) else math.nan
    if not len(test):
        notes.append("no real test-split mask: every distance is NaN")
    fid = fid_floor = math.nan
    if fid_features is not None:
        fg_all, ft_all, fr_all = fid_features
        fg = [fg_all[i] for i in gi if fg_all[i] is not None]
        ft = [ft_all[i] for i in ti if ft_all[i] is not None]
        fr = [f for f in fr_all if f is not None]
        if fg and ft and fr:
            real = np.concatenate(fr)
            fid = frechet_distance_features(np.concatenate(fg), real)
            fid_floor = frechet_distance_features(np.concatenate(ft), real)
        else:
            notes.append("FID not computed (no Inception weights, or an empty set)")
    metrics["mask_fid"], metrics["mask_fid_floor"] = float(fid), float(fid_floor)
    return {"metrics": metrics, "n": n, "features": feats, "feature_names": list(FEATURES), "notes": notes,
            "method": "1-Wasserstein per feature (scipy.stats.wasserstein_distance) and FID on 3 label-map slices "
                      "per mask (FID Inception); floors: real train vs real test at the same n"}
