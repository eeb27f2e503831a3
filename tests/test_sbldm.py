"""The sbldm synthesizer (components/sbldm, components/backends/sbldm.py) on the tiny profile: the slice
position really drives the VAE, guidance 0 is the unconditional model, a seed fixes the sample, the feature
normalisation and latent scale are stored and reloaded, and the backend trains and writes cases with a
generated seg, the links of the synthesizer contract and the controllability columns."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from components.sbldm.config import SbldmConfig, SbldmError, VaeConfig, load_profile
from components.synthesis.config import SynthesizeConfig
from data_catalog import MODALITIES, STATUS_OK, open_dataset
from tests.builders import write_catalog_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tiny_catalog_ws):
    """Model ``m`` (tiny profile) on dataset ``tiny``, tracked in MLflow, and the masks dataset ``tmasks``."""
    from components.backends import get_synthesizer

    write_catalog_dataset(tiny_catalog_ws, "tmasks", n_cases=2, kind="masks")
    backend = get_synthesizer("sbldm")
    summary = backend.train(tiny_catalog_ws, "tiny", "m", backend.resolve_config("tiny"), track=True)
    return tiny_catalog_ws, backend, summary


def test_the_slice_position_changes_the_decoding_and_only_through_film():
    from components.sbldm.vae import build_vae, film_layers

    torch.manual_seed(0)
    vae = build_vae(VaeConfig(channels=(8, 8), latent_channels=2, num_res_blocks=1, norm_num_groups=4,
                              position_dim=16), mask_classes=5).eval()
    z = torch.randn(1, 2, 8, 8)
    x = torch.randn(1, 9, 16, 16)
    first, last = torch.tensor([0.0]), torch.tensor([1.0])
    with torch.no_grad():
        img0, lg0 = vae.decode(z, first)
        img1, lg1 = vae.decode(z, last)
        mu0, mu1 = vae.encode(x, first)[0], vae.encode(x, last)[0]
    assert (img0 - img1).abs().max() > 1e-3 and (lg0 - lg1).abs().max() > 1e-3
    assert (mu0 - mu1).abs().max() > 1e-3
    films = film_layers(vae)
    assert len(films) == 4  # one per res-block, encoder and decoder
    with torch.no_grad():
        for f in films:
            f.weight.zero_()
            f.bias.zero_()
        a, b = vae.decode(z, first), vae.decode(z, last)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert torch.equal(vae.encode(x, first)[0], vae.encode(x, last)[0])


def test_guidance_scale_zero_is_the_unconditional_model():
    from components.sbldm.config import DiffusionConfig, UNetConfig
    from components.sbldm.diffusion import build_unet, ddim_sample, guided_output

    torch.manual_seed(0)
    unet = build_unet(UNetConfig(channels=(8, 16), attention_levels=(False, False), num_head_channels=8,
                                 num_res_blocks=1, norm_num_groups=4), latent_channels=2, n_features=3).eval()
    with torch.no_grad():  # MONAI zero-initialises the last convolutions: give them weights so outputs differ
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, t = torch.randn(2, 2, 4, 4, 8), torch.tensor([10, 500])
    feats = torch.randn(2, 3)
    with torch.no_grad():
        uncond = unet(x, t, None)
        assert torch.equal(guided_output(unet, x, t, feats, 0.0), uncond)
        # the dropped condition of training is the same null embedding
        assert torch.allclose(unet(x, t, feats, drop=torch.tensor([True, True])), uncond, atol=1e-6)
        cond = guided_output(unet, x, t, feats, 1.0)
        assert (cond - uncond).abs().max() > 1e-4  # the features do reach the output
        assert torch.allclose(guided_output(unet, x, t, feats, 3.0), uncond + 3.0 * (cond - uncond), atol=1e-5)
    diffusion = DiffusionConfig(num_train_timesteps=50)
    a = ddim_sample(unet, feats[:1], (4, 4, 8), 2, diffusion, [torch.Generator().manual_seed(1)], 3, 0.0)
    b = ddim_sample(unet, None, (4, 4, 8), 2, diffusion, [torch.Generator().manual_seed(1)], 3, 1.0)
    assert torch.equal(a, b)


def test_the_same_seed_gives_the_same_sample(trained):
    from components.sbldm.sampling import generate
    from components.sbldm.store import load_trained_sbldm
    from components.synthesis.sampling import make_generator

    ws, _, _ = trained
    tm = load_trained_sbldm(ws, "m", "cpu")
    f = torch.zeros(1, len(tm.norm.columns))
    x1, l1 = generate(tm, f, [make_generator(7)])
    x2, l2 = generate(tm, f, [make_generator(7)])
    x3, _ = generate(tm, f, [make_generator(8)])
    assert torch.equal(x1, x2) and torch.equal(l1, l2)
    assert (x1 - x3).abs().max() > 1e-4
    assert x1.shape == (1, 4, 16, 16, 16) and l1.shape == (1, 16, 16, 16)


def test_normalisation_constants_and_latent_scale_are_stored_and_reloaded(trained):
    from components.sbldm.features import FeatureNorm, measure, seg_from_labels
    from components.sbldm.store import load_trained_sbldm
    from components.synthesis.data import spacing_of

    ws, _, _ = trained
    root = ws / "models" / "m"
    card = json.loads((root / "config.json").read_text())
    blob = torch.load(root / "diffusion.pt", weights_only=True)
    assert blob["feature_norm"] == card["feature_norm"]
    tm = load_trained_sbldm(ws, "m", "cpu")
    assert tm.norm == FeatureNorm.from_dict(card["feature_norm"])
    assert tm.norm.columns[0] == "volume_mm3_wt" and len(tm.norm.columns) == 18  # 9 features x WT, TC
    # the constants are those of the training cases, measured on the model grid
    cache = root / "prepared"
    rows = []
    for cid in card["train_cases"]:
        with np.load(cache / f"{cid}.npz") as z:
            seg, _ = seg_from_labels(z["labels"], tm.scheme)
        aff = np.asarray(json.loads((cache / f"{cid}.json").read_text())["affine"])
        rows.append(measure(seg, tm.config.features, tm.scheme, spacing_of(aff)))
    assert tm.norm.mean[0] == pytest.approx(np.mean([r["volume_mm3_wt"] for r in rows]))
    assert tm.norm.std[0] == pytest.approx(np.std([r["volume_mm3_wt"] for r in rows]))
    # the latent scale lives in the VAE's weights and the card
    vae_blob = torch.load(root / "vae.pt", weights_only=True)
    assert float(vae_blob["vae"]["scale_factor"]) == pytest.approx(card["scale_factor"]) == pytest.approx(
        float(tm.vae.scale_factor))
    assert card["scale_factor"] * card["stages"]["vae"]["latent_std"] == pytest.approx(1.0)
    assert abs(card["scale_factor"] - 1.0) > 0.05


def test_train_then_synthesize_images_and_masks_through_the_backend(trained):
    from components.sbldm.features import controllability_metrics

    ws, backend, summary = trained
    assert summary.run_id and summary.model_dir == ws / "models" / "m"
    assert summary.montage == ws / "models" / "m" / "size_sweep.png" and summary.montage.is_file()
    assert len(backend.weights_digest(ws, "m")) == 64
    out = backend.synthesize(ws, "m", "tmasks", "syn", SynthesizeConfig(device="cpu", montage_cases=1))
    ds, masks, real = open_dataset(ws, "syn"), open_dataset(ws, "tmasks"), open_dataset(ws, "tiny")
    assert out.n_ok == 2 and out.montage is not None and out.montage.is_file()
    ok = ds.ok_cases()
    assert sorted(ok["case_id"]) == sorted(f"{c}-syn0" for c in masks.manifest["case_id"])
    assert set(ok["mask_case"]) == set(masks.manifest["case_id"])
    assert set(ok["source_case"]) == set(masks.manifest["source_case"]) and set(ok["source_case"]) <= set(real.manifest["case_id"])
    assert ds.info["generator_dataset"] == "tiny" and ds.info["synthesizer"] == "sbldm"
    assert ds.info["generator_train_cases"] == real.ok_cases("train")["case_id"].tolist()
    for _, r in ok.iterrows():
        seg = nib.load(str(ds.path(r["case_id"], "seg"))).get_fdata()
        ref = nib.load(str(masks.path(r["mask_case"], "seg")))
        assert seg.shape == ref.shape  # written on the requested mask's grid
        assert set(np.unique(seg).astype(int)) <= {0, 1, 2, 3}
        # the generated mask is the case's seg: the manifest's generated volume is measured on it
        assert r["gen_volume_mm3_wt"] == pytest.approx(float((seg > 0).sum()) * 1.5 * 1.5 * 2.0)
        assert all(ds.path(r["case_id"], m).is_file() for m in MODALITIES)
    for c in ("volume_mm3_wt", "centroid_x_mm_tc", "surface_mm2_wt"):
        assert np.allclose(ok[f"ctrl_err_{c}"], (ok[f"gen_{c}"] - ok[f"req_{c}"]).abs())
    metrics = controllability_metrics(ws, "syn")
    assert metrics["ctrl_err_volume_mm3_wt"] == pytest.approx(ok["ctrl_err_volume_mm3_wt"].mean())
    passed = (ok["mask_check"] == "").mean()
    assert metrics["mask_pass_rate"] == pytest.approx(passed)

    # quarantine: a generated mask that fails the checks is kept out, with the reasons
    from components.sbldm.sampling import synthesize_dataset

    q = synthesize_dataset(ws, "m", "tmasks", "syn-q", SynthesizeConfig(device="cpu", montage_cases=0),
                           failed_masks="quarantine")
    qds = open_dataset(ws, "syn-q")
    bad = qds.manifest[qds.manifest["mask_check"] != ""]
    assert len(bad) >= 1  # the 6-step tiny model does not yet draw plausible masks
    assert q.n_quarantined == len(bad) and (bad["status"] != STATUS_OK).all()
    assert all("plausibility checks" in r for r in bad["reason"])
    assert q.mask_pass_rate == pytest.approx(1 - len(bad) / len(qds.manifest))


def test_a_failing_mask_is_drawn_again_up_to_max_draws_and_every_draw_is_scored(trained):
    from components.sbldm.features import controllability_metrics
    from components.sbldm.sampling import synthesize_dataset

    ws, _, _ = trained
    once = synthesize_dataset(ws, "m", "tmasks", "syn-1", SynthesizeConfig(device="cpu", montage_cases=0),
                              failed_masks="quarantine")
    out = synthesize_dataset(ws, "m", "tmasks", "syn-3", SynthesizeConfig(device="cpu", montage_cases=0),
                             failed_masks="quarantine", max_draws=3)
    ds = open_dataset(ws, "syn-3")
    man = ds.manifest
    block = ds.info["controllability"]
    assert man["draws"].between(1, 3).all() and (man["draws"] > 1).any()  # the 6-step model needs redraws
    assert ((man["draws"] == 3) | (man["mask_check"] == "")).all()  # a request stops at its first passing draw
    assert block["n_checked"] == int(man["draws"].sum()) and block["max_draws"] == 3
    assert block["request_ok_rate"] == pytest.approx((man["mask_check"] == "").mean())
    assert out.n_ok == (man["status"] == STATUS_OK).sum() >= once.n_ok  # first draws are the same seeds
    seeds = [json.loads(p)["draw"] for p in man["params"]]
    assert seeds == [d - 1 for d in man["draws"]]
    first = open_dataset(ws, "syn-1").manifest
    same = man["draws"] == 1
    assert (man.loc[same, "seed"].to_numpy() == first.loc[same.to_numpy(), "seed"].to_numpy()).all()
    m = controllability_metrics(ws, "syn-3")
    assert m["mask_pass_rate"] == pytest.approx(block["n_passed"] / block["n_checked"])
    assert m["mask_request_ok_rate"] == pytest.approx(block["request_ok_rate"])


def test_requests_from_a_features_csv(trained, tmp_path):
    from components.sbldm.sampling import synthesize_dataset

    ws, _, _ = trained
    syn = open_dataset(ws, "syn").ok_cases()
    cols = [c[4:] for c in syn.columns if c.startswith("req_")]
    table = pd.DataFrame([{**{c: syn.iloc[0][f"req_{c}"] * (2.0 if c.startswith("volume") else 1.0) for c in cols},
                           "source_case": syn.iloc[0]["source_case"], "case_id": "ask-big"}])
    table.to_csv(tmp_path / "ask.csv", index=False)
    out = synthesize_dataset(ws, "m", "tmasks", "syn-csv", SynthesizeConfig(device="cpu", montage_cases=0),
                             features_csv=tmp_path / "ask.csv")
    ds = open_dataset(ws, "syn-csv")
    row = ds.manifest.iloc[0]
    assert out.n_cases == 1 and row["case_id"] == "ask-big-syn0" and row["source_case"] == syn.iloc[0]["source_case"]
    assert row["req_volume_mm3_wt"] == pytest.approx(2.0 * syn.iloc[0]["req_volume_mm3_wt"])
    (tmp_path / "bad.csv").write_text("source_case,volume_mm3_wt\nx,1\n")
    with pytest.raises(SbldmError, match="missing"):
        synthesize_dataset(ws, "m", "tmasks", "syn-bad", SynthesizeConfig(device="cpu"), features_csv=tmp_path / "bad.csv")


def test_a_vae_of_a_killed_run_with_other_settings_is_never_reused(trained, monkeypatch):
    import components.sbldm.training as training
    from components.sbldm.store import load_trained_sbldm

    ws, backend, _ = trained
    cfg = backend.resolve_config("tiny")
    backend.train(ws, "tiny", "v", cfg, track=False)
    other = cfg.model_copy(update={"vae_train": cfg.vae_train.model_copy(update={"lr": 2e-3})})

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:  # a new VAE is written, then the run is killed in the diffusion stage
        m.setattr(training, "train_diffusion", killed)
        with pytest.raises(KeyboardInterrupt):
            backend.train(ws, "tiny", "v", other, resume=True, track=False)
    with pytest.raises(SbldmError, match="--resume"):  # not "already trained": vae.pt is the other VAE now
        backend.train(ws, "tiny", "v", cfg, track=False)
    backend.train(ws, "tiny", "v", cfg, resume=True, track=False)  # the other VAE is not reused: trained again
    assert torch.load(ws / "models" / "v" / "vae.pt", weights_only=True)["config_sha256"] == cfg.stage_digest("vae")
    load_trained_sbldm(ws, "v", "cpu")


def test_a_run_killed_in_the_diffusion_stage_resumes_from_its_checkpoint_to_the_same_weights(trained):
    from components.synthesis.training import NullTracker

    ws, backend, _ = trained
    tiny = backend.resolve_config("tiny")
    cfg = tiny.model_copy(update={"diffusion_train": tiny.diffusion_train.model_copy(
        update={"steps": 6, "checkpoint_every": 2, "keep_checkpoints": 1, "log_every": 1})})
    backend.train(ws, "tiny", "whole", cfg, track=False)
    whole = torch.load(ws / "models" / "whole" / "diffusion.pt", weights_only=True)["unet"]

    class KilledAtStep5(NullTracker):  # a run killed after its step-4 checkpoint
        def log_metrics(self, metrics, step=None):
            if step == 5 and "diffusion_loss" in metrics:
                raise KeyboardInterrupt

    import components.sbldm.training as training
    from components.sbldm.store import sbldm_paths

    paths = sbldm_paths(ws, "cut")
    with pytest.raises(KeyboardInterrupt):
        training._train(open_dataset(ws, "tiny"), paths, "cut", cfg, False, KilledAtStep5(), False)
    assert [s for s, _ in paths.list_checkpoints()] == [4]  # keep_checkpoints 1
    assert not paths.diffusion.is_file()
    with pytest.raises(SbldmError, match="--resume"):
        backend.train(ws, "tiny", "cut", cfg, track=False)
    backend.train(ws, "tiny", "cut", cfg, resume=True, track=False)
    card = json.loads(paths.config.read_text())
    assert card["stages"]["diffusion"]["resumed_from_step"] == 4
    resumed = torch.load(paths.diffusion, weights_only=True)["unet"]
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert not paths.checkpoints.exists()  # the finished stage is diffusion.pt alone
    log = pd.read_csv(paths.log("diffusion"))
    assert log["step"].tolist() == [1, 2, 3, 4, 5, 6]  # cut at the checkpoint, then continued
    # settings that only say when to checkpoint do not change the model's digest
    every = cfg.model_copy(update={"diffusion_train": cfg.diffusion_train.model_copy(
        update={"checkpoint_every": 5, "keep_checkpoints": 3})})
    assert every.stage_digest("diffusion") == cfg.stage_digest("diffusion") != cfg.model_copy(
        update={"diffusion_train": cfg.diffusion_train.model_copy(update={"lr": 5e-3})}).stage_digest("diffusion")


def test_v_prediction_trains_on_the_velocity_and_samples(tiny_catalog_ws):
    from components.backends import get_synthesizer
    from components.sbldm.diffusion import build_scheduler
    from components.sbldm.sampling import generate
    from components.sbldm.store import load_trained_sbldm
    from components.synthesis.sampling import make_generator

    backend = get_synthesizer("sbldm")
    tiny = backend.resolve_config("tiny")
    cfg = tiny.model_copy(update={"diffusion": tiny.diffusion.model_copy(update={"prediction_type": "v_prediction"})})
    assert cfg.stage_digest("diffusion") != tiny.stage_digest("diffusion")
    sched = build_scheduler(cfg.diffusion)
    x0, eps, t = torch.randn(2, 2, 4, 4, 4), torch.randn(2, 2, 4, 4, 4), torch.tensor([10, 90])
    a = sched.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1, 1)
    s = (1 - sched.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1, 1)
    assert torch.allclose(sched.get_velocity(x0, eps, t), a * eps - s * x0, atol=1e-6)
    backend.train(tiny_catalog_ws, "tiny", "mv", cfg, track=False)
    tm = load_trained_sbldm(tiny_catalog_ws, "mv", "cpu")
    assert tm.config.diffusion.prediction_type == "v_prediction"
    x, labels = generate(tm, torch.zeros(1, len(tm.norm.columns)), [make_generator(3)])
    assert torch.isfinite(x).all() and x.shape == (1, 4, 16, 16, 16)


def test_profiles_and_refusals():
    from components.backends import get_synthesizer

    backend = get_synthesizer("sbldm")
    with pytest.raises(SbldmError, match="unknown sbldm profile"):
        backend.check_profile("no-such-profile")
    for p in ("tiny", "cpu-demo", "brats-gpu"):
        backend.check_profile(p)
    gpu = load_profile("brats-gpu")
    assert gpu.vae.factor == 8 and gpu.latent_shape == (24, 24, 96) and gpu.unet.channels == (64, 128, 256, 512)
    assert load_profile("cpu-demo").data.shape == (40, 48, 40)
    d = load_profile("tiny").model_dump()
    d["data"]["flip_axes"] = (2,)
    with pytest.raises(ValueError, match="slice axis"):
        SbldmConfig.model_validate(d)
