"""The label-map latent diffusion model and the ``ldm`` mask source, on tiny real files (profile ``tiny``)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from components.backends import get_mask_source
from components.labelldm.config import PROFILES_DIR, load_profile
from components.labelldm.masks import LdmMasksConfig, make_ldm_masks, mask_realism_metrics
from components.masks import SOURCE_FEATURES, CheckConfig, MaskAugmentConfig
from data_catalog import STATUS_OK, open_dataset
from tests import builders as b

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# the tiny profile, trained a little longer (its masks are still mostly implausible: the checks are what is tested)
CHECKS = CheckConfig(volume_mm3_wt=(20.0, 1e6), nesting_tolerance=0.5)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A workspace with an 8-case dataset (6 train, 2 test) and a tiny profile with a few more steps."""
    ws = tmp_path_factory.mktemp("labelldm") / "ws"
    b.write_catalog_dataset(ws, "src", n_cases=8)
    prof = yaml.safe_load((PROFILES_DIR / "tiny.yaml").read_text())
    prof["autoencoder_train"]["steps"] = 40
    prof["diffusion_train"]["steps"] = 40
    path = ws.parent / "tiny-longer.yaml"
    path.write_text(yaml.safe_dump(prof))
    return ws, str(path)


@pytest.fixture(scope="module")
def masks(source):
    ws, profile = source
    cfg = LdmMasksConfig(profile=profile, per_case=3, seed=1, checks=CHECKS, max_draws=3)
    return make_ldm_masks(ws, "src", "lm", cfg, progress=False), cfg


def test_profiles_validate_and_fit_their_grids():
    shapes = {p: load_profile(p).latent_shape for p in ("tiny", "cpu-demo", "brats-gpu")}
    assert shapes == {"tiny": (8, 8, 8), "cpu-demo": (10, 12, 10), "brats-gpu": (28, 36, 28)}
    demo = load_profile("cpu-demo")
    assert demo.data.shape == (40, 48, 40) and demo.data.spacing == (4.0, 4.0, 4.0)
    seg = demo.for_segmenter(seed=7)
    assert seg.seed == 7 and seg.autoencoder_train.steps == demo.segmenter.autoencoder_steps
    assert seg.stage_digest("controlnet") != demo.stage_digest("controlnet")
    with pytest.raises(ValueError, match="unknown labelldm profile .nope."):
        LdmMasksConfig(profile="nope")


def test_a_mask_augment_config_maps_onto_the_ldm_source():
    cfg = LdmMasksConfig.coerce(MaskAugmentConfig(per_case=3, seed=5, splits=("train", "test"),
                                                  checks=CheckConfig(min_fragment_mm3=7.0)))
    assert (cfg.per_case, cfg.seed, cfg.checks.min_fragment_mm3, cfg.profile) == (3, 5, 7.0, "cpu-demo")
    assert cfg.max_draws == MaskAugmentConfig().max_draws  # augment's candidates per mask


def test_the_pass_rate_is_the_fraction_of_plausible_draws(source, masks):
    from components.labelldm.masks import draw_seed

    ws, _ = source
    summary, cfg = masks
    ds = open_dataset(ws, "lm")
    m = ds.manifest
    ok = m["status"] == STATUS_OK
    assert len(m) == summary.n_requested == 6 * cfg.per_case
    # a failing request is drawn again, max_draws in all; every draw counts in the pass rate
    assert (m.loc[~ok, "draws"] == cfg.max_draws).all() and m.loc[ok, "draws"].between(1, cfg.max_draws).all()
    assert summary.n_draws == m["draws"].sum() > len(m)  # the tiny model's masks mostly fail: some were redrawn
    rate = ok.sum() / m["draws"].sum()
    assert summary.pass_rate == pytest.approx(rate) and summary.request_ok_rate == pytest.approx(ok.mean())
    assert ds.info["generation"]["pass_rate"] == pytest.approx(rate)
    metrics = mask_realism_metrics(ws, "lm")
    assert metrics["mask_pass_rate"] == pytest.approx(rate) and metrics["mask_request_ok_rate"] == pytest.approx(ok.mean())
    assert f"pass rate {rate:.1%} of {summary.n_draws} draws" in summary.report()
    # each mask records the seed of the draw that was kept (its own, recorded seed per draw)
    for _, r in m.iterrows():
        k = int(str(r["case_id"]).rsplit("-ldm", 1)[1])
        assert r["seed"] == draw_seed(cfg.seed, r["source_case"], k, int(r["draws"]) - 1)
    # every quarantined mask says which checks its last draw failed; the tally counts every failed draw
    failed = m[~ok]
    assert all(f"none of {cfg.max_draws} draws passed the plausibility checks" in r for r in failed["reason"])
    assert sum(summary.rejections.values()) >= summary.n_draws - ok.sum()


