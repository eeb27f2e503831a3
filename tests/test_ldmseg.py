"""The ``ldmseg`` segmenter (LDM-seg: label LDM + ControlNet on the MRIs), on tiny volumes and a tiny ablation."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from components.ablation import AblationConfig, generator_record, plan_mixes, run_configuration
from components.backends import get_segmenter
from components.segmentation import ldmseg as ls
from data_catalog import MODALITIES
from tests import builders as b

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = AblationConfig(ratios=(0.0, 1.0), schedule="tiny", montage_cases=1, bootstrap_resamples=100)


@pytest.fixture(scope="module")
def mix(tmp_path_factory):
    """A real dataset (4 train, 2 test cases), a synthetic one derived from it, the tiny plans and prepared data."""
    ws = tmp_path_factory.mktemp("ldmseg") / "ws"
    real, syn = b.write_real_and_synthetic(ws, n_real=6, per_case=1)
    plans = plan_mixes(real, syn, TINY, ("ldmseg",))
    data = get_segmenter("ldmseg").prepare(ws, "abl", plans, real, syn, TINY)
    return ws, real, syn, {p.name: p for p in plans}, data


@pytest.fixture(scope="module")
def fitted(mix):
    ws, _, _, plans, data = mix
    return get_segmenter("ldmseg").fit(plans["r1-s0"], TINY, data, None)


def test_the_ensemble_averages_thresholds_and_gives_a_variance():
    rng = np.random.default_rng(0)
    p = rng.random((5, 3, 6, 7, 4))
    mean, var, regions = ls.ensemble(p, 0.5)
    assert mean.shape == regions.shape == (3, 6, 7, 4) and var.shape == (6, 7, 4)
    np.testing.assert_allclose(mean, p.mean(0), rtol=1e-6)
    np.testing.assert_allclose(var, p.var(0).mean(0), rtol=1e-5)
    assert (var >= 0).all() and var.max() > 0 and (regions == (p.mean(0) > 0.5)).all()
    one = ls.ensemble(p[:1], 0.5)[1]
    assert one.shape == (6, 7, 4) and not one.any()  # one sample: no spread


def test_fit_trains_on_exactly_the_planned_cases(mix, fitted):
    ws, real, _, plans, data = mix
    plan = plans["r1-s0"]
    assert fitted.train_keys == plan.train_ids and plan.n_synthetic > 0
    stamp = json.loads((fitted.model_dir / ls.STAMP).read_text())
    assert stamp["train"] == list(plan.train_ids) and stamp["seed"] == plan.seed
    card = json.loads((fitted.model_dir / "config.json").read_text())
    assert card["train_cases"] == list(plan.train_ids)
    assert {s for s, d in card["stages"].items() if d["done"]} == {"autoencoder", "diffusion", "controlnet"}
    assert not set(plan.test_ids) & set(data["cases"])  # prepare never lists a test case to train on
    assert set(data["truth"]) == set(plan.test_ids)     # their labels serve the calibration figure only
    params = get_segmenter("ldmseg").params(plan, TINY, data)
    assert params["device"] == "cpu" and params["ldmseg_profile"] == "tiny" and params["ldmseg_samples"] == 3


@pytest.mark.parametrize("samples", [1, 3])
def test_predict_writes_label_and_variance_maps_on_the_case_grid(mix, fitted, tmp_path, samples):
    b.write_catalog_dataset(tmp_path, "other", n_cases=2)  # another shape and an anisotropic, offset affine
    from data_catalog import open_dataset

    other = open_dataset(tmp_path, "other")
    cases = {r.case_id: [other.root / r[m] for m in MODALITIES] for _, r in other.ok_cases().iterrows()}
    preds = ls.predict(fitted.model_dir, cases, tmp_path / "pred", "brats2023", samples=samples, progress=False)
    assert sorted(preds) == sorted(cases)
    for cid, path in preds.items():
        img, ref = nib.load(str(path)), nib.load(str(cases[cid][0]))
        assert img.shape == ref.shape == b.TISSUE_SHAPE
        np.testing.assert_allclose(img.affine, ref.affine)
        labels = np.asanyarray(img.dataobj)
        assert labels.dtype == np.uint8 and set(np.unique(labels).tolist()) <= set(other.label_scheme.values)
        var_img = nib.load(str(tmp_path / "pred" / f"{cid}_variance.nii.gz"))
        var = np.asanyarray(var_img.dataobj)
        assert var.shape == b.TISSUE_SHAPE and var.dtype == np.float32 and (var >= 0).all()
        np.testing.assert_allclose(var_img.affine, ref.affine)
        assert (var.max() == 0) == (samples == 1)
        assert (tmp_path / "pred" / f"{cid}_variance.png").read_bytes()[:4] == b"\x89PNG"
    record = json.loads((tmp_path / "pred" / ls.PREDICT_RECORD).read_text())
    assert record["samples"] == samples and set(record["cases"]) == set(cases)


def test_a_tiny_ablation_with_ldmseg_scores_and_keeps_its_variance_maps(mix, fitted):
    ws, real, syn, plans, data = mix
    plan = plans["r1-s0"]
    res = run_configuration(ws, "abl", plan, real, syn, TINY, "", data, generator_record(ws, syn))
    assert res.status == "ok", res.error
    for region in ("WT", "TC", "ET"):
        assert 0.0 <= res.metrics[f"dice_{region}"] <= 1.0
    out = ws.resolve() / "ablations" / "abl" / plan.name
    mix_json = json.loads((out / "mix.json").read_text())
    assert mix_json["segmenter"] == "ldmseg" and mix_json["ldmseg_train_keys"] == list(plan.train_ids)
    assert mix_json["ldmseg_trained_stages"] == []  # the fixture's model, same settings and cases: kept
    seg = get_segmenter("ldmseg")
    files = {p.name for p in seg.artifacts(out / "predictions")}
    tests = plan.test_ids
    assert {f"{c}_variance.nii.gz" for c in tests} | {"calibration.png", "calibration.csv"} <= files
    cal = json.loads((out / "predictions" / "calibration.json").read_text())
    assert cal["cases"] == sorted(tests) and cal["voxels"] > 0 and 0.0 <= cal["error_rate"] <= 1.0
    metrics = seg.metrics(out / "predictions")
    assert metrics["ldmseg_samples"] == 3 and metrics["ldmseg_mean_variance"] >= 0.0 and "ldmseg_error_auc" in metrics
    # the configuration's MLflow run holds them: metrics beside Dice, files under segmenter/
    import mlflow

    from components.tracking import tracking_uri

    client = mlflow.MlflowClient(tracking_uri=tracking_uri(ws))
    run = client.get_run(res.run_id)
    assert run.data.metrics["ldmseg_mean_variance"] == pytest.approx(metrics["ldmseg_mean_variance"])
    assert res.metrics["ldmseg_samples"] == 3
    logged = {a.path for a in client.list_artifacts(res.run_id, "segmenter")}
    assert {f"segmenter/{c}_variance.nii.gz" for c in tests} | {"segmenter/calibration.png"} <= logged


@pytest.mark.slow
def test_the_cpu_demo_segmenter_learns_the_whole_tumour_of_the_phantom(tmp_path):
    """The cpu-demo schedule on the 4 mm phantom (7 train, 3 test cases) finds the whole tumour: with an epsilon
    objective and 10 DDIM steps it predicted no tumour at all (Dice WT 0.00)."""
    from components.metrics.segmentation import SegmentationEvalConfig, score_pair
    from components.phantom import PhantomConfig, make_phantom
    from data_catalog import open_dataset

    ws = tmp_path / "ws"
    make_phantom(ws, "ph", PhantomConfig(cases=10, spacing=4.0, seed=0, test_fraction=0.3), progress=False)
    ds = open_dataset(ws, "ph")
    ok = ds.ok_cases()
    train = {r.case_id: {**{m: ds.root / r[m] for m in MODALITIES}, "seg": ds.root / r["seg"]}
             for _, r in ok[ok.split == "train"].iterrows()}
    test = {r.case_id: [ds.root / r[m] for m in MODALITIES] for _, r in ok[ok.split == "test"].iterrows()}
    truth = {r.case_id: ds.root / r["seg"] for _, r in ok[ok.split == "test"].iterrows()}
    fitted = ls.train(tmp_path / "model", train, "brats2023", ls.schedule_config("cpu-demo", seed=0), progress=False)
    preds = ls.predict(fitted.model_dir, test, tmp_path / "pred", "brats2023", truth=truth, progress=False)
    cfg = SegmentationEvalConfig(label_scheme="brats2023")
    dice = [r["dice"] for cid, path in preds.items() for r in score_pair(path, truth[cid], cid, cfg)
            if r["region"] == "WT"]
    assert len(dice) == 3 and np.mean(dice) > 0.5, dice
