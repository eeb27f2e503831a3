"""BraTS lesion-wise rules: golden cases of both presets, matching, merging, false positives, thresholds."""

from __future__ import annotations

import numpy as np
import pytest

from components.metrics.lesionwise import lesionwise_preset, lesionwise_scores
from components.metrics.surface import overlap_scores

GRID = (96, 96, 96)
ISO = (1.0, 1.0, 1.0)


def ball(center, r, shape=GRID) -> np.ndarray:
    """ball(c, r) = {|x - c|^2 <= r^2} on the voxel grid (docs/design.md §5)."""
    x, y, z = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return (x - center[0]) ** 2 + (y - center[1]) ** 2 + (z - center[2]) ** 2 <= r * r


def box(lo, hi, shape) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return m


EMPTY = np.zeros(GRID, bool)
GOLDEN = {
    # docs/design.md §5, label 3 only, 1 mm.
    "A": (lambda: ball((32, 30, 30), 8) | ball((30, 75, 20), 3), lambda: ball((30, 30, 30), 8) | ball((70, 70, 70), 4)),
    "B": (lambda: EMPTY, lambda: EMPTY),
    "C": (lambda: ball((40, 40, 40), 5), lambda: EMPTY),
    "D": (lambda: EMPTY, lambda: ball((40, 40, 40), 5)),
}
# case: (LW-Dice, LW-HD95, Dice, HD95) with the 2023 preset; (LW-Dice, LW-HD95) with the 2024 preset.
EXPECTED_2023 = {"A": (0.2717, 250.0, 0.7477, 61.237), "B": (1.0, 0.0, 1.0, 0.0), "C": (0.0, 374.0, 0.0, 374.0),
                 "D": (0.0, 374.0, 0.0, 374.0)}
EXPECTED_2024 = {"A": (0.2717, 225.33), "B": (1.0, 0.0), "C": (0.0, 337.0), "D": (0.0, 337.0)}


def _close_hd(value: float, expected: float) -> bool:
    return abs(value - expected) <= 0.03 * expected + 1e-9


@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_golden_cases_2023(case):
    pred, gt = GOLDEN[case][0](), GOLDEN[case][1]()
    lw = lesionwise_scores(pred, gt, ISO, "ET", lesionwise_preset("brats2023"))
    legacy = overlap_scores(pred, gt, ISO)
    lw_dice, lw_hd, dice, hd = EXPECTED_2023[case]
    assert abs(lw.dice - lw_dice) <= 0.002 and _close_hd(lw.hd95, lw_hd)
    assert abs(legacy["dice"] - dice) <= 0.002 and _close_hd(legacy["hd95"], hd)


@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_golden_cases_2024(case):
    pred, gt = GOLDEN[case][0](), GOLDEN[case][1]()
    lw = lesionwise_scores(pred, gt, ISO, "ET", lesionwise_preset("brats2024"))
    lw_dice, lw_hd = EXPECTED_2024[case]
    assert abs(lw.dice - lw_dice) <= 0.002 and _close_hd(lw.hd95, lw_hd)


def test_split_prediction_counts_once_for_its_lesion():
    # GT: one 10^3 box (1000 voxels). Prediction: the same box cut in two by removing the slab x = 10
    # (100 voxels): two 26-separate components (450 voxels each), both touching the lesion.
    # One hit, no false positive: LW-Dice = Dice(900 vs 1000) = 1800 / 1900 = 0.947368.
    shape = (24, 24, 24)
    gt = box((5, 5, 5), (15, 15, 15), shape)
    pred = gt.copy()
    pred[10] = False
    lw = lesionwise_scores(pred, gt, ISO, "WT", lesionwise_preset("brats2023"))
    assert (lw.n_gt, lw.n_tp, lw.n_fp) == (1, 1, 0)
    assert lw.dice == pytest.approx(1800 / 1900, abs=1e-9)
    assert lw.hd95 == pytest.approx(overlap_scores(pred, gt, ISO)["hd95"])


def test_ground_truth_components_within_dilation_merge_into_one_lesion():
    # GT: two 8^3 boxes 2 voxels apart (x 4-11 and 14-21): within 3 dilations, so one lesion of 1024 voxels.
    # Prediction: only the first box (512). LW-Dice = 2*512 / (1024 + 512) = 0.666667 over N_gt = 1;
    # LW-HD95 = 10 mm: the far face (x = 22) of the missed box, 64 of 768 mm^2 = 8.3 % of the GT surface,
    # lies 10 mm from the prediction's face at x = 12.
    shape = (40, 24, 24)
    first, second = box((4, 5, 5), (12, 13, 13), shape), box((14, 5, 5), (22, 13, 13), shape)
    lw = lesionwise_scores(first, first | second, ISO, "WT", lesionwise_preset("brats2023"))
    assert (lw.n_gt, lw.n_tp) == (1, 1)
    assert lw.dice == pytest.approx(2 / 3, abs=1e-9)
    assert lw.hd95 == pytest.approx(10.0, abs=1e-6)


