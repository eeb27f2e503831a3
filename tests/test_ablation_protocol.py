"""The ratio ablation's protocol: every configuration trains on exactly its cases, data-scarce mixes
stay scarce, the generator is leak-checked, grids that make no sense fail before training, seeds
say what they are. Real nnU-Net, real manifests, tiny files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from components.ablation import (
    AblationConfig,
    AblationError,
    LeakError,
    check_no_leak,
    generator_record,
    make_real_subset,
    plan_mixes,
    prepare_nnunet,
    seed_params,
)
from components.export import ExportError, export_dataset_nnunet
from components.segmentation.nnunet import (
    FINGERPRINT_INTENSITY_SAMPLES,
    SCHEDULES,
    fingerprint_intensity_samples,
    train,
)
from data_catalog import open_dataset, register_dataset
from tests import builders as b


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    ws = tmp_path_factory.mktemp("protocol") / "ws"
    real, syn = b.write_real_and_synthetic(ws, n_real=8, per_case=2)
    return ws, real, syn


def _variant(ws, real, name, **kw):
    """Another synthetic set over the same real dataset (its own generator record or manifest)."""
    return b.write_real_and_synthetic(ws, n_real=8, per_case=2, syn_name=name, **kw)[1]


# --------------------------------------------------------------------------- 1. exactly its mix
def test_every_configuration_trains_on_exactly_its_cases_planned_once(data):
    """nnU-Net's `full` schedule used to train fold 0 of its own 80/20 split of each mix; now each
    configuration is a fold listing exactly its cases, and the real cases are planned once."""
    ws, real, syn = data
    plans = plan_mixes(real, syn, AblationConfig(ratios=(0, 1), seeds=(0,)))
    # nnU-Net's own full schedule, shortened, in-process and in its cheaper 2d configuration
    schedule = SCHEDULES["full"].model_copy(update={
        "configuration": "2d", "epochs": 1, "iterations_per_epoch": 1, "val_iterations_per_epoch": 1,
        "device": "cpu", "num_processes": 1, "augmentation_processes": 0})
    nn = prepare_nnunet(ws, "exact", plans, real, syn, schedule)
    pre = next((ws / "nnunet" / "preprocessed").glob(f"Dataset{nn.dataset_id:03d}_*"))
    splits = json.loads((pre / "splits_final.json").read_text())
    for p in plans:
        assert sorted(splits[nn.folds[p.name]]["train"]) == list(p.train_ids)
    # Every BraTS channel is z-scored per case, so the fingerprint's intensity statistics (CT-only) were
    # drawn from the smaller sample budget rather than nnU-Net's 1e8 per channel.
    nn_plans = json.loads((pre / "nnUNetPlans.json").read_text())
    assert set(nn_plans["configurations"]["2d"]["normalization_schemes"]) == {"ZScoreNormalization"}
    dataset_json = json.loads((pre / "dataset.json").read_text())
    assert fingerprint_intensity_samples(dataset_json) == FINGERPRINT_INTENSITY_SAMPLES
    mixed = plans[1]
    assert mixed.n_synthetic == mixed.n_real > 0
    trained = train(nn.root, nn.dataset_id, schedule, fold=nn.folds[mixed.name], seed=0)
    assert trained.train_keys == mixed.train_ids  # read back from nnU-Net's own split
    # A second call (e.g. more seeds) reuses the plans and the preprocessed real cases.
    data_dir = pre / "nnUNetPlans_2d"
    first = {f.name: f.stat().st_mtime_ns for f in data_dir.glob("BraTS-*.b2nd")}
    more = plan_mixes(real, syn, AblationConfig(ratios=(0, 1), seeds=(0, 1)))
    nn2 = prepare_nnunet(ws, "exact", more, real, syn, schedule)
    assert {f.name: f.stat().st_mtime_ns for f in data_dir.glob("BraTS-*.b2nd")} == first
    # the same configurations again (an unchanged re-run): nothing to preprocess, no nnU-Net process started
    step_log = ws / "nnunet" / "logs" / f"plan_{nn.dataset_id}.log"  # every isolated nnU-Net step appends to it
    logged = step_log.read_text()
    assert prepare_nnunet(ws, "exact", more, real, syn, schedule).folds == nn2.folds
    assert step_log.read_text() == logged
    assert nn2.folds[mixed.name] == nn.folds[mixed.name]  # an unchanged configuration keeps its fold
    assert len(set(nn2.folds.values())) == len(more)


# --------------------------------------------------------------------------- 2. data-scarce stays scarce
def test_data_scarce_mixes_draw_synthetic_cases_from_their_real_subset_only(data):
    ws, real, syn = data
    src = dict(zip(syn.manifest["case_id"], syn.manifest["source_case"], strict=True))
    cfg = AblationConfig(ratios=(0, 1), seeds=(0, 1, 2), real_fraction=0.5, synthetic_only=True)
    plans = plan_mixes(real, syn, cfg)
    pools = {p.real_pool for p in plans}
    assert len(pools) == 1  # one subset for every seed, so one generator can be trained on it
    pool = set(next(iter(pools)))
    assert len(pool) < len(real.ok_cases("train"))
    for p in plans:
        assert {src[c] for c in p.synthetic_ids} <= pool, p.name
        assert set(p.real_ids) == (set() if p.synthetic_only else pool)


def test_a_generator_that_learnt_outside_the_real_subset_is_refused_by_name(data):
    ws, real, syn = data
    cfg = AblationConfig(ratios=(0, 1), real_fraction=0.5)
    plan = plan_mixes(real, syn, cfg)[1]
    outside = sorted(set(real.ok_cases("train")["case_id"]) - set(plan.real_pool))
    with pytest.raises(LeakError, match="outside the configuration's") as err:
        check_no_leak(plan, real, syn, generator_record(ws, syn))
    assert outside[0] in str(err.value)
    # A generator trained on exactly the subset passes.
    sub_syn = _variant(ws, real, "syn-subset-gen", generator_cases=list(plan.real_pool))
    check_no_leak(plan_mixes(real, sub_syn, cfg)[1], real, sub_syn, generator_record(ws, sub_syn))


def test_the_data_scarce_arm_gets_its_own_real_dataset(data):
    ws, real, _ = data
    sub = make_real_subset(ws, real, 0.5, 0, "real-f0p5")
    pool = plan_mixes(real, None, AblationConfig(ratios=(0,), real_fraction=0.5))[0].real_pool
    assert sorted(sub.ok_cases("train")["case_id"]) == list(pool)
    assert sorted(sub.ok_cases("test")["case_id"]) == sorted(real.ok_cases("test")["case_id"])
    assert sub.info["subset_of"] == real.name and sub.label_scheme.name == real.label_scheme.name
    cid = pool[0]
    assert sub.path(cid, "t2f").read_bytes() == real.path(cid, "t2f").read_bytes()


# --------------------------------------------------------------------------- 3. the generator is leak-checked
def test_a_synthetic_set_from_a_generator_trained_on_test_cases_is_refused(data):
    ws, real, _ = data
    test_case = real.ok_cases("test")["case_id"].iloc[0]
    leaky = _variant(ws, real, "syn-leaky-gen",
                     generator_cases=[*real.ok_cases("train")["case_id"], test_case])
    plan = plan_mixes(real, leaky, AblationConfig(ratios=(0, 1)))[1]
    with pytest.raises(LeakError, match=test_case):
        check_no_leak(plan, real, leaky, generator_record(ws, leaky))


def test_a_synthetic_set_that_does_not_name_its_generator_is_refused(data):
    ws, real, syn = data
    anon = register_dataset(ws, "syn-anon", kind="synthetic", label_scheme="brats2023", manifest=syn.manifest)
    assert generator_record(ws, anon) is None
    plan = plan_mixes(real, anon, AblationConfig(ratios=(0, 1)))[1]
    with pytest.raises(LeakError, match="does not say which real cases"):
        check_no_leak(plan, real, anon, None)


def test_export_never_writes_test_derived_synthetic_cases_as_training_data(data, tmp_path):
    ws, real, syn = data
    test_ids = set(real.ok_cases("test")["case_id"])
    folder = export_dataset_nnunet(syn, tmp_path / "raw")
    train_ids = {p.name[: -len("_0000.nii.gz")] for p in (folder / "imagesTr").glob("*_0000.nii.gz")}
    src = dict(zip(syn.manifest["case_id"], syn.manifest["source_case"], strict=True))
    assert train_ids and not {src[c] for c in train_ids} & test_ids
    only_test = register_dataset(ws, "syn-only-test", kind="synthetic", label_scheme="brats2023",
                                 manifest=syn.manifest[syn.manifest["source_case"].isin(test_ids)].copy())
    only_test = open_dataset(ws, "syn-only-test")
    with pytest.raises(ExportError, match="never exported as nnU-Net training data"):
        export_dataset_nnunet(only_test, tmp_path / "raw2")


def test_a_ct_channel_keeps_nnunets_full_intensity_sample():
    """The smaller fingerprint sample applies only where no channel is normalised with its statistics."""
    mri = {"channel_names": {"0": "t1n", "1": "t1c", "2": "t2w", "3": "t2f"}}
    assert fingerprint_intensity_samples(mri) == FINGERPRINT_INTENSITY_SAMPLES
    assert fingerprint_intensity_samples({"channel_names": {"0": "t1n", "1": "CT"}}) is None
    assert fingerprint_intensity_samples({"modality": {"0": "ct"}}) is None


# --------------------------------------------------------------------------- 4. grids that make no sense
@pytest.mark.parametrize("ratios, match", [((0, -0.5), ">= 0"), ((1, 2), "must include 0"), ((0, 1, 1), "repeat"),
                                           ((0, float("nan")), ">= 0")])
def test_bad_ratios_fail_at_the_config(ratios, match):
    with pytest.raises(ValidationError, match=match):
        AblationConfig(ratios=ratios)


def test_a_synthetic_set_without_a_source_link_fails_before_training(data):
    ws, real, syn = data
    m = syn.manifest.copy()
    m["source_case"] = "elsewhere-" + m["source_case"].astype(str)
    unlinked = register_dataset(ws, "syn-unlinked", kind="synthetic", label_scheme="brats2023", manifest=m,
                                extra={"generator_dataset": "real", "generator_train_cases": []})
    with pytest.raises(AblationError, match="source_case is a case of the real dataset 'real'"):
        plan_mixes(real, unlinked, AblationConfig(ratios=(0, 1)))


def test_a_ratio_the_synthetic_set_cannot_fill_fails_before_training(data):
    _, real, syn = data
    n_real = len(real.ok_cases("train"))
    with pytest.raises(AblationError, match=f"needs {5 * n_real} synthetic cases"):
        plan_mixes(real, syn, AblationConfig(ratios=(0, 5)))
    with pytest.raises(AblationError, match="rounds to 0"):
        plan_mixes(real, syn, AblationConfig(ratios=(0, 0.01)))


def test_the_command_line_refuses_a_negative_ratio_in_one_sentence(data, capsys):
    from flows.__main__ import main

    ws, _, _ = data
    rc = main(["ablation", "--workspace", str(ws), "--real", "real", "--synthetic", "syn", "--ratios", "0", "-0.5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--ratios" in err[0] and ">= 0" in err[0]


# --------------------------------------------------------------------------- 9. seeds say what they are
def test_seeds_are_replays_only_where_nnunet_is_seeded():
    assert seed_params(SCHEDULES["cpu-demo"])["seed_reproducible"] is True
    assert seed_params(SCHEDULES["tiny"])["seed_reproducible"] is True
    full = seed_params(SCHEDULES["full"])
    assert full["seed_reproducible"] is False and full["seed_note"].startswith("repeat")


# --------------------------------------------------------------------------- pipeline arms
def test_a_pipeline_asks_for_the_data_scarce_case_as_an_arm():
    from flows.pipeline import AblationStage

    with pytest.raises(ValidationError, match="real_fractions"):
        AblationStage(config=AblationConfig(real_fraction=0.3))
    stage = AblationStage(real_fractions=(1.0, 0.3))
    assert stage.arm_suffix(1.0) == "" and stage.arm_suffix(0.3) == "-f0p3"
    with pytest.raises(ValidationError, match=r"\(0, 1\]"):
        AblationStage(real_fractions=(1.0, 1.5))


def test_study_and_demo_configs_validate():
    from flows.pipeline import load_config

    demo = load_config("configs/demo.yaml")
    assert demo.ablation.config.ratios[0] == 0 and len(demo.ablation.config.seeds) >= 2
    study = load_config("configs/study-cpu.yaml")
    assert len(study.ablation.config.seeds) >= 3 and set(study.ablation.config.ratios) >= {0, 0.5, 1, 2}
    assert any(f < 0.5 for f in study.ablation.real_fractions)
    assert np.isclose(min(study.ablation.real_fractions), 0.3, atol=0.05)
    compare = load_config("configs/compare.yaml")  # every synthesizer crossed with every segmenter
    assert {g.backend for g in compare.generators} == {"ddpm", "ldm", "sbldm"}
    assert set(compare.ablation.segmenters) == {"nnunet", "segresnet", "ldmseg"}
    assert [a.source for a in compare.masks.also] == ["ldm"]  # label-model masks beside augmentation


def test_the_summary_survives_when_every_crossed_synthetic_configuration_failed(tmp_path):
    from components.ablation import ConfigResult, arm_effects, per_case_table, summary_table

    scores = tmp_path / "per_case.csv"
    pd.DataFrame({"case_id": ["a", "b"], "region": ["WT", "WT"], "dice": [0.5, 0.6], "hd95": [3.0, 4.0]}).to_csv(
        scores, index=False)
    base = {"segmenter": "nnunet", "seed": 0, "synthetic_only": False}
    results = [ConfigResult("r0-s0", "ok", {**base, "synthesizer": "none", "ratio": 0.0}, per_case_csv=str(scores)),
               ConfigResult("ddpm-r1-s0", "failed", {**base, "synthesizer": "ddpm", "ratio": 1.0}, error="x"),
               ConfigResult("ldm-r1-s0", "failed", {**base, "synthesizer": "ldm", "ratio": 1.0}, error="y")]
    per_case = per_case_table(results)
    assert set(per_case["synthesizer"]) == {""}
    effects = arm_effects(per_case, seed=0, n_resamples=200)
    assert list(effects["ratio"]) == [0.0] and effects["dice_WT"].iloc[0] == pytest.approx(0.55)
    table = summary_table(results, effects)
    assert list(table["status"]) == ["ok", "failed", "failed"] and len(table) == 3
