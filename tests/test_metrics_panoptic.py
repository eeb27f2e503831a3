"""Preset brats2025 (components/metrics/panoptic.py, panoptica) against numbers of the official BraTS 2025 scorer.

The reference values below were computed once, outside the project, by the official package itself: a
throw-away Python 3.11 venv with ``pip install brats-evaluation==0.0.10`` and its own dependencies (panoptica
2.1.7, numpy 2.2.6, pandas 2.3.3, scipy 1.17.1, connected-components-3d 3.29.0, rich 13.9.4), running
``Panoptica_Evaluator.load_from_config(brats_evaluation.config_path("gli"))`` (config_gli.yaml) with
``evaluate(pred, gt, voxelspacing=spacing)`` on exactly the arrays ``_cases()`` builds here, reading per group
``global_bin_dsc, global_bin_hd95, global_bin_nsd, pq_dsc, sq_dsc, rq, tp, fp, fn`` (wt, tc, et). Nothing is
installed at test time; brats-evaluation is not a dependency of gliosynth.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from components.metrics import flat_metrics
from components.metrics.segmentation import (
    CSV_COLUMNS,
    PANOPTIC_CSV_COLUMNS,
    SegmentationError,
    SegmentationEvalConfig,
    evaluate_pairs,
    score_case,
)
from tests import builders as b

SHAPE = (64, 64, 48)
ISO = (1.0, 1.0, 1.0)
ANISO = (1.0, 1.2, 2.5)
INF, NAN = math.inf, math.nan
COLUMNS = ("dice", "hd95", "nsd", "pq", "sq", "rq", "tp", "fp", "fn")
# case -> region -> (dice, hd95, nsd, pq, sq, rq, tp, fp, fn), from brats-evaluation 0.0.10 (see the module docstring)
OFFICIAL = {
    "multi_missed": {
        "WT": (0.887447, 1.414214, 0.389322, 0.662766, 0.828458, 0.8, 2, 0, 1),
        "TC": (0.752819, 25.101728, 0.339224, 0.561812, 0.842718, 0.666667, 1, 0, 1),
        "ET": (0.62183, 24.228083, 0.53037, 0.479592, 0.719388, 0.666667, 1, 0, 1),
    },
    "small_fp": {
        "WT": (0.998842, 0.0, 0.996101, 0.857143, 1.0, 0.857143, 3, 1, 0),
        "TC": (0.993769, 0.0, 0.9875, 0.8, 1.0, 0.8, 2, 1, 0),
        "ET": (0.992293, 0.0, 0.991189, 0.8, 1.0, 0.8, 2, 1, 0),
    },
    "empty_pred": {
        "WT": (0.0, INF, 0.0, 0.0, 0.0, 0.0, 0, 0, 3),
        "TC": (0.0, INF, 0.0, 0.0, 0.0, 0.0, 0, 0, 2),
        "ET": (0.0, INF, 0.0, 0.0, 0.0, 0.0, 0, 0, 2),
    },
    "empty_ref": {
        "WT": (0.0, INF, 0.0, 0.0, 0.0, 0.0, 0, 3, 0),
        "TC": (0.0, INF, 0.0, 0.0, 0.0, 0.0, 0, 2, 0),
        "ET": (0.0, INF, 0.0, 0.0, 0.0, 0.0, 0, 2, 0),
    },
    "both_empty": {
        "WT": (NAN, NAN, NAN, NAN, NAN, NAN, 0, 0, 0),
        "TC": (NAN, NAN, NAN, NAN, NAN, NAN, 0, 0, 0),
        "ET": (NAN, NAN, NAN, NAN, NAN, NAN, 0, 0, 0),
    },
    # the official global scores ignore the spacing: identical to multi_missed at 1 mm
    "aniso": {
        "WT": (0.887447, 1.414214, 0.389322, 0.662766, 0.828458, 0.8, 2, 0, 1),
        "TC": (0.752819, 25.101728, 0.339224, 0.561812, 0.842718, 0.666667, 1, 0, 1),
        "ET": (0.62183, 24.228083, 0.53037, 0.479592, 0.719388, 0.666667, 1, 0, 1),
    },
}
BRATS2025 = SegmentationEvalConfig.from_preset("brats2023", "brats2025")


def _ball(c, r) -> np.ndarray:
    x, y, z = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    return (x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 <= r * r


def _tumour(c) -> np.ndarray:
    """ED ball of radius 9 around an ET ball of radius 5 around an NCR ball of radius 3 (brats2023 labels)."""
    s = np.zeros(SHAPE, np.uint8)
    s[_ball(c, 9)] = 2
    s[_ball(c, 5)] = 3
    s[_ball(c, 3)] = 1
    return s


def _cases() -> dict[str, tuple[np.ndarray, np.ndarray, tuple[float, ...]]]:
    """name -> (prediction, ground truth, spacing): the arrays the official numbers were computed on."""
    gt = _tumour((20, 20, 20))
    gt[_ball((45, 45, 30), 4)] = 2  # a second, edema-only lesion
    gt[_ball((48, 15, 12), 3)] = 3  # a small separate ET lesion
    pred = _tumour((21, 20, 20))  # shifted by one voxel
    pred[_ball((46, 44, 30), 4)] = 2  # shifted diagonally; the small ET lesion is missed
    pred_fp = gt.copy()
    pred_fp[60:62, 60:62, 44:46] = 3  # perfect, plus an 8-voxel ET false positive far away
    empty = np.zeros(SHAPE, np.uint8)
    return {"multi_missed": (pred, gt, ISO), "small_fp": (pred_fp, gt, ISO), "empty_pred": (empty, gt, ISO),
            "empty_ref": (gt, empty, ISO), "both_empty": (empty, empty, ISO), "aniso": (pred, gt, ANISO)}


CASES = _cases()


def _close(ours: float, ref: float, column: str) -> bool:
    if math.isnan(ref) or math.isinf(ref):
        return (math.isnan(ours) and math.isnan(ref)) or ours == ref
    if column == "hd95":
        return ours == pytest.approx(ref, rel=0.03, abs=1e-6)
    return ours == pytest.approx(ref, abs=0.002)


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_brats2025_matches_the_official_scorer(name):
    pred, gt, spacing = CASES[name]
    rows = score_case(pred, gt, spacing, BRATS2025, name)
    assert [r["region"] for r in rows] == ["WT", "TC", "ET"] and {r["preset"] for r in rows} == {"brats2025"}
    for row in rows:
        for column, ref in zip(COLUMNS, OFFICIAL[name][row["region"]], strict=True):
            assert _close(float(row[column]), float(ref), column), (name, row["region"], column, row[column], ref)


def test_hd95_differs_from_the_2023_scorer():
    """The measured examples of docs/scoring.md: pooled vs directed HD95, spacing, and a far false positive."""
    c23 = SegmentationEvalConfig.from_preset("brats2023", "brats2023")
    by = {}
    for name in ("multi_missed", "aniso", "small_fp"):
        pred, gt, spacing = CASES[name]
        by[name] = ({r["region"]: r for r in score_case(pred, gt, spacing, c23, name)},
                    {r["region"]: r for r in score_case(pred, gt, spacing, BRATS2025, name)})
    old, new = by["multi_missed"]
    # same Dice; WT: the missed lesion dominates one direction (2023: the larger directed 95th percentile) but not
    # the pooled distances of both directions (brats-evaluation)
    assert old["WT"]["dice"] == pytest.approx(new["WT"]["dice"])
    assert old["WT"]["hd95"] == pytest.approx(19.08, abs=0.01) and new["WT"]["hd95"] == pytest.approx(math.sqrt(2))
    assert old["ET"]["hd95"] == pytest.approx(25.02, abs=0.01) and new["ET"]["hd95"] == pytest.approx(24.23, abs=0.01)
    # 1 x 1.2 x 2.5 mm: the 2023 HD95 is in mm and grows, the 2025 global HD95 is in voxels and does not
    old_a, new_a = by["aniso"]
    assert old_a["ET"]["hd95"] == pytest.approx(28.05, abs=0.01) and new_a["ET"]["hd95"] == new["ET"]["hd95"]
    # a far 8-voxel false positive: whole-region HD95 0 in both; 2023 lesion-wise HD95 = one 374 mm penalty over
    # 2 lesions + 1 false positive; brats2025 counts it in RQ and PQ only
    old_fp, new_fp = by["small_fp"]
    assert old_fp["ET"]["hd95"] == 0.0 and new_fp["ET"]["hd95"] == 0.0
    assert old_fp["ET"]["lw_hd95"] == pytest.approx(374.0 / 3)
    assert (new_fp["ET"]["fp"], new_fp["ET"]["sq"], new_fp["ET"]["pq"]) == (1, 1.0, pytest.approx(0.8))


def test_files_give_the_brats2025_table_and_flat_metrics(tmp_path):
    pairs = []
    for name in ("multi_missed", "empty_pred"):
        pred, gt, _ = CASES[name]
        pairs.append((name, b.save(tmp_path / "pred" / f"{name}.nii.gz", pred, b.affine(ISO)),
                      b.save(tmp_path / "gt" / f"{name}-seg.nii.gz", gt, b.affine(ISO))))
    report = evaluate_pairs(pairs, BRATS2025, progress=False)
    assert report.problems == [] and list(report.table.columns) == PANOPTIC_CSV_COLUMNS
    assert len(report.table) == 6 and set(report.table["preset"]) == {"brats2025"}
    wt = report.table.set_index(["case_id", "region"]).loc[("multi_missed", "WT")]
    assert wt["pq"] == pytest.approx(OFFICIAL["multi_missed"]["WT"][3], abs=0.002)
    flat = flat_metrics(report.table)
    assert {"dice_WT", "hd95_WT_mm", "nsd_WT", "pq_WT", "pq_ET", "nsd_ET"} <= set(flat)
    assert flat["pq_WT"] == pytest.approx((0.662766 + 0.0) / 2, abs=0.002)
    assert flat["hd95_WT_mm"] == math.inf  # the empty prediction's HD95 is inf, as the official scorer gives it
    summary = report.summary().set_index("region")
    assert summary.loc["TC", "nsd_mean"] == pytest.approx(0.339224 / 2, abs=0.002)
    assert math.isnan(summary.loc["TC", "lw_dice_mean"])  # no lesion-wise scores under this preset


def test_existing_presets_keep_their_columns_and_flat_metrics(tmp_path):
    pred, gt, _ = CASES["small_fp"]
    pair = ("c", b.save(tmp_path / "p.nii.gz", pred, b.affine(ISO)), b.save(tmp_path / "g.nii.gz", gt, b.affine(ISO)))
    report = evaluate_pairs([pair], SegmentationEvalConfig.from_preset("brats2023", "brats2024"), progress=False)
    assert list(report.table.columns) == CSV_COLUMNS and SegmentationEvalConfig.from_preset("brats2023").panoptic is None
    assert not any(k.startswith(("pq_", "nsd_")) for k in flat_metrics(report.table))


def test_post_treatment_scheme_scores_every_region_with_rc():
    gt = _tumour((20, 20, 20))
    gt[_ball((45, 45, 30), 5)] = 4  # resection cavity
    pred = gt.copy()
    pred[pred == 4] = 0  # cavity missed
    cfg = SegmentationEvalConfig.from_preset("brats2024_post", "brats2025")
    rows = {r["region"]: r for r in score_case(pred, gt, ISO, cfg, "post")}
    assert list(rows) == ["WT", "TC", "ET", "NETC", "SNFH", "RC"]
    assert (rows["WT"]["dice"], rows["WT"]["pq"], rows["WT"]["tp"]) == (1.0, 1.0, 1)
    assert (rows["RC"]["dice"], rows["RC"]["hd95"], rows["RC"]["fn"], rows["RC"]["pq"]) == (0.0, INF, 1, 0.0)


def test_config_records_the_official_configuration_and_refuses_unknown_presets():
    dumped = json.loads(BRATS2025.model_dump_json())
    assert dumped["panoptic"]["matching_threshold"] == 1e-6 and "config_gli.yaml" in dumped["panoptic"]["follows"]
    assert BRATS2025.preset == "brats2025"
    with pytest.raises(SegmentationError, match="unknown scoring preset 'brats2026'"):
        SegmentationEvalConfig.from_preset("brats2023", "brats2026")


@pytest.mark.slow
def test_evaluate_segmentation_verb_with_brats2025(tmp_path, prefect_harness):
    import pandas as pd

    from flows.__main__ import main

    for name in ("multi_missed", "small_fp"):
        pred, gt, _ = CASES[name]
        b.save(tmp_path / "pred" / f"{name}.nii.gz", pred, b.affine(ISO))
        b.save(tmp_path / "gt" / f"{name}-seg.nii.gz", gt, b.affine(ISO))
    out = tmp_path / "scores.csv"
    rc = main(["evaluate-segmentation", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred"),
               "--label-scheme", "brats2023", "--preset", "brats2025", "--out", str(out),
               "--workspace", str(tmp_path / "ws")])
    assert rc == 0
    table = pd.read_csv(out)
    assert list(table.columns) == PANOPTIC_CSV_COLUMNS and set(table["preset"]) == {"brats2025"}
    et = table.set_index(["case_id", "region"]).loc[("small_fp", "ET")]
    assert (et["fp"], et["pq"]) == (1, pytest.approx(0.8, abs=0.002))
