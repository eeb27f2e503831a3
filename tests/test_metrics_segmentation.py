"""Segmentation evaluation: regions from the label scheme, one case's rows, folders and datasets, flat metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components.metrics import flat_metrics
from components.metrics.segmentation import SegmentationEvalConfig, evaluate_segmentation, score_case
from tests import builders as b

ISO = (1.0, 1.0, 1.0)


def test_regions_come_from_the_label_scheme():
    # brats2021 has ET = 4: a seg holding only label 4 is ET (and TC, WT) there; in brats2024_post,
    # 4 is the resection cavity: scored as RC, outside WT.
    seg = np.zeros((20, 20, 20), np.int16)
    seg[5:10, 5:10, 5:10] = 4
    rows = {r["region"]: r for r in score_case(seg, seg, ISO, SegmentationEvalConfig.from_preset("brats2021"))}
    assert set(rows) == {"WT", "TC", "ET"} and rows["ET"]["gt_volume_mm3"] == 125.0
    rows = {r["region"]: r for r in score_case(seg, seg, ISO, SegmentationEvalConfig.from_preset("brats2024_post"))}
    assert set(rows) == {"WT", "TC", "ET", "NETC", "SNFH", "RC"}
    assert rows["RC"]["gt_volume_mm3"] == 125.0 and rows["WT"]["gt_volume_mm3"] == 0.0


def test_score_case_applies_legacy_empty_conventions():
    # ET absent in both (1, 0), present only in the prediction (0, 374).
    gt = np.zeros((20, 20, 20), np.int16)
    gt[5:10, 5:10, 5:10] = 2
    pred = gt.copy()
    pred[6:8, 6:8, 6:8] = 3
    rows = {r["region"]: r for r in score_case(gt, gt, ISO, SegmentationEvalConfig.from_preset("brats2023"))}
    assert (rows["ET"]["dice"], rows["ET"]["hd95"], rows["ET"]["lw_dice"], rows["ET"]["lw_hd95"]) == (1.0, 0.0, 1.0, 0.0)
    rows = {r["region"]: r for r in score_case(pred, gt, ISO, SegmentationEvalConfig.from_preset("brats2023"))}
    assert (rows["ET"]["dice"], rows["ET"]["hd95"], rows["ET"]["lw_hd95"]) == (0.0, 374.0, 374.0)


@pytest.fixture
def seg_folders(tmp_path):
    """GT in BraTS naming (<case>-seg.nii.gz), predictions in nnU-Net naming (<case>.nii.gz)."""
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    for i in range(3):
        seg = b.seg_array(labels=(1, 2, 3), seed=i)
        b.save(gt_dir / f"CASE-{i}" / f"CASE-{i}-seg.nii.gz", seg, dtype=np.uint8)
        b.save(gt_dir / f"CASE-{i}" / f"CASE-{i}-t1n.nii.gz", b.image_array(i))  # ignored
        b.save(pred_dir / f"CASE-{i}.nii.gz", seg, dtype=np.uint8)
    b.save(gt_dir / "CASE-3-seg.nii.gz", b.seg_array(labels=(1, 2, 3)), dtype=np.uint8)  # no prediction
    b.save(pred_dir / "CASE-9.nii.gz", b.seg_array(labels=(1, 2, 3)), dtype=np.uint8)  # no ground truth
    b.truncate(pred_dir / "CASE-1.nii.gz")  # unreadable
    b.save(pred_dir / "CASE-2.nii.gz", np.zeros((8, 8, 8), np.uint8))  # mis-shaped
    return gt_dir, pred_dir


def test_folder_evaluation_reports_bad_files_by_name_and_scores_the_rest(seg_folders):
    gt_dir, pred_dir = seg_folders
    rep = evaluate_segmentation(str(gt_dir), pred_dir, SegmentationEvalConfig.from_preset("brats2023"))
    assert rep.table["case_id"].unique().tolist() == ["CASE-0"]
    assert (rep.table["dice"] == 1.0).all() and len(rep.table) == 3
    reasons = {p["case_id"]: p["reason"] for p in rep.problems}
    assert set(reasons) == {"CASE-1", "CASE-2", "CASE-3", "CASE-9"}
    assert "unreadable" in reasons["CASE-1"] and "CASE-1.nii.gz" in reasons["CASE-1"]
    assert "shape (8, 8, 8)" in reasons["CASE-2"] and "no prediction" in reasons["CASE-3"]


def test_dataset_ground_truth_uses_ok_cases_with_a_seg(tmp_path):
    ws = tmp_path / "ws"
    cases = {f"C{i}": b.brain_case((16, 16, 16), seed=i) for i in range(2)}
    b.write_metrics_dataset(ws, "real", cases)
    pred = tmp_path / "pred"
    for cid, (_, seg) in cases.items():
        b.save(pred / f"{cid}.nii.gz", seg, dtype=np.uint8)
    rep = evaluate_segmentation("real", pred, SegmentationEvalConfig.from_preset("brats2023"), workspace=ws)
    assert sorted(rep.table["case_id"].unique()) == ["C0", "C1"] and not rep.problems


def test_flat_metrics_follow_the_naming_scheme():
    table = pd.DataFrame({"case_id": ["a", "b"], "region": ["WT", "WT"], "dice": [0.8, 0.6], "hd95": [2.0, 4.0],
                          "assd": [1.0, 1.0], "lw_dice": [0.5, 0.7], "lw_hd95": [10.0, 20.0]})
    flat = flat_metrics(table)
    assert flat == {"dice_WT": pytest.approx(0.7), "hd95_WT_mm": 3.0, "assd_WT_mm": 1.0, "lw_dice_WT": pytest.approx(0.6),
                    "lw_hd95_WT": 15.0}
