"""components/synthesis/quality.py: the tissue-statistics quality score that ranks synthetic cases for export."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from components.synthesis.quality import (
    FLOOR,
    MIN_VOXELS,
    quality_distance,
    quality_score,
    reference_statistics,
    region_masks,
    tissue_statistics,
)
from data_catalog import MODALITIES, load_label_scheme
from tests import builders as b

SCHEME = load_label_scheme("brats2023")
SHAPE = (24, 22, 18)


def normalised(images: np.ndarray, head: np.ndarray) -> np.ndarray:
    """Window [0, 1000] -> [-1, 1], -1 outside the head (what the synthesizer's data stage feeds the score)."""
    x = np.clip(2.0 * images / 1000.0 - 1.0, -1.0, 1.0).astype(np.float32)
    x[:, ~head] = -1.0
    return x


def case(seed: int):
    images, seg, head = b.tissue_case(seed, SHAPE)
    return normalised(images, head), seg, head


@pytest.fixture(scope="module")
def reference():
    return reference_statistics([tissue_statistics(*case(s), SCHEME) for s in range(6)])


def test_the_reference_holds_every_modality_and_the_regions_big_enough_to_measure(reference):
    assert set(reference) == set(MODALITIES)
    for m in MODALITIES:
        # NCR of tissue_case is 7 voxels (< MIN_VOXELS): measured nowhere, so absent from the reference
        assert set(reference[m]) == {"head", "ED", "ET"}, m
        for r in reference[m].values():
            assert r["n_cases"] == 6 and r["median_std"] >= 0 and r["iqr_std"] >= 0
    # the contrasts of tissue_case: ED is bright in T2, ET brighter than healthy tissue in T1c
    assert reference["t2w"]["ED"]["median_mean"] > reference["t2w"]["head"]["median_mean"]
    assert reference["t1c"]["ET"]["median_mean"] > reference["t1c"]["head"]["median_mean"]


def test_a_case_like_the_training_data_outranks_scrambled_and_noised_versions_of_itself(reference):
    x, seg, head = case(100)
    good = quality_score(x, seg, head, SCHEME, reference)
    rng = np.random.default_rng(0)
    scrambled = x.copy()
    for c in range(4):  # the same intensities, shuffled across the head: tissue no longer follows the mask
        scrambled[c][head] = rng.permutation(x[c][head])
    noised = x.copy()
    noised[:, head] = np.clip(x[:, head] + rng.normal(0, 0.3, x[:, head].shape), -1, 1)
    flat = np.where(head, 0.0, -1.0)[None].repeat(4, 0).astype(np.float32)  # one grey value everywhere
    bad = {name: quality_score(v, seg, head, SCHEME, reference)
           for name, v in (("scrambled", scrambled), ("noised", noised), ("flat", flat))}
    assert 0.5 < good <= 1.0
    for name, score in bad.items():
        assert 0.0 < score < good - 0.2, (name, score, good)
    # the worse the tissue statistics, the lower the score
    worse = x.copy()
    worse[:, head] = np.clip(x[:, head] + rng.normal(0, 0.6, x[:, head].shape), -1, 1)
    assert quality_score(worse, seg, head, SCHEME, reference) < bad["noised"]


def test_the_only_reference_case_scores_exactly_one():
    x, seg, head = case(3)
    ref = reference_statistics([tissue_statistics(x, seg, head, SCHEME)])
    assert quality_score(x, seg, head, SCHEME, ref) == 1.0


def test_the_score_is_one_over_one_plus_the_mean_normalised_distance():
    stats = {"t1n": {"head": {"median": 0.5, "iqr": 0.2, "n": 100}}}
    ref = {"t1n": {"head": {"median_mean": 0.0, "median_std": 0.05, "iqr_mean": 0.2, "iqr_std": 0.0, "n_cases": 3}}}
    # median: 0.5 / (0.05 + FLOOR) = 5; iqr: 0 -> mean 2.5
    assert FLOOR == 0.05
    assert quality_distance(stats, ref) == pytest.approx(2.5)


def test_the_score_is_deterministic_and_leaves_its_inputs_alone(reference):
    x, seg, head = case(7)
    x0, seg0, head0, ref0 = x.copy(), seg.copy(), head.copy(), copy.deepcopy(reference)
    scores = {quality_score(x, seg, head, SCHEME, reference) for _ in range(3)}
    assert len(scores) == 1 and not math.isnan(scores.pop())
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(seg, seg0)
    np.testing.assert_array_equal(head, head0)
    assert reference == ref0
    assert tissue_statistics(x, seg, head, SCHEME) == tissue_statistics(x0, seg0, head0, SCHEME)


def test_regions_are_the_head_without_tumour_and_each_label():
    seg = np.zeros((4, 4, 4), np.uint8)
    seg[0, 0, 0], seg[1, 1, 1], seg[2, 2, 2] = 1, 2, 3
    head = np.ones((4, 4, 4), bool)
    head[3] = False
    masks = region_masks(seg, head, SCHEME)
    assert set(masks) == {"head", "NCR", "ED", "ET"}
    assert masks["head"].sum() == 48 - 3 and not masks["head"][0, 0, 0] and not masks["head"][3].any()
    assert [int(masks[k].sum()) for k in ("NCR", "ED", "ET")] == [1, 1, 1]


def test_a_region_below_min_voxels_is_left_out_not_scored_as_far_off(reference):
    x, seg, head = case(100)
    full = tissue_statistics(x, seg, head, SCHEME)
    assert all("ET" in full[m] for m in MODALITIES)
    et = seg == SCHEME.label("ET")
    # Keep MIN_VOXELS - 1 enhancing voxels (the rest become oedema), then exactly MIN_VOXELS.
    for keep, measured in ((MIN_VOXELS - 1, False), (MIN_VOXELS, True), (0, False)):
        s2 = seg.copy()
        idx = np.argwhere(et)[keep:]
        s2[tuple(idx.T)] = SCHEME.label("ED")
        stats = tissue_statistics(x, s2, head, SCHEME)
        assert all(("ET" in stats[m]) is measured for m in MODALITIES), keep
        if measured:
            assert all(stats[m]["ET"]["n"] == MIN_VOXELS for m in MODALITIES)
    # with no ET at all, the score compares what is left: the same as leaving ET out of the case's statistics
    no_et = seg.copy()
    no_et[et] = SCHEME.label("ED")
    score = quality_score(x, no_et, head, SCHEME, reference)
    stats = tissue_statistics(x, no_et, head, SCHEME)
    assert 0.0 < score <= 1.0
    assert score == 1.0 / (1.0 + quality_distance(stats, reference))


def test_a_region_missing_from_the_reference_is_not_compared(reference):
    x, seg, head = case(100)
    stats = tissue_statistics(x, seg, head, SCHEME)
    without_et = {m: {r: v for r, v in regs.items() if r != "ET"} for m, regs in reference.items()}
    only_shared = {m: {r: v for r, v in regs.items() if r != "ET"} for m, regs in stats.items()}
    assert quality_distance(stats, without_et) == quality_distance(only_shared, without_et)
    assert quality_distance(stats, without_et) != quality_distance(stats, reference)


def test_nothing_comparable_scores_nan(reference):
    x, seg, head = case(100)
    empty_head = np.zeros_like(head)
    assert math.isnan(quality_score(x, np.zeros_like(seg), empty_head, SCHEME, reference))
    assert math.isnan(quality_score(x, seg, head, SCHEME, {}))
    assert math.isnan(quality_distance({m: {} for m in MODALITIES}, reference))
    # a lone tumour with no healthy head is still compared
    assert not math.isnan(quality_score(x, seg, empty_head, SCHEME, reference))
