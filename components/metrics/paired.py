"""Paired effects of a ratio ablation: each configuration against the real-only baseline, on the same
test cases and the same seeds, with a bootstrap confidence interval and a Wilcoxon signed-rank test.

For a ratio r and a seed s the per-case difference is score(r, s, case) - score(0, s, case); the
effect is the mean over test cases of those differences averaged over seeds. Its 95 % interval is
a percentile bootstrap that resamples seeds and test cases together, so it carries the spread of
training runs as well as that of cases. Its p-value is scipy's Wilcoxon signed-rank test over the
seed-averaged per-case differences (the test cases are its sample).
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
from scipy import stats

log = logging.getLogger(__name__)

# per-case column -> metric name pattern (as components.metrics.SEGMENTATION_METRICS)
EFFECT_METRICS = {"dice": "dice_{region}", "hd95": "hd95_{region}_mm"}


def bootstrap_ci(values: np.ndarray, seed: int, n_resamples: int = 9999, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of a (seeds x cases) matrix, NaN where missing.

    Seeds and cases are resampled together (a two-level bootstrap): the interval widens when the
    seeds disagree, not only when the cases do. A 1-D input is one seed. NaN with fewer than two
    cases. Written here because scipy's bootstrap resamples one axis only.
    """
    d = np.atleast_2d(np.asarray(values, dtype=float))
    d = d[:, ~np.all(np.isnan(d), axis=0)]
    n_seeds, n_cases = d.shape
    if n_cases < 2:
        return float("nan"), float("nan")
    if np.nanmax(d) == np.nanmin(d):
        v = float(np.nanmax(d))
        return v, v
    rng = np.random.default_rng(seed)
    si = rng.integers(0, n_seeds, (n_resamples, n_seeds))
    ci = rng.integers(0, n_cases, (n_resamples, n_cases))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample whose seeds all miss one case
        per_case = np.nanmean(d[si[:, :, None], ci[:, None, :]], axis=1)  # (resamples, cases)
        stats_ = np.nanmean(per_case, axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.nanquantile(stats_, [alpha, 1 - alpha])
    return float(lo), float(hi)


def wilcoxon_p(diffs: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (NaN where undefined)."""
    diffs = np.asarray(diffs, dtype=float)
    if diffs.size < 2 or np.all(diffs == 0):
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on small samples; the p-value is still exact
        try:
            return float(stats.wilcoxon(diffs).pvalue)
        except ValueError:
            return float("nan")


def paired_effects(per_case: pd.DataFrame, baseline_ratio: float = 0.0, seed: int = 0,
                   n_resamples: int = 9999) -> pd.DataFrame:
    """One row per (ratio, synthetic_only): mean scores over seeds and paired differences to the baseline.

    ``per_case``: one row per configuration, test case and region, with columns ``ratio``, ``seed``,
    ``synthetic_only``, ``case_id``, ``region`` and the per-case scores ``dice`` and ``hd95``.
    The baseline is the real-only configuration at ``baseline_ratio`` of the same seed.

    Columns per region R: ``dice_R`` (mean over seeds and cases) with ``dice_R_ci_low/high``
    (bootstrap over seeds and cases), ``delta_dice_R`` (mean paired difference),
    ``delta_dice_R_ci_low/high``, ``delta_dice_R_p``; the same for ``hd95_R_mm``. Plus ``n_seeds``,
    ``n_cases``, ``paired_seeds`` (seeds that had a baseline to pair with) and ``n_paired_cases``. The
    means cover every seed of the ratio, the differences only seeds with a baseline: they differ only
    where a configuration failed, which ``paired_seeds`` shows.
    """
    required = {"ratio", "seed", "synthetic_only", "case_id", "region", *EFFECT_METRICS}
    missing = required - set(per_case.columns)
    if missing:
        raise ValueError(f"per-case table lacks columns {sorted(missing)}; it has {sorted(per_case.columns)}")
    df = per_case.copy()
    df["ratio"] = df["ratio"].astype(float)
    df["synthetic_only"] = df["synthetic_only"].astype(bool)
    base = df[(df["ratio"] == baseline_ratio) & ~df["synthetic_only"]]
    key = ["seed", "case_id", "region"]
    base = base.set_index(key)[list(EFFECT_METRICS)]
    regions = list(dict.fromkeys(df["region"]))
    rows = []
    for (ratio, syn_only), part in df.groupby(["ratio", "synthetic_only"], sort=True):
        row: dict[str, object] = {"ratio": float(ratio), "synthetic_only": bool(syn_only),
                                  "n_seeds": int(part["seed"].nunique()), "n_cases": int(part["case_id"].nunique())}
        joined = part.set_index(key)[list(EFFECT_METRICS)].join(base, rsuffix="_base", how="inner")
        row["paired_seeds"] = int(joined.index.get_level_values("seed").nunique()) if len(joined) else 0
        row["n_paired_cases"] = int(joined.index.get_level_values("case_id").nunique()) if len(joined) else 0
        for region in regions:
            for col, pattern in EFFECT_METRICS.items():
                name = pattern.format(region=region)
                here = part[part["region"] == region]
                scores = here.pivot_table(index="seed", columns="case_id", values=col, aggfunc="mean")
                per_case_mean = scores.mean(axis=0).dropna().to_numpy()
                row[name] = float(np.mean(per_case_mean)) if per_case_mean.size else float("nan")
                row[f"{name}_ci_low"], row[f"{name}_ci_high"] = bootstrap_ci(scores.to_numpy(), seed, n_resamples)
                pr = joined[joined.index.get_level_values("region") == region]
                diff = (pr[col] - pr[f"{col}_base"]).dropna()
                d = diff.groupby(level="case_id").mean().to_numpy()
                diffs = diff.droplevel("region").unstack("case_id") if len(diff) else pd.DataFrame()
                is_base = ratio == baseline_ratio and not syn_only
                row[f"delta_{name}"] = 0.0 if is_base else (float(np.mean(d)) if d.size else float("nan"))
                lo, hi = (float("nan"), float("nan")) if is_base else bootstrap_ci(diffs.to_numpy(), seed, n_resamples)
                row[f"delta_{name}_ci_low"], row[f"delta_{name}_ci_high"] = lo, hi
                row[f"delta_{name}_p"] = float("nan") if is_base else wilcoxon_p(d)
        rows.append(row)
    out = pd.DataFrame(rows, columns=None if rows else ["ratio", "synthetic_only", "n_seeds", "n_cases", "paired_seeds",
                                                        "n_paired_cases"])
    if not out.empty and not ((out["ratio"] == baseline_ratio) & ~out["synthetic_only"]).any():
        log.warning("no real-only configuration at ratio %g scored: no paired effect can be computed", baseline_ratio)
    return out


def effect_lines(effects: pd.DataFrame, regions: list[str] | None = None) -> list[str]:
    """The effect table as printable lines: delta Dice per region with its 95 % interval, per ratio."""
    if effects.empty:
        return ["(no configuration scored)"]
    if regions is None:
        regions = [c[len("delta_dice_"):] for c in effects.columns
                   if c.startswith("delta_dice_") and not c.endswith(("_ci_low", "_ci_high", "_p"))]
    head = f"{'ratio':>6} {'mix':<8} {'seeds':>5} {'cases':>5}  " + "  ".join(
        f"{'dDice ' + r + ' [95% CI]':<27}" for r in regions)
    lines = [head]
    for _, r in effects.iterrows():
        cells = []
        for region in regions:
            k = f"delta_dice_{region}"
            if r["ratio"] == 0 and not r["synthetic_only"]:
                cells.append(f"{'baseline (Dice ' + format(r[f'dice_{region}'], '.3f') + ')':<27}")
                continue
            p = r[f"{k}_p"]
            ptxt = f" p={p:.2g}" if np.isfinite(p) else ""
            cells.append(f"{r[k]:+.3f} [{r[f'{k}_ci_low']:+.3f}, {r[f'{k}_ci_high']:+.3f}]{ptxt}".ljust(27))
        mix = "syn-only" if r["synthetic_only"] else "real+syn"
        lines.append(f"{r['ratio']:>6g} {mix:<8} {int(r['n_seeds']):>5} {int(r['n_cases']):>5}  " + "  ".join(cells))
    return lines