def test_distant_ground_truth_components_stay_separate_lesions():
    # Same boxes 14 voxels apart: two lesions, one found exactly (Dice 1, HD95 0), one missed
    # (Dice 0, HD95 374): LW-Dice = (1 + 0) / 2 = 0.5, LW-HD95 = (0 + 374) / 2 = 187.
    shape = (40, 24, 24)
    first, second = box((4, 5, 5), (12, 13, 13), shape), box((26, 5, 5), (34, 13, 13), shape)
    lw = lesionwise_scores(first, first | second, ISO, "WT", lesionwise_preset("brats2023"))
    assert (lw.n_gt, lw.n_tp, lw.n_fn, lw.n_fp) == (2, 1, 1, 0)
    assert (lw.dice, lw.hd95) == (pytest.approx(0.5), pytest.approx(187.0))


def _small_false_positive() -> tuple[np.ndarray, np.ndarray]:
    # GT: a 10^3 box, predicted exactly; plus a 2^3 = 8 voxel predicted blob far away.
    shape = (32, 32, 32)
    gt = box((4, 4, 4), (14, 14, 14), shape)
    return gt | box((25, 25, 25), (27, 27, 27), shape), gt


def test_small_false_positive_counts_in_2023():
    # FP of any size: LW-Dice = 1 / (1 + 1) = 0.5, LW-HD95 = (0 + 374) / 2 = 187.
    pred, gt = _small_false_positive()
    lw = lesionwise_scores(pred, gt, ISO, "TC", lesionwise_preset("brats2023"))
    assert (lw.n_fp, lw.dice, lw.hd95) == (1, pytest.approx(0.5), pytest.approx(187.0))


def test_small_false_positive_is_removed_first_in_2024():
    # 8 mm^3 <= 20 mm^3 (TC threshold 2024): the blob vanishes before scoring: LW-Dice 1, LW-HD95 0.
    pred, gt = _small_false_positive()
    lw = lesionwise_scores(pred, gt, ISO, "TC", lesionwise_preset("brats2024"))
    assert (lw.n_fp, lw.dice, lw.hd95) == (0, pytest.approx(1.0), pytest.approx(0.0))


def test_small_ground_truth_lesion_is_dropped_after_matching_and_its_hit_is_no_false_positive():
    # GT: a 10^3 box (kept) + a 3^3 = 27 mm^3 box (<= 50 mm^3, dropped). Prediction: the big box and a
    # 2^3 blob inside the small lesion. The blob touches only the dropped lesion: neither hit nor FP.
    # Scores count the big lesion only: LW-Dice 1, LW-HD95 0.
    shape = (32, 32, 32)
    big, small = box((4, 4, 4), (14, 14, 14), shape), box((22, 22, 22), (25, 25, 25), shape)
    pred = big | box((23, 23, 23), (25, 25, 25), shape)
    lw = lesionwise_scores(pred, big | small, ISO, "WT", lesionwise_preset("brats2023"))
    assert (lw.n_gt, lw.n_fp, lw.dice, lw.hd95) == (1, 0, pytest.approx(1.0), pytest.approx(0.0))


def test_lesion_threshold_uses_millimetres_cubed():
    # The 27-voxel lesion, missed, with voxels of 1 x 1 x 2 mm: 54 mm^3 > 50, so it is kept and missed:
    # LW-Dice = (1 + 0) / 2 = 0.5. (At 1 mm it is 27 mm^3 and dropped, as in the previous test.)
    shape = (32, 32, 32)
    big, small = box((4, 4, 4), (14, 14, 14), shape), box((22, 22, 22), (25, 25, 25), shape)
    lw = lesionwise_scores(big, big | small, (1.0, 1.0, 2.0), "WT", lesionwise_preset("brats2023"))
    assert (lw.n_gt, lw.n_fn, lw.dice) == (2, 1, pytest.approx(0.5))


def test_presets_hold_the_official_constants():
    # 2024 merges NETC and RC at dilation 5 but leaves SNFH at 3 (the official script's "SFNH" typo).
    p23, p24 = lesionwise_preset("brats2023"), lesionwise_preset("brats2024")
    assert (p23.penalty_mm, p23.threshold("ET"), p23.merge_dilation_for("NETC")) == (374.0, 50.0, 3)
    assert not (p23.merge_pred_by_dilation or p23.remove_small_pred)
    assert (p24.penalty_mm, p24.threshold("ET"), p24.threshold("TC")) == (337.0, 10.0, 20.0)
    assert (p24.merge_dilation_for("NETC"), p24.merge_dilation_for("RC"), p24.merge_dilation_for("SNFH")) == (5, 5, 3)
    assert p24.merge_pred_by_dilation and p24.remove_small_pred
    with pytest.raises(ValueError, match="unknown lesion-wise preset"):
        lesionwise_preset("brats2022")