def test_masks_have_the_augment_contract_on_train_grids(source, masks):
    ws, _ = source
    ds = open_dataset(ws, "lm")
    src = open_dataset(ws, "src")
    train_ids = set(src.ok_cases("train")["case_id"])
    m = ds.manifest
    assert set(m["split"]) == {"train"} and set(m["source_case"]) <= train_ids and (m["host_case"] == m["source_case"]).all()
    assert ds.info["kind"] == "masks" and ds.info["label_model"]["train_cases"] == sorted(train_ids)
    for _, r in m[m["status"] == STATUS_OK].iterrows():
        seg, head = nib.load(str(ds.root / r["seg"])), nib.load(str(ds.root / r["head"]))
        host = nib.load(str(src.path(r["source_case"], "seg")))
        assert seg.shape == head.shape == host.shape
        np.testing.assert_allclose(seg.affine, host.affine)
        s, h = np.asanyarray(seg.dataobj), np.asanyarray(head.dataobj) > 0
        assert set(np.unique(s).tolist()) <= set(src.label_scheme.values) and not ((s > 0) & ~h).any()
        assert r["volume_mm3_wt"] == pytest.approx((s > 0).sum() * np.prod(b.TISSUE_SPACING))
    real = pd.read_parquet(ds.root / SOURCE_FEATURES)
    assert set(real["case_id"]) == train_ids  # no test case enters the dataset's files
    assert not any(p.name in set(src.ok_cases("test")["case_id"]) for p in (ds.root / "source").iterdir())
    figs = get_mask_source("ldm").figures(ws, "lm", 2)
    assert Path(figs["features"]).read_bytes()[:4] == b"\x89PNG"


def test_realism_sits_next_to_its_floor(source, masks):
    ws, _ = source
    metrics = mask_realism_metrics(ws, "lm")
    for key in ("mask_wdist_volume_mm3_wt", "mask_wdist_volume_mm3_wt_floor", "mask_fid", "mask_fid_floor"):
        assert key in metrics
    assert metrics["mask_realism_n_test"] == 2.0
    n = min(masks[0].n_ok, 6)  # both sides at the same sample size: the plausible masks, at most the train masks
    assert metrics["mask_realism_n"] == n
    assert np.isfinite(metrics["mask_wdist_volume_mm3_wt_floor"]) == (n > 0)
    from components.labelldm.realism import mask_realism, render_label_slices

    # generated masks identical to the train masks score exactly the floor
    test = pd.DataFrame({"volume_mm3_wt": [3.0, 5.0]})
    train = pd.DataFrame({"volume_mm3_wt": [1.0, 2.0, 4.0]})
    out = mask_realism(train, train, test, ["WT"], seed=0)["metrics"]
    assert out["mask_wdist_volume_mm3_wt"] == out["mask_wdist_volume_mm3_wt_floor"] > 0
    img = render_label_slices(b.tissue_case(0)[1] > 0, (1.0, 1.0, 1.0), 5)
    assert img.shape == (3, 3, 299, 299) and img.min() >= -1.0 and img.max() <= 1.0


def test_the_same_seed_gives_the_same_masks(source, masks):
    ws, profile = source
    summary, cfg = masks
    again = make_ldm_masks(ws, "src", "lm-again", cfg, progress=False)
    assert again.model_reused and again.model == summary.model  # same settings and cases: the model is kept
    a, c = open_dataset(ws, "lm").manifest, open_dataset(ws, "lm-again").manifest
    cols = ["case_id", "status", "seed", "sha256_seg", "sha256_head", "volume_mm3_wt"]
    pd.testing.assert_frame_equal(a[cols], c[cols])
    other = make_ldm_masks(ws, "src", "lm-other", cfg.model_copy(update={"seed": 2}), progress=False)
    o = open_dataset(ws, "lm-other").manifest
    assert other.model == summary.model and not (o["seed"].to_numpy() == a["seed"].to_numpy()).any()
    from components.labelldm.sampling import sample_label_maps
    from components.labelldm.store import load_label_model

    model = load_label_model(Path(ws) / "models" / summary.model)
    x, y = sample_label_maps(model, [3, 4]), sample_label_maps(model, [4, 3], batch=1)
    np.testing.assert_array_equal(x[0], y[1])  # a seed fixes its sample, whatever the batch


