"""Synthesis scores: Frechet distance and KID maths, FID behaviour, MS-SSIM sizes, the random 3-D network, the report."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from components.metrics import flat_metrics
from components.metrics.synthesis import (
    INCEPTION_NAME,
    RandomConv3d,
    SynthesisEvalConfig,
    SynthesisMetricsError,
    evaluate_synthesis,
    extract_features,
    frechet_distance,
    frechet_distance_features,
    kernel_inception_distance,
    msssim_3d,
    msssim_params,
    write_report,
)
from data_catalog import open_dataset
from tests import builders as b


def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians():
    # |mu1 - mu2|^2 = 1 + 4 = 5; for commuting covariances the trace term is sum (sqrt(a) - sqrt(b))^2
    # = (1 - 2)^2 + (2 - 2)^2 + (3 - 1)^2 = 5: d^2 = 10, also after rotating both by one orthogonal matrix.
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
    s1, s2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 4.0, 1.0])
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(10.0, abs=1e-9)
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((3, 3)))
    assert frechet_distance(q @ mu1, q @ s1 @ q.T, q @ mu2, q @ s2 @ q.T) == pytest.approx(10.0, abs=1e-9)


def test_frechet_distance_of_few_samples_equals_the_covariance_route():
    # N < D takes the cross-Gram route; it must equal the D x D covariance formula.
    rng = np.random.default_rng(1)
    f1, f2 = rng.standard_normal((12, 40)), 1.3 * rng.standard_normal((9, 40)) + 0.2
    full = frechet_distance(f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False))
    assert frechet_distance_features(f1, f2) == pytest.approx(full, rel=1e-6)


def test_kid_is_near_zero_for_one_distribution_and_large_for_another():
    rng = np.random.default_rng(2)
    x, y, z = rng.standard_normal((60, 32)), rng.standard_normal((60, 32)), rng.standard_normal((60, 32)) + 1.0
    same, _ = kernel_inception_distance(x, y, np.random.default_rng(0), subset_size=30, subsets=20)
    shifted, _ = kernel_inception_distance(x, z, np.random.default_rng(0), subset_size=30, subsets=20)
    assert abs(same) < 0.05 * shifted


def test_kid_std_is_a_real_spread_when_the_sets_are_smaller_than_the_subset_size():
    # 10 rows each, subset size 100: subsets of the whole set would all be identical (std exactly 0).
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((10, 32)), rng.standard_normal((10, 32)) + 0.3
    kid, std = kernel_inception_distance(x, y, np.random.default_rng(0), subset_size=100, subsets=50)
    assert math.isfinite(kid) and std > 1e-6  # not rounding noise around an exact 0
    _, std3 = kernel_inception_distance(x[:3], y[:3], np.random.default_rng(0), subset_size=100, subsets=20)
    assert std3 > 1e-6  # 3 slices a side (the smallest report): subsets of 2


@pytest.mark.parametrize("shape, expected", [
    ((240, 240, 155), (7, 5)),  # BraTS: kernel 7, five scales
    ((96, 96, 96), (5, 5)),     # reference A4: 96^3 needs kernel <= 5
    ((32, 32, 32), (3, 4)),     # test sizes: fewer scales
])
def test_msssim_parameters_fit_the_volume(shape, expected):
    kernel, _, weights = msssim_params(shape)
    assert (kernel, len(weights)) == expected and sum(weights) == pytest.approx(1.0)


def test_msssim_runs_on_small_volumes_and_is_one_for_identical_ones():
    rng = np.random.default_rng(3)
    a = rng.random((32, 32, 32)).astype(np.float32)
    kernel, sigma, weights = msssim_params(a.shape)
    vals = msssim_3d([(a, a), (a, rng.random(a.shape).astype(np.float32))], kernel, sigma, weights)
    assert vals[0] == pytest.approx(1.0, abs=1e-5) and vals[1] < 0.9


def test_random_3d_network_is_fixed_by_its_seed_and_leaves_global_rng_alone():
    torch_state, np_state = torch.random.get_rng_state(), np.random.get_state()
    vol = np.random.default_rng(4).random((20, 24, 16)).astype(np.float32)
    nets = [RandomConv3d(seed=7, size=32), RandomConv3d(seed=7, size=32), RandomConv3d(seed=8, size=32)]
    feats = [n.features(n.prepare(vol, (1.0, 1.0, 2.0))[None]) for n in nets]
    assert feats[0].shape == (1, 256)
    np.testing.assert_array_equal(feats[0], feats[1])
    assert not np.allclose(feats[0], feats[2])
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    assert all(np.array_equal(x, y) for x, y in zip(np.random.get_state()[1:3], np_state[1:3], strict=True))


NOISE = (0.0, 0.1, 0.5)


@pytest.fixture(scope="module")
def fid_series(tmp_path_factory):
    """2-D FID of copies of a 4-case dataset with growing noise (3 slices per dataset: a few seconds)."""
    ws = tmp_path_factory.mktemp("fid")
    cases = {f"C{i}": b.brain_case(seed=i) for i in range(4)}
    b.write_metrics_dataset(ws, "real", cases)
    cfg = SynthesisEvalConfig(modalities=("t1c",), max_slices=3)
    net = RandomConv3d(cfg.rand3d_seed, 32)
    real = extract_features(open_dataset(ws, "real"), sorted(cases), cfg, "cpu", net)
    out = {}
    for sigma in NOISE:
        name = f"noise{sigma:g}"
        b.write_metrics_dataset(ws, name, b.noisy_copy(cases, sigma, seed=5), kind="synthetic")
        synth = extract_features(open_dataset(ws, name), sorted(cases), cfg, "cpu", net)
        out[sigma] = frechet_distance_features(real.inception["t1c"], synth.inception["t1c"])
    return out


def test_fid_of_a_dataset_against_its_copy_is_zero(fid_series):
    # Slice positions depend on the case id, not the dataset: an identical copy gives identical features.
    assert fid_series[0.0] == pytest.approx(0.0, abs=1e-3)


def test_fid_grows_monotonically_with_noise(fid_series):
    values = [fid_series[s] for s in NOISE]
    assert all(a < c for a, c in zip(values, values[1:], strict=False)), values


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
