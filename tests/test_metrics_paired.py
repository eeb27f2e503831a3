"""Paired effects against the real-only baseline: pairing by seed and case, bootstrap CI, Wilcoxon."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from components.metrics.paired import bootstrap_ci, effect_lines, paired_effects


def _table(scores: dict[tuple[float, int], np.ndarray], regions=("WT", "TC")) -> pd.DataFrame:
    """Per-case rows for configurations keyed (ratio, seed); hd95 mirrors dice so both columns exist."""
    rows = []
    for (ratio, seed), dice in scores.items():
        for i, d in enumerate(dice):
            for k, region in enumerate(regions):
                rows.append({"config": f"r{ratio}-s{seed}", "ratio": ratio, "seed": seed, "synthetic_only": False,
                             "case_id": f"c{i}", "region": region, "dice": d - 0.1 * k, "hd95": 10 * (1 - d)})
    return pd.DataFrame(rows)


def test_differences_are_paired_by_seed_and_case():
    rng = np.random.default_rng(0)
    n = 12
    # Seed 1's baseline is far better than seed 0's: pairing across seeds would blur the +0.05.
    base = {0: rng.uniform(0.4, 0.6, n), 1: rng.uniform(0.8, 0.9, n)}
    step = rng.normal(0.05, 0.01, (2, n))
    t = _table({(0.0, 0): base[0], (0.0, 1): base[1], (1.0, 0): base[0] + step[0], (1.0, 1): base[1] + step[1]})
    eff = paired_effects(t, n_resamples=2000).set_index("ratio")
    per_case = step.mean(axis=0)  # seed-averaged paired differences, one per test case
    assert eff.loc[1.0, "delta_dice_WT"] == pytest.approx(per_case.mean())
    assert eff.loc[1.0, "delta_dice_WT_ci_low"] < per_case.mean() < eff.loc[1.0, "delta_dice_WT_ci_high"]
    assert eff.loc[1.0, "delta_dice_WT_ci_high"] - eff.loc[1.0, "delta_dice_WT_ci_low"] < 0.02
    assert eff.loc[1.0, "delta_dice_WT_p"] == pytest.approx(stats.wilcoxon(per_case).pvalue)
    assert eff.loc[1.0, "delta_hd95_WT_mm"] == pytest.approx(-10 * per_case.mean())
    assert eff.loc[1.0, "n_seeds"] == 2 and eff.loc[1.0, "n_cases"] == n and eff.loc[1.0, "paired_seeds"] == 2
    assert eff.loc[1.0, "dice_WT"] == pytest.approx(np.mean([base[0] + step[0], base[1] + step[1]]))
    assert eff.loc[0.0, "delta_dice_WT"] == 0.0 and np.isnan(eff.loc[0.0, "delta_dice_WT_p"])


def test_no_effect_gives_an_interval_around_zero():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.5, 0.9, 20)
    noise = rng.normal(0, 0.03, 20)
    eff = paired_effects(_table({(0.0, 0): base, (2.0, 0): base + noise}), n_resamples=2000).set_index("ratio")
    assert eff.loc[2.0, "delta_dice_WT_ci_low"] < 0 < eff.loc[2.0, "delta_dice_WT_ci_high"]
    assert eff.loc[2.0, "delta_dice_WT_p"] > 0.05


def test_the_interval_carries_the_spread_of_training_seeds():
    """Seed 0 gains +0.08 on every case and seed 1 loses 0.02: every case's seed mean is +0.03, but
    two training runs that disagree this much do not show an effect; the interval must say so."""
    rng = np.random.default_rng(2)
    base = rng.uniform(0.5, 0.9, 10)
    jitter = rng.normal(0, 0.002, (2, 10))
    t = _table({(0.0, 0): base, (0.0, 1): base, (1.0, 0): base + 0.08 + jitter[0], (1.0, 1): base - 0.02 + jitter[1]})
    eff = paired_effects(t, n_resamples=4000).set_index("ratio")
    assert eff.loc[1.0, "delta_dice_WT"] == pytest.approx(0.03, abs=0.002)
    assert eff.loc[1.0, "delta_dice_WT_ci_low"] < 0 < eff.loc[1.0, "delta_dice_WT_ci_high"]
    # resampling the test cases alone would have called it certain
    assert bootstrap_ci((t.loc[t.ratio == 1, "dice"].to_numpy() - t.loc[t.ratio == 0, "dice"].to_numpy())
                        .reshape(2, 10, 2)[:, :, 0].mean(axis=0), seed=0)[0] > 0.02


def test_bootstrap_ci_is_seeded_and_undefined_below_two_cases():
    x = np.array([0.1, 0.3, 0.2, 0.5])
    assert bootstrap_ci(x, seed=3, n_resamples=500) == bootstrap_ci(x, seed=3, n_resamples=500)
    assert all(np.isnan(bootstrap_ci(np.array([0.2]), seed=0)))


def test_effect_lines_show_each_ratio_with_its_interval():
    base = np.array([0.5, 0.6, 0.7])
    eff = paired_effects(_table({(0.0, 0): base, (1.0, 0): base + [0.1, 0.0, 0.05]}), n_resamples=500)
    lines = effect_lines(eff)
    assert len(lines) == 3 and "baseline" in lines[1]
    assert "+0.050 [" in lines[2] and "p=" in lines[2]


def test_a_missing_column_is_named():
    with pytest.raises(ValueError, match="hd95"):
        paired_effects(pd.DataFrame(columns=["ratio", "seed", "synthetic_only", "case_id", "region", "dice"]))
