"""Similarity of volume pairs: 3-D MS-SSIM, in-brain PSNR/SSIM, and the pairs they compare
(synthetic vs its real source, same-mask and random pairs)."""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage as ndi

from components.metrics.slices import SynthesisMetricsError
from components.seeds import derive_rng
from data_catalog import Dataset

if TYPE_CHECKING:
    from components.metrics.synthesis import SynthesisEvalConfig

log = logging.getLogger(__name__)

MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003


def msssim_params(shape: Sequence[int], max_kernel: int = 7) -> tuple[int, float, tuple[float, ...]]:
    """(kernel size, sigma, weights) of the largest 3-D MS-SSIM that fits ``shape``.

    Five scales with the largest odd kernel <= max_kernel when the volume allows (kernel 7 at the
    BraTS size, 5 at 96^3, reference A4), else fewer scales (standard weights, renormalised). Both
    MONAI's size check (dim // (scales-1)^2 > kernel-1) and the real one (dim / 2^(scales-1) >= kernel)
    must hold. Sigma follows the kernel: 1.5 for 7, 1.0 for 5, 0.5 for 3.
    """
    kernels = [k for k in (7, 5, 3) if k <= max_kernel] or [3]
    for scales in (5, 4, 3, 2, 1):
        for k in kernels:
            div = max(1, scales - 1) ** 2
            if all(s // div > k - 1 and s // 2 ** (scales - 1) >= k for s in shape):
                w = np.asarray(MSSSIM_WEIGHTS[:scales], dtype=np.float64)
                return k, min(1.5, (k - 1) / 4), tuple(float(x) for x in w / w.sum())
    raise SynthesisMetricsError(f"volumes of shape {tuple(shape)} are too small for MS-SSIM (need at least 3 voxels a side)")


def _match_shape(a: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    if tuple(a.shape) == tuple(shape):
        return a
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
    return F.interpolate(t, size=tuple(shape), mode="trilinear", align_corners=False)[0, 0].numpy()


def msssim_3d(pairs: list[tuple[np.ndarray, np.ndarray]], kernel: int, sigma: float, weights: Sequence[float],
              device: str = "cpu", max_batch_voxels: int = 16_000_000) -> np.ndarray:
    """MONAI MultiScaleSSIMMetric (3-D, data range 1) of each (a, b) pair of [0, 1] volumes; b is resampled to a's grid.

    Pairs on one grid go through MONAI as one batch (about twice as fast on the CPU as one by one).
    """
    import torch
    from monai.metrics import MultiScaleSSIMMetric

    metric = MultiScaleSSIMMetric(spatial_dims=3, data_range=1.0, kernel_size=kernel, kernel_sigma=sigma,
                                  weights=tuple(weights), reduction="none")
    out = np.full(len(pairs), np.nan)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, (a, _) in enumerate(pairs):
        by_shape.setdefault(tuple(a.shape), []).append(i)
    for shape, idx in by_shape.items():
        step = max(1, max_batch_voxels // int(np.prod(shape)))
        for j in range(0, len(idx), step):
            chunk = idx[j:j + step]
            ta = torch.from_numpy(np.stack([pairs[i][0] for i in chunk]).astype(np.float32))[:, None].to(device)
            tb = torch.from_numpy(np.stack([_match_shape(pairs[i][1], shape) for i in chunk]).astype(np.float32))[:, None]
            with torch.inference_mode():
                vals = metric(tb.to(device), ta).reshape(-1).double().cpu().numpy()
            out[chunk] = vals
    return out


def psnr_ssim_in_brain(real01: np.ndarray, synth01: np.ndarray, brain: np.ndarray) -> tuple[float, float]:
    """PSNR (dB, data range 1) and mean SSIM map (scikit-image, Gaussian 1.5) inside ``brain``."""
    from skimage.metrics import structural_similarity

    synth01 = _match_shape(synth01, real01.shape)
    if not brain.any():
        return float("nan"), float("nan")
    mse = float(np.mean((real01[brain].astype(np.float64) - synth01[brain]) ** 2))
    psnr = float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)
    _, smap = structural_similarity(real01, synth01, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, full=True)
    return psnr, float(smap[brain].mean())


def union_box(masks: Iterable[np.ndarray], margin: int = 2) -> tuple[slice, ...] | None:
    """Bounding box (+margin) of the union of ``masks`` (one grid); None when all are empty."""
    lo, hi, shape = None, None, None
    for m in masks:
        box = ndi.find_objects(m.astype(np.uint8))
        if not box or box[0] is None:
            continue
        shape = m.shape
        starts = np.array([s.start for s in box[0]])
        stops = np.array([s.stop for s in box[0]])
        lo = starts if lo is None else np.minimum(lo, starts)
        hi = stops if hi is None else np.maximum(hi, stops)
    if lo is None or shape is None:
        return None
    return tuple(slice(max(int(a) - margin, 0), min(int(b) + margin, n)) for a, b, n in zip(lo, hi, shape, strict=True))


@dataclass
class PairPlan:
    """Which volumes MS-SSIM compares: (synthetic, real) fidelity pairs and (a, b) pairs of one dataset."""

    fidelity: list[tuple[str, str]]
    samemask: list[tuple[str, str]]
    samemask_available: int
    diversity: list[tuple[str, str]]
    realreal: list[tuple[str, str]]

    def synthetic_ids(self) -> set[str]:
        return {s for s, _ in self.fidelity} | {c for p in self.samemask + self.diversity for c in p}

    def real_ids(self) -> set[str]:
        return {r for _, r in self.fidelity} | {c for p in self.realreal for c in p}


def plan_pairs(real_ds: Dataset, synth_ds: Dataset, real_ids: list[str], synth_ids: list[str],
               cfg: SynthesisEvalConfig) -> PairPlan:
    rng = derive_rng(cfg.seed, 3)
    paired = paired_cases(real_ds, synth_ds, synth_ids, set(real_ids))
    sources = _manifest_column(synth_ds, "source_case")
    others = set(real_ds.ok_cases()["case_id"].astype(str)) - set(real_ids)
    n_out = sum(str(sources.get(sid)) in others for sid in synth_ids)
    if n_out:
        log.info("%d synthetic cases come from masks of real cases outside real_split %r: not paired for "
                 "msssim_fidelity/psnr_brain/ssim_brain (their real counterpart is not held out)", n_out, cfg.real_split)
    samemask_all = same_mask_pairs(synth_ds, synth_ids)
    samemask = samemask_all if len(samemask_all) <= cfg.msssim_pairs else [
        samemask_all[i] for i in sorted(rng.choice(len(samemask_all), cfg.msssim_pairs, replace=False))]
    return PairPlan(
        fidelity=sorted(paired.items()), samemask=samemask, samemask_available=len(samemask_all),
        diversity=random_pairs(synth_ids, cfg.msssim_pairs, rng), realreal=random_pairs(real_ids, cfg.msssim_pairs, rng),
    )


def _manifest_column(ds: Dataset, col: str) -> dict[str, Any]:
    m = ds.ok_cases()
    if col not in m.columns:
        return {}
    return {str(c): v for c, v in zip(m["case_id"], m[col], strict=True) if v is not None and not (isinstance(v, float) and math.isnan(v)) and str(v) != ""}


def paired_cases(real: Dataset, synth: Dataset, synth_ids: Iterable[str], real_ids: set[str]) -> dict[str, str]:
    """Synthetic case -> real case, when the synthetic seg array equals the seg of its ``source_case``.

    Augmented masks (flipped, shifted, scaled) are not paired: their real counterpart differs.
    """
    from components.io import load_nifti

    sources = _manifest_column(synth, "source_case")
    out = {}
    for sid in synth_ids:
        src = sources.get(sid)
        if src is None or str(src) not in real_ids:
            continue
        try:
            s_seg, _, _ = load_nifti(synth.path(sid, "seg"))
            r_seg, _, _ = load_nifti(real.path(str(src), "seg"))
        except Exception as err:  # no seg, unreadable: simply not paired
            log.info("case %s: not paired with %s (%s)", sid, src, err)
            continue
        if s_seg.shape == r_seg.shape and np.array_equal(np.asarray(s_seg), np.asarray(r_seg)):
            out[sid] = str(src)
    return out


def same_mask_pairs(synth: Dataset, synth_ids: list[str]) -> list[tuple[str, str]]:
    """All pairs of synthetic cases sharing a ``mask_case`` (same mask, different seeds)."""
    masks = _manifest_column(synth, "mask_case")
    groups: dict[str, list[str]] = {}
    for sid in synth_ids:
        if sid in masks:
            groups.setdefault(str(masks[sid]), []).append(sid)
    return [pair for g in groups.values() if len(g) > 1 for pair in itertools.combinations(sorted(g), 2)]


def random_pairs(ids: list[str], n: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    allp = list(itertools.combinations(sorted(ids), 2))
    if len(allp) <= n:
        return allp
    return [allp[i] for i in sorted(rng.choice(len(allp), n, replace=False))]
