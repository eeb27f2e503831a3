"""The ``segresnet`` segmenter: MONAI SegResNet with the brats_mri_segmentation bundle's recipe, on tiny volumes."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from components.ablation import AblationConfig, MixPlan, plan_mixes
from components.backends import get_segmenter
from components.segmentation import segresnet as sr
from data_catalog import MODALITIES, load_label_scheme
from tests import builders as b

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = AblationConfig(ratios=(0.0, 1.0), schedule="tiny")


@pytest.fixture(scope="module")
def mix(tmp_path_factory):
    """A real dataset (5 train, 1 test case), a synthetic one derived from it, the tiny plans and prepared data."""
    ws = tmp_path_factory.mktemp("segresnet") / "ws"
    real, syn = b.write_real_and_synthetic(ws, n_real=6, per_case=1)
    plans = plan_mixes(real, syn, TINY, ("segresnet",))
    data = get_segmenter("segresnet").prepare(ws, "abl", plans, real, syn, TINY)
    return ws, real, syn, {p.name: p for p in plans}, data


@pytest.fixture(scope="module")
def fitted(mix):
    ws, _, _, plans, data = mix
    return get_segmenter("segresnet").fit(plans["r1-s0"], TINY, data, None)


def _train_cases(real, n: int | None = None) -> dict[str, dict[str, str]]:
    rows = real.ok_cases("train").sort_values("case_id").head(n) if n else real.ok_cases("train")
    return {r.case_id: {k: str(real.root / r[k]) for k in (*MODALITIES, "seg")} for _, r in rows.iterrows()}


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(model_dir / sr.MODEL, map_location="cpu", weights_only=True)["model"]


def _same(a: dict[str, torch.Tensor], b_: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b_.keys() and all(torch.equal(a[k], b_[k]) for k in a)


# --------------------------------------------------------------------------- the ablation's contract
def test_fit_trains_on_exactly_the_planned_cases(mix, fitted):
    ws, real, syn, plans, data = mix
    plan = plans["r1-s0"]
    assert plan.n_real == 5 and plan.n_synthetic == 5
    assert fitted.train_keys == plan.train_ids
    assert fitted.model_dir == Path(ws).resolve() / "ablations" / "abl" / "r1-s0" / "segresnet"
    # tiny is one pass over the training cases: every planned case was sampled once, and nothing else
    assert fitted.record["segresnet_sampled"] == {c: 1 for c in plan.train_ids}
    stamp = json.loads((fitted.model_dir / sr.STAMP).read_text())
    assert stamp["train"] == list(plan.train_ids) and stamp["seed"] == plan.seed
    assert stamp["files"]["syn-BraTS-GLI-00001-000-0"]["t2f"].startswith(str(syn.root))
    assert stamp["files"]["BraTS-GLI-00001-000"]["seg"].startswith(str(real.root))
    assert not set(plan.test_ids) & set(data["cases"])  # prepare never lists a test case
    params = get_segmenter("segresnet").params(plan, TINY, data)
    assert params["device"] == "cpu" and params["segresnet_iterations"] == 10 and params["seed_reproducible"]
    assert params["segresnet_channels"] == "t1c,t1n,t2w,t2f"


def test_predict_writes_label_maps_on_the_input_grid(mix, fitted, tmp_path):
    # other cases than the training ones: an anisotropic, offset affine and another shape
    b.write_catalog_dataset(tmp_path, "other", n_cases=2)
    from data_catalog import open_dataset

    other = open_dataset(tmp_path, "other")
    cases = {r.case_id: [other.root / r[m] for m in MODALITIES] for _, r in other.ok_cases().iterrows()}
    preds = get_segmenter("segresnet").predict(fitted, cases, tmp_path / "pred", TINY, mix[4], None)
    assert sorted(preds) == sorted(cases)
    for cid, path in preds.items():
        assert path == tmp_path / "pred" / f"{cid}.nii.gz"
        img, ref = nib.load(str(path)), nib.load(str(cases[cid][0]))
        assert img.shape == ref.shape == b.TISSUE_SHAPE
        np.testing.assert_allclose(img.affine, ref.affine)
        arr = np.asanyarray(img.dataobj)
        assert arr.dtype == np.uint8 and set(np.unique(arr).tolist()) <= set(other.label_scheme.values)


def test_a_seeded_fit_replays_on_the_cpu(mix, tmp_path):
    real = mix[1]
    cases = _train_cases(real, 4)
    schedule = sr.SCHEDULES["tiny"]
    runs = [sr.train(tmp_path / name, cases, "brats2023", schedule, seed=seed) for name, seed in
            (("a", 3), ("b", 3), ("c", 4))]
    assert _same(_weights(runs[0].model_dir), _weights(runs[1].model_dir))
    assert not _same(_weights(runs[0].model_dir), _weights(runs[2].model_dir))


def test_a_killed_fit_resumes_from_its_checkpoint(mix, tmp_path):
    cases = _train_cases(mix[1], 4)
    schedule = sr.SCHEDULES["tiny"]  # 4 iterations, a checkpoint every 2
    with pytest.raises(sr.TrainingStopped):
        sr.train(tmp_path / "m", cases, "brats2023", schedule, seed=5, stop_after=3)  # killed after iteration 3
    ckpt = torch.load(tmp_path / "m" / sr.CHECKPOINT, map_location="cpu", weights_only=True)
    assert ckpt["iteration"] == 2 and not (tmp_path / "m" / sr.MODEL).exists()
    resumed = sr.train(tmp_path / "m", cases, "brats2023", schedule, seed=5)
    assert (resumed.start_iteration, resumed.done, resumed.finished) == (2, 4, True)
    assert not (tmp_path / "m" / sr.CHECKPOINT).exists()
    assert [h["iteration"] for h in json.loads((tmp_path / "m" / sr.HISTORY).read_text())] == [4]
    # it continued, not restarted: the weights are those of an uninterrupted run
    whole = sr.train(tmp_path / "whole", cases, "brats2023", schedule, seed=5)
    assert _same(_weights(resumed.model_dir), _weights(whole.model_dir))
    # and so is the epoch's mean loss: the losses before the kill came back with the checkpoint
    assert json.loads((tmp_path / "m" / sr.HISTORY).read_text())[0]["loss"] == pytest.approx(
        json.loads((tmp_path / "whole" / sr.HISTORY).read_text())[0]["loss"], abs=1e-6)
    # a finished fit with the same cases, schedule and seed is not trained again
    mtime = (tmp_path / "m" / sr.MODEL).stat().st_mtime_ns
    again = sr.train(tmp_path / "m", cases, "brats2023", schedule, seed=5)
    assert again.start_iteration == 4 and (tmp_path / "m" / sr.MODEL).stat().st_mtime_ns == mtime
    # another seed is another model: the folder starts again
    other = sr.train(tmp_path / "m", cases, "brats2023", schedule, seed=6)
    assert other.start_iteration == 0 and json.loads((tmp_path / "m" / sr.STAMP).read_text())["seed"] == 6


# --------------------------------------------------------------------------- labels, schedules, bad input
@pytest.mark.parametrize("scheme_name", ["brats2023", "brats2024_post"])
def test_labels_and_region_channels_round_trip(scheme_name):
    scheme = load_label_scheme(scheme_name)
    seg = b.seg_array((1, 2, 3))
    if scheme_name == "brats2024_post":
        seg[0:3, 0:3, 0:3] = scheme.label("RC")
    assert set(np.unique(seg).tolist()) == set(scheme.values)
    regions = sr.labels_to_regions(seg, scheme)
    assert regions.shape == (len(scheme.nnunet_regions), *seg.shape) and regions.dtype == np.float32
    for channel, (_, labels, _) in zip(regions, scheme.nnunet_regions, strict=True):
        np.testing.assert_array_equal(channel.astype(bool), np.isin(seg, labels))
    back = sr.regions_to_labels(regions > 0.5, scheme)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, seg)


def test_the_full_schedule_is_the_bundle_recipe():
    full = sr.SCHEDULES["full"]
    assert (full.blocks_down, full.blocks_up, full.init_filters, full.dropout_prob) == ((1, 2, 2, 4), (1, 1, 1), 16, 0.2)
    assert (full.epochs, full.iterations_per_epoch, full.batch_size, full.lr, full.weight_decay) == (300, None, 1, 1e-4,
                                                                                                   1e-5)
    assert (full.crop, full.roi, full.overlap, full.threshold, full.amp) == ((224, 224, 144), (240, 240, 160), 0.5,
                                                                            0.5, True)
    assert "TC 0.8559, WT 0.9026, ET 0.7905" in full.description
    assert full.iterations(200) == (200, 60000)
    from components.segmentation import nnunet

    assert set(sr.SCHEDULES) == set(nnunet.SCHEDULES) == {"tiny", "cpu-demo", "full"}  # one --schedule sets both
    with pytest.raises(ValueError, match=r"crop \[60, 60, 39\]: SegResNet with 4 levels needs multiples of 8; "
                                         r"e.g. \[64, 64, 40\]"):
        sr.SegresnetSchedule(crop=(60, 60, 39))


def test_an_image_smaller_than_the_crop_is_zero_padded_and_replayed(tmp_path):
    from data_catalog import open_dataset

    b.write_catalog_dataset(tmp_path, "small", n_cases=1)  # 20 x 18 x 14 voxels
    ds = open_dataset(tmp_path, "small")
    cases = _train_cases(ds)
    still = sr.SCHEDULES["tiny"].model_copy(update={"crop": (24, 24, 16), "flip_prob": 0.0, "scale_intensity": 0.0,
                                                    "shift_intensity": 0.0})
    item = sr.TrainingSamples(sorted(cases.items()), ds.label_scheme, still, seed=0, first=0, last=1)[0]
    assert item["image"].shape == (4, 24, 24, 16) and item["label"].shape == (3, 24, 24, 16)
    # padded, not resampled: the WT voxels are the case's, and the padding is zero (the normalised background)
    seg = nib.load(cases[sorted(cases)[0]]["seg"]).get_fdata()
    assert int(item["label"][0].sum()) == int((seg > 0).sum())
    assert int((item["image"].abs().sum(0) > 0).sum()) <= int(np.prod(b.TISSUE_SHAPE)) < 24 * 24 * 16
    # with the augmentations on, a sample is a function of (seed, sample number)
    schedule = sr.SCHEDULES["tiny"].model_copy(update={"crop": (16, 16, 16)})
    first = sr.TrainingSamples(sorted(cases.items()), ds.label_scheme, schedule, seed=0, first=0, last=2)
    again = sr.TrainingSamples(sorted(cases.items()), ds.label_scheme, schedule, seed=0, first=1, last=2)
    assert torch.equal(again[0]["image"], first[1]["image"]) and not torch.equal(first[0]["image"], first[1]["image"])


def test_a_case_whose_files_disagree_is_one_sentence(mix, tmp_path):
    cases = _train_cases(mix[1], 2)
    cid = sorted(cases)[0]
    bad = tmp_path / "seg.nii.gz"
    b.save(bad, np.zeros((8, 8, 8), np.uint8), dtype=np.uint8)
    cases[cid] = {**cases[cid], "seg": str(bad)}
    with pytest.raises(sr.SegresnetError) as err:
        sr.train(tmp_path / "m", cases, "brats2023", sr.SCHEDULES["tiny"])
    msg = str(err.value)
    assert msg.startswith(f"case {cid}: expected one 3-D shape") and "'seg': (8, 8, 8)" in msg


def test_prepare_refuses_a_plan_case_the_datasets_do_not_have(mix):
    ws, real, syn, plans, _ = mix
    plan = plans["r1-s0"]
    ghost = MixPlan(**{**plan.to_dict(), "synthetic_ids": (*plan.synthetic_ids, "syn-ghost")})
    with pytest.raises(sr.InputError, match="configuration r1-s0: case syn-ghost is not an ok, labelled train-split "
                                            "case of dataset 'syn'"):
        get_segmenter("segresnet").prepare(ws, "abl", [ghost], real, syn, TINY)


# --------------------------------------------------------------------------- the real ablation on the phantom
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_cpu_demo_learns_the_phantom_through_the_ablation(tmp_path, prefect_harness):
    import pandas as pd

    from components.phantom import PhantomConfig, make_phantom
    from flows.ablation import AblationParams, ablation_flow

    ws = tmp_path / "ws"
    make_phantom(ws, "phantom", PhantomConfig(cases=10, spacing=4.0, seed=0, test_fraction=0.3), progress=False)
    out = ablation_flow(AblationParams(
        workspace=str(ws), name="sr", real="phantom", segmenters=("segresnet",),
        config=AblationConfig(ratios=(0.0,), seeds=(0,), schedule="cpu-demo", bootstrap_resamples=200,
                              montage_cases=1)))
    assert out["n_ok"] == 1 and out["n_failed"] == 0
    per_case = pd.read_csv(ws / "ablations" / "sr" / "r0-s0" / "per_case.csv")
    wt = per_case.loc[per_case["region"] == "WT", "dice"]
    assert len(wt) == 3 and wt.mean() > 0.5, per_case
    mix = json.loads((ws / "ablations" / "sr" / "r0-s0" / "mix.json").read_text())
    assert mix["segmenter"] == "segresnet" and len(mix["segresnet_train_keys"]) == 7
