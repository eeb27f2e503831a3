"""The synthesis report: every score with its extractor and counts, pairing, floors, the real split."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from components.metrics import flat_metrics
from components.metrics.features import INCEPTION_NAME
from components.metrics.synthesis import SynthesisEvalConfig, SynthesisMetricsError, evaluate_synthesis, write_report
from tests import builders as b


def _with_splits(test: dict, train: dict) -> tuple[dict, dict]:
    """Cases and the extra manifest column that puts ``test`` in the test split and ``train`` in the train split."""
    return {**test, **train}, {"split": {**{c: "test" for c in test}, **{c: "train" for c in train}}}


@pytest.fixture(scope="module")
def synthesis_report(tmp_path_factory):
    """Real: test cases R0-R2 and train cases T0-T3. Synthetic: S0 and S1 from real R0's mask (seeds 1, 2:
    paired, same mask), S2 from an augmented (flipped) mask of R1 (not paired), S3 from R2's mask (paired)."""
    ws = tmp_path_factory.mktemp("synth")
    real = {f"R{i}": b.brain_case(seed=i) for i in range(3)}
    cases, split = _with_splits(real, {f"T{i}": b.brain_case(seed=10 + i) for i in range(4)})
    b.write_metrics_dataset(ws, "real", cases, extra_columns=split)
    noisy = b.noisy_copy({"S0": real["R0"], "S1": real["R0"], "S2": real["R1"], "S3": real["R2"]}, 0.1, seed=9)
    imgs, seg = noisy["S2"]
    noisy["S2"] = (imgs[:, ::-1].copy(), seg[::-1].copy())
    b.write_metrics_dataset(
        ws, "synth", noisy, kind="synthetic",
        extra_columns={"source_case": {"S0": "R0", "S1": "R0", "S2": "R1", "S3": "R2"},
                       "mask_case": {"S0": "M0", "S1": "M0", "S2": "M1", "S3": "M2"},
                       "seed": {"S0": 1, "S1": 2, "S2": 1, "S3": 1}},
    )
    cfg = SynthesisEvalConfig(modalities=("t1c",), max_slices=3, rand3d_size=32, msssim_pairs=3)
    report = evaluate_synthesis(ws, "real", "synth", cfg)
    paths = write_report(report, ws / "report.json")
    return report, paths


def test_synthesis_report_names_every_value_with_its_extractor_and_counts(synthesis_report):
    report, _ = synthesis_report
    rows = {r["metric"]: r for r in report.rows}
    for name in ("fid2d_t1c", "kid_t1c", "fd_rand3d_t1c", "msssim_fidelity_t1c", "msssim_diversity_t1c",
                 "msssim_diversity_samemask_t1c", "msssim_realreal_t1c", "psnr_brain_t1c", "ssim_brain_t1c"):
        assert rows[name]["extractor"], name
        assert rows[name]["n_real"] + rows[name]["n_synthetic"] > 0, name
    assert rows["fid2d_t1c"]["extractor"] == INCEPTION_NAME and rows["fid2d_t1c"]["n_real"] == 3
    assert rows["fd_rand3d_t1c"]["n_real"] == 3 and rows["fd_rand3d_t1c"]["n_synthetic"] == 4


def test_synthesis_report_pairs_only_identical_masks_and_groups_same_mask_seeds(synthesis_report):
    report, _ = synthesis_report
    rows = {r["metric"]: r for r in report.rows}
    assert report.info["pairs"]["fidelity"] == [("S0", "R0"), ("S1", "R0"), ("S3", "R2")]  # S2's mask is flipped
    assert report.info["pairs"]["diversity_samemask"] == [("S0", "S1")]
    assert rows["msssim_fidelity_t1c"]["n_real"] == 3 and 0 < rows["msssim_fidelity_t1c"]["value"] < 1
    assert rows["msssim_diversity_samemask_t1c"]["n_synthetic"] == 1
    assert math.isfinite(rows["psnr_brain_t1c"]["value"]) and 0 < rows["ssim_brain_t1c"]["value"] < 1


def test_synthesis_report_files_carry_extractor_and_counts(synthesis_report):
    report, (json_path, csv_path) = synthesis_report
    table = pd.read_csv(csv_path)
    assert {"metric", "value", "extractor", "n_real", "n_synthetic", "counts"} <= set(table.columns)
    data = json.loads(json_path.read_text())
    assert data["config"]["seed"] == 0 and data["extractors"]["fid2d/kid"] == INCEPTION_NAME
    assert flat_metrics(csv_path)["fid2d_t1c"] == pytest.approx(report.flat()["fid2d_t1c"])


