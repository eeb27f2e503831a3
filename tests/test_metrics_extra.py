"""GliomaGen's extra scores: kappa, accuracy, per-class F1 and the WT-volume Pearson r, on arrays small enough
to check by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from components.metrics.extra import case_extra_scores, extra_columns, extra_scores
from components.metrics.segmentation import SegmentationError
from tests import builders as b

ISO = (1.0, 1.0, 1.0)


def test_kappa_accuracy_and_f1_match_the_hand_computed_values():
    # voxel pairs (gt, pred): (0,0) (0,1) (1,1) (1,1) (2,2) (2,0) (3,3) (3,3)
    gt = np.array([0, 0, 1, 1, 2, 2, 3, 3], np.int16).reshape(2, 2, 2)
    pred = np.array([0, 1, 1, 1, 2, 0, 3, 3], np.int16).reshape(2, 2, 2)
    row = case_extra_scores(pred, gt, (1.0, 1.0, 2.0), "brats2023", "c")
    # accuracy 6/8; p_o = .75, p_e = sum(gt share x pred share) = .25 * (2+3+1+2)/8 = .25 -> (.75-.25)/.75
    assert row["accuracy"] == pytest.approx(0.75)
    assert row["kappa"] == pytest.approx(2 / 3)
    # NCR: tp 2, fp 1, fn 0 -> 4/5; ED: tp 1, fp 0, fn 1 -> 2/3; ET: tp 2 -> 1
    assert (row["f1_NCR"], row["f1_ED"], row["f1_ET"]) == pytest.approx((0.8, 2 / 3, 1.0))
    # WT = labels 1-3: 6 voxels in gt, 6 in pred, 2 mm^3 each
    assert (row["gt_wt_volume_mm3"], row["pred_wt_volume_mm3"]) == (12.0, 12.0)


def test_empty_conventions():
    empty = np.zeros((3, 3, 3), np.int16)
    tumour = empty.copy()
    tumour[1, 1, 1] = 2
    both = case_extra_scores(empty, empty, ISO, "brats2023")
    # one label in both maps: kappa undefined (NaN); absent classes score F1 = 1 (GliomaGen's empty/empty Dice)
    assert math.isnan(both["kappa"]) and both["accuracy"] == 1.0
    assert (both["f1_NCR"], both["f1_ED"], both["f1_ET"]) == (1.0, 1.0, 1.0)
    missed = case_extra_scores(empty, tumour, ISO, "brats2023")
    # 26 of 27 voxels agree; p_e = (26/27)(27/27) -> kappa 0; ED missed -> F1 0, the absent classes 1
    assert missed["accuracy"] == pytest.approx(26 / 27) and missed["kappa"] == pytest.approx(0.0)
    assert (missed["f1_NCR"], missed["f1_ED"], missed["f1_ET"]) == (1.0, 0.0, 1.0)


def test_post_treatment_classes_and_rc_outside_the_volume():
    gt = np.zeros((4, 4, 4), np.int16)
    gt[0, 0, :] = [1, 2, 3, 4]
    pred = gt.copy()
    pred[0, 0, 3] = 0  # RC missed
    row = case_extra_scores(pred, gt, ISO, "brats2024_post")
    assert list(row) == extra_columns("brats2024_post")
    assert (row["f1_NETC"], row["f1_SNFH"], row["f1_ET"], row["f1_RC"]) == (1.0, 1.0, 1.0, 0.0)
    assert (row["gt_wt_volume_mm3"], row["pred_wt_volume_mm3"]) == (3.0, 3.0)


def test_labels_outside_the_scheme_are_refused():
    seg = np.zeros((2, 2, 2), np.int16)
    seg[0, 0, 0] = 4
    with pytest.raises(SegmentationError, match=r"case x: labels outside scheme 'brats2023': expected \[0, 1, 2, 3\], "
                                                r"found \[4\]"):
        case_extra_scores(seg, np.zeros_like(seg), ISO, "brats2023", "x")


def _cube_case(tmp_path, name: str, gt_side: int, pred_side: int):
    gt, pred = np.zeros((8, 8, 8), np.uint8), np.zeros((8, 8, 8), np.uint8)
    gt[:2, :2, :gt_side] = 2
    pred[:2, :2, :pred_side] = 2
    return (name, b.save(tmp_path / "pred" / f"{name}.nii.gz", pred), b.save(tmp_path / "gt" / f"{name}-seg.nii.gz", gt))


def test_files_give_the_flat_metrics_and_the_volume_correlation(tmp_path):
    # WT volumes (voxels of 1 x 1.2 x 2.5 = 3 mm^3): gt 4, 8, 12 x 3; pred 4, 12, 8 x 3.
    # Deviations from the mean (-1, 0, 1) and (-1, 1, 0): r = 1 / sqrt(2 x 2) = 0.5
    pairs = [_cube_case(tmp_path, "A", 1, 1), _cube_case(tmp_path, "B", 2, 3), _cube_case(tmp_path, "C", 3, 2)]
    bad = ("D", b.save(tmp_path / "pred" / "D.nii.gz", np.zeros((4, 4, 4), np.uint8)), pairs[0][2])
    res = extra_scores([*pairs, bad], "brats2023", progress=False)
    assert res.table["case_id"].tolist() == ["A", "B", "C"]
    assert res.table["gt_wt_volume_mm3"].tolist() == pytest.approx([12.0, 24.0, 36.0])
    assert set(res.metrics) == {"kappa", "accuracy", "f1_NCR", "f1_ED", "f1_ET", "volume_pearson_r"}
    assert res.metrics["volume_pearson_r"] == pytest.approx(0.5)
    # B: ED tp 8, fp 4 -> 16/20; C: tp 8, fn 4 -> 16/20; A: 1
    assert res.metrics["f1_ED"] == pytest.approx((1.0 + 0.8 + 0.8) / 3)
    assert res.metrics["accuracy"] == pytest.approx((1.0 + 508 / 512 + 508 / 512) / 3)
    assert [p["case_id"] for p in res.problems] == ["D"] and "expected (8, 8, 8)" in res.problems[0]["reason"]


def test_volume_correlation_needs_two_cases(tmp_path):
    res = extra_scores([_cube_case(tmp_path, "A", 1, 2)], "brats2023", progress=False)
    assert math.isnan(res.metrics["volume_pearson_r"]) and res.metrics["f1_ED"] == pytest.approx(2 * 4 / (4 + 8))
