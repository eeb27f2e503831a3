"""Distances between feature sets: the Frechet distance (FID, FD) and KID, and what their real-vs-real
floors need (the reference cases, a subsample at the synthetic set's N, the reason a floor is NaN)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from components.seeds import derive_rng
from data_catalog import Dataset


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


def reference_case_ids(ds: Dataset, exclude: Iterable[str], n: int, seed: int) -> list[str]:
    """Up to ``n`` ok cases of ``ds`` not in ``exclude`` (sampled with the seed): the real side of the floors."""
    excluded = set(exclude)
    ids = sorted(str(c) for c in ds.ok_cases()["case_id"] if str(c) not in excluded)
    if len(ids) > n:
        rng = derive_rng(seed, 4)
        ids = sorted(rng.choice(ids, n, replace=False).tolist())
    return ids


def subsample(features: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Exactly ``n`` rows of ``features`` (seeded, order kept); the caller checks there are enough."""
    if len(features) == n:
        return features
    return features[np.sort(rng.choice(len(features), n, replace=False))]


def floor_reason(what: str, have: int, need: int, n_ref_cases: int, outside: str) -> str:
    """Why a floor is NaN: no real case outside the split, or too few slices / volumes there."""
    if n_ref_cases == 0:
        return f"no real case outside {outside} to compare with"
    return f"{have} real {what} outside {outside} (from {n_ref_cases} cases), {need} needed to match the synthetic set"