def test_synthesis_floors_sit_beside_each_sample_size_dependent_score_at_the_same_n(synthesis_report):
    report, (_, csv_path) = synthesis_report
    rows = {r["metric"]: r for r in report.rows}
    for name, n_col in (("fid2d_t1c", "n_slices"), ("kid_t1c", "n_slices"), ("fd_rand3d_t1c", "n_volumes")):
        score, floor = rows[name], rows[f"{name}_floor"]
        assert math.isfinite(floor["value"]), (name, floor["counts"])
        assert floor[n_col] == score[n_col] == score["n_synthetic"] > 0, name
        assert floor["n_real"] == score["n_real"] and floor["n_synthetic"] == 0
        assert floor["counts"]["reference_splits"] == ["train"]
    assert rows["fid2d_t1c"]["n_slices"] == 3 and rows["fd_rand3d_t1c"]["n_volumes"] == 4
    assert rows["kid_t1c"]["std"] > 1e-6 and rows["kid_t1c_floor"]["std"] > 1e-6
    # The floors reach the ablation's MLflow run: in the metric,value table, under the score's prefix.
    flat = flat_metrics(csv_path)
    assert {"fid2d_t1c_floor", "kid_t1c_floor", "fd_rand3d_t1c_floor"} <= set(flat)
    table = pd.read_csv(csv_path).set_index("metric")
    assert table.loc["fid2d_t1c_floor", "n_slices"] == 3 and table.loc["fd_rand3d_t1c_floor", "n_volumes"] == 4


def test_synthesis_scores_use_the_real_test_split_by_default(tmp_path):
    # Test cases R0, R1; train cases are noisy, other brains. The synthetic set is an exact copy of the
    # test cases: scored against the test split it is perfect (FID, FD 0), against the train cases not.
    test = {f"R{i}": b.brain_case(seed=i) for i in range(2)}
    train = b.noisy_copy({f"T{i}": b.brain_case(seed=20 + i) for i in range(3)}, 0.5, seed=1)
    cases, split = _with_splits(test, train)
    b.write_metrics_dataset(tmp_path, "real", cases, extra_columns=split)
    b.write_metrics_dataset(tmp_path, "copy", test, kind="synthetic")
    cfg = SynthesisEvalConfig(modalities=("t1c",), max_slices=3, rand3d_size=32, msssim_pairs=1)
    report = evaluate_synthesis(tmp_path, "real", "copy", cfg)
    rows = {r["metric"]: r for r in report.rows}
    assert report.info["real_split"] == "test" and report.info["n_real_cases"] == 2
    assert report.info["real_cases"] == ["R0", "R1"]
    assert len(report.info["floor_reference_cases"]) == 2 and set(report.info["floor_reference_cases"]) <= set(train)
    assert rows["fid2d_t1c"]["value"] == pytest.approx(0.0, abs=1e-3)
    assert rows["fd_rand3d_t1c"]["value"] == pytest.approx(0.0, abs=1e-9) and rows["fd_rand3d_t1c"]["n_real"] == 2
    assert rows["fid2d_t1c_floor"]["value"] > 1.0  # the train cases are another distribution
    assert {r["real_split"] for r in report.rows} == {"test"}


def test_synthesis_without_held_out_cases_fails_clearly_and_all_leaves_floors_nan(tmp_path, caplog):
    cases = {f"R{i}": b.brain_case(seed=i) for i in range(2)}
    b.write_metrics_dataset(tmp_path, "real", cases)  # every case in the train split
    b.write_metrics_dataset(tmp_path, "synth", b.noisy_copy(cases, 0.1, seed=2), kind="synthetic")
    cfg = SynthesisEvalConfig(modalities=("t1c",), max_slices=3, rand3d_size=32, msssim_pairs=1)
    with pytest.raises(SynthesisMetricsError, match=r"real dataset 'real' has no ok case in split 'test'"):
        evaluate_synthesis(tmp_path, "real", "synth", cfg)
    with caplog.at_level("WARNING", logger="components.metrics.synthesis"):
        report = evaluate_synthesis(tmp_path, "real", "synth", cfg.model_copy(update={"real_split": "all"}))
    rows = {r["metric"]: r for r in report.rows}
    assert report.info["n_real_cases"] == 2 and math.isfinite(rows["fid2d_t1c"]["value"])
    for name in ("fid2d_t1c_floor", "kid_t1c_floor", "fd_rand3d_t1c_floor"):
        assert math.isnan(rows[name]["value"]) and "no real case outside" in rows[name]["counts"]["reason"]
    assert "floor" in caplog.text and "no real case outside" in caplog.text