def test_a_killed_training_resumes_to_the_uninterrupted_weights(source, tmp_path):
    from components.labelldm.data import prepare_dataset_cases
    from components.labelldm.training import TrainingStopped, train_label_model

    ws, _ = source
    src = open_dataset(ws, "src")
    cfg = load_profile("tiny")  # 4 steps per stage, a checkpoint every 2
    cases = prepare_dataset_cases(src, src.ok_cases("train"), cfg.data, src.label_scheme, tmp_path / "cache")
    with pytest.raises(TrainingStopped):
        train_label_model(tmp_path / "m", cases, cfg, src.label_scheme, stop_after=3)
    assert [p.name for p in (tmp_path / "m" / "checkpoints").iterdir()] == ["autoencoder_0000002.pt"]
    resumed = train_label_model(tmp_path / "m", cases, cfg, src.label_scheme)
    train_label_model(tmp_path / "w", cases, cfg, src.label_scheme)
    assert resumed.trained == ["autoencoder", "diffusion"]
    for stage, key in (("autoencoder", "autoencoder"), ("diffusion", "unet")):
        a = torch.load(tmp_path / "m" / f"{stage}.pt", weights_only=True)[key]
        w = torch.load(tmp_path / "w" / f"{stage}.pt", weights_only=True)[key]
        assert all(torch.equal(a[k], w[k]) for k in a), stage
    kept = train_label_model(tmp_path / "m", cases, cfg, src.label_scheme)
    assert kept.trained == [] and json.loads((tmp_path / "m" / "config.json").read_text())["stages"]["diffusion"]["done"]


def test_a_class_map_goes_back_onto_a_resampled_case_grid():
    from components.labelldm.data import to_source_grid
    from components.synthesis.config import DataConfig
    from components.synthesis.data import fit_case

    images, seg, head = b.tissue_case(3)  # 20 x 18 x 14 at 1.5 x 1.5 x 2 mm
    aff = b.affine(b.TISSUE_SPACING)
    fc = fit_case(None, seg, head, aff, DataConfig(spacing=(3.0, 3.0, 3.0), shape=(12, 12, 12)))
    assert fc.resampled and fc.lost_tumour_voxels == 0
    back = to_source_grid(fc.seg[None].astype(np.float32), fc, aff, seg.shape, mode="nearest")[0]
    assert back.shape == seg.shape
    wt, wt_back = seg > 0, np.rint(back) > 0
    # nearest neighbour through a 2x coarser grid and back: the tumour keeps its place and roughly its size
    assert 2 * (wt & wt_back).sum() / (wt.sum() + wt_back.sum()) > 0.6
    np.testing.assert_allclose(np.argwhere(wt_back).mean(0), np.argwhere(wt).mean(0), atol=1.5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_the_training_target_is_what_the_sampler_reads_back_as_the_clean_latent(prediction_type):
    from components.labelldm.config import LabelDiffusionConfig
    from components.labelldm.networks import build_scheduler, diffusion_target

    cfg = LabelDiffusionConfig(prediction_type=prediction_type)
    train, ddim = build_scheduler(cfg, "ddpm"), build_scheduler(cfg, "ddim")
    ddim.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    z, noise = torch.randn((2, 3, 4, 4, 4), generator=g), torch.randn((2, 3, 4, 4, 4), generator=g)
    t = int(ddim.timesteps[0])  # the first, noisiest step of a 10-step run
    tt = torch.full((2,), t, dtype=torch.long)
    noisy = train.add_noise(z, noise, tt)
    # a network that outputs exactly its training target makes the sampler's clean estimate the true latent
    _, z0 = ddim.step(diffusion_target(train, z, noise, tt), t, noisy, eta=0.0)
    torch.testing.assert_close(z0, z, atol=1e-3, rtol=1e-3)
