"""Synthesizer sampling: seeds, shapes, refusal of untrained models, the synthetic dataset contract."""

from __future__ import annotations

import copy
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from components.io import write_json_atomic
from components.synthesis.config import DiffusionConfig, SynthesisError, SynthesizeConfig
from components.synthesis.network import build_network, place_network
from components.synthesis.sampling import make_generator, sample_images
from components.synthesis.store import ModelNotTrainedError, load_trained_model, model_paths
from components.synthesis.training import train_synthesizer
from components.synthesis.writer import synthesize_dataset
from data_catalog import MODALITIES, open_dataset
from tests import builders as b

SYNTH_COLUMNS = {"case_id", "status", "reason", "split", *MODALITIES, "seg", "head", "shape", "spacing", "labels",
                 "source_case", "mask_case", "seed", "params", "model_digest", "quality_score",
                 *(f"sha256_{k}" for k in (*MODALITIES, "seg", "head"))}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    ws = tmp_path_factory.mktemp("synth-sample")
    b.write_catalog_dataset(ws, "tiny", n_cases=4)
    b.write_catalog_dataset(ws, "tmasks", n_cases=2, kind="masks")
    train_synthesizer(ws, "tiny", "m", b.tiny_synth_config(steps=2, montage_cases=0), track=False, progress=False)
    return ws


def _net_and_labels(n_cond=5):
    cfg = b.tiny_synth_config()
    net = build_network(cfg.network, n_cond, seed=0).eval()
    labels = torch.zeros((2, 16, 16, 16), dtype=torch.long)
    labels[:, 3:13, 3:13, 3:13] = 1
    labels[:, 6:9, 6:9, 6:9] = 3
    return net, labels


@pytest.mark.parametrize("sampler,steps,eta", [("ddim", 4, 0.0), ("ddim", 4, 0.5), ("ddpm", 20, 0.0)])
def test_same_seed_gives_identical_samples(sampler, steps, eta):
    net, labels = _net_and_labels()
    diffusion = DiffusionConfig(num_train_timesteps=20)

    def run(seeds):
        return sample_images(net, labels, 5, diffusion, [make_generator(s) for s in seeds], sampler=sampler,
                             steps=steps, eta=eta, progress=False)

    a, c, d = run([1, 2]), run([1, 2]), run([3, 2])
    assert a.shape == (2, 4, 16, 16, 16) and a.dtype == torch.float32
    assert a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, c)
    assert not torch.equal(a[0], d[0]) and torch.equal(a[1], d[1])  # per-volume generators


def test_the_cpu_layout_changes_speed_not_values():
    net, labels = _net_and_labels()
    fast = place_network(copy.deepcopy(net), torch.device("cpu"))
    convs = [p for p in fast.parameters() if p.dim() == 5]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in convs)
    x = torch.cat([torch.randn((2, 4, 16, 16, 16), generator=torch.Generator().manual_seed(0)),
                   torch.nn.functional.one_hot(labels, 5).permute(0, 4, 1, 2, 3).float()], dim=1)
    t = torch.tensor([3, 17])
    with torch.no_grad():
        torch.testing.assert_close(fast(x, timesteps=t), net(x, timesteps=t), rtol=1e-4, atol=1e-5)


def test_ddpm_reference_runs_the_full_chain_only():
    net, labels = _net_and_labels()
    with pytest.raises(SynthesisError, match="full-length"):
        sample_images(net, labels, 5, DiffusionConfig(num_train_timesteps=20), [make_generator(0)] * 2,
                      sampler="ddpm", steps=5, progress=False)


def test_a_model_with_a_prior_samples_only_with_it():
    cfg = b.tiny_synth_config()
    net = build_network(cfg.network, 5, seed=0, diffusion=cfg.diffusion).eval()
    _, labels = _net_and_labels()
    gens = [make_generator(0)] * 2
    with pytest.raises(SynthesisError, match="trained with a prior"):
        sample_images(net, labels, 5, cfg.diffusion, gens, steps=2, progress=False)
    with pytest.raises(SynthesisError, match="expected"):
        sample_images(net, labels, 5, cfg.diffusion, gens, steps=2, progress=False, prior=torch.zeros(4, 8, 8, 8))
    plain, _ = _net_and_labels()
    with pytest.raises(SynthesisError, match="without a prior"):
        sample_images(plain, labels, 5, cfg.diffusion, gens, steps=2, progress=False, prior=torch.zeros(4, 16, 16, 16))
    # one DDIM step (eta 0) from pure noise with the untrained model (the linear denoiser centred on
    # the prior): the sample is the prior, whatever the noise; without the prior's pull it would be ~0
    for v in (-0.5, 0.5):
        prior = torch.full((4, 16, 16, 16), v)
        x = sample_images(net, labels, 5, cfg.diffusion, [make_generator(0), make_generator(1)], steps=1,
                          progress=False, prior=prior)
        torch.testing.assert_close(x, prior[None].expand(2, -1, -1, -1, -1), atol=1e-2, rtol=0)


def test_a_model_trained_before_the_prior_option_still_loads(ws):
    import hashlib

    cfg = b.tiny_synth_config(steps=1, montage_cases=0)
    plain = cfg.model_copy(update={"diffusion": cfg.diffusion.model_copy(update={"prior": "none"})})
    train_synthesizer(ws, "tiny", "plain", plain, track=False, progress=False)
    paths = model_paths(ws, "plain")
    # ema.pt written before the option carries the digest of a config with no "prior" key at all
    old = plain.model_dump(mode="json")
    old["train"].pop("steps")
    old["diffusion"].pop("prior")
    old["network"].pop("gradient_checkpointing")  # nor the later memory option, which is no part of the model
    blob = torch.load(paths.ema, weights_only=True)
    assert blob["config_sha256"] == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()
    card = json.loads(paths.config.read_text())
    del card["config"]["diffusion"]["prior"]  # and so did config.json
    del card["config"]["network"]["gradient_checkpointing"]
    write_json_atomic(paths.config, card)
    tm = load_trained_model(ws, "plain")
    assert tm.prior is None and tm.config.diffusion.prior == "none"
    assert cfg.digest() != plain.digest()  # a prior is part of a model's identity


def test_an_untrained_model_is_refused(ws):
    with pytest.raises(SynthesisError, match="no model"):
        load_trained_model(ws, "missing")
    paths = model_paths(ws, "untrained")
    paths.root.mkdir(parents=True)
    write_json_atomic(paths.config, json.loads(model_paths(ws, "m").config.read_text()))
    with pytest.raises(ModelNotTrainedError, match="no trained checkpoint"):
        synthesize_dataset(ws, "untrained", "tiny", "never", progress=False)
    assert not (ws / "datasets" / "never").exists()


def test_synthetic_cases_have_the_mask_grid_affine_seg_and_zero_outside_the_head(ws):
    s = synthesize_dataset(ws, "m", "tmasks", "syn", SynthesizeConfig(samples_per_mask=2, batch=2, montage_cases=1),
                           progress=False)
    assert s.n_ok == 4 and s.n_quarantined == 0
    ds = open_dataset(ws, "syn")
    masks = open_dataset(ws, "tmasks")
    assert ds.info["kind"] == "synthetic" and ds.info["parents"][0]["name"] == "tmasks"
    assert SYNTH_COLUMNS <= set(ds.manifest.columns)
    for _, r in ds.manifest.iterrows():
        mseg = nib.load(str(masks.path(r["mask_case"], "seg")))
        head = np.asarray(nib.load(str(masks.path(r["mask_case"], "head"))).dataobj) > 0
        seg = nib.load(str(ds.path(r["case_id"], "seg")))
        np.testing.assert_array_equal(np.asarray(seg.dataobj), np.asarray(mseg.dataobj))
        for m in MODALITIES:
            img = nib.load(str(ds.path(r["case_id"], m)))
            arr = np.asarray(img.dataobj)
            assert arr.shape == mseg.shape
            np.testing.assert_allclose(img.affine, mseg.affine)
            assert np.all(arr[~head] == 0) and arr[head].max() > 0
        assert r["source_case"] == masks.manifest.set_index("case_id").loc[r["mask_case"], "source_case"]
        assert r["split"] == masks.manifest.set_index("case_id").loc[r["mask_case"], "split"]
        assert 0 < r["quality_score"] <= 1
        assert json.loads(r["params"])["sampler"] == "ddim"
    assert ds.manifest["seed"].nunique() == 4
    assert (ds.root / "montage.png").is_file()


def test_a_killed_run_keeps_written_cases_and_makes_only_the_rest(ws):
    cfg = SynthesizeConfig(montage_cases=0)
    synthesize_dataset(ws, "m", "tiny", "resumed", cfg, progress=False)
    ds = open_dataset(ws, "resumed")
    assert set(ds.manifest["source_case"]) == set(ds.manifest["mask_case"])  # a phantom used as masks
    first = ds.manifest["case_id"].iloc[0]
    before = np.asarray(nib.load(str(ds.path(first, "t1c"))).dataobj)
    shutil.rmtree(ds.root / "cases" / first)  # as if killed before this case was renamed into place
    (ds.root / "dataset.json").unlink()
    s = synthesize_dataset(ws, "m", "tiny", "resumed", cfg, progress=False)
    assert (s.n_written, s.n_reused) == (1, 3)
    after = np.asarray(nib.load(str(open_dataset(ws, "resumed").path(first, "t1c"))).dataobj)
    np.testing.assert_array_equal(before, after)  # same seed, same sample


def test_a_model_at_another_spacing_writes_the_resampled_grid_with_its_true_affine(ws):
    cfg = b.tiny_synth_config(steps=1, montage_cases=0)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"spacing": (2.0, 2.0, 2.0)})})
    train_synthesizer(ws, "tiny", "m2mm", cfg, track=False, progress=False)
    synthesize_dataset(ws, "m2mm", "tmasks", "syn2mm", SynthesizeConfig(montage_cases=0), progress=False)
    ds = open_dataset(ws, "syn2mm")
    r = ds.manifest.iloc[0]
    img = nib.load(str(ds.path(r["case_id"], "t2f")))
    src = nib.load(str(open_dataset(ws, "tmasks").path(r["mask_case"], "seg")))
    np.testing.assert_allclose(img.header.get_zooms()[:3], (2.0, 2.0, 2.0))
    np.testing.assert_allclose(img.affine[:3, 3], src.affine[:3, 3])  # same origin, new voxel size
    assert np.all(np.sign(np.diag(img.affine)[:3]) == np.sign(np.diag(src.affine)[:3]))
    # the field of view is kept: shape x spacing is the source's within one voxel
    fov, src_fov = np.array(img.shape) * 2.0, np.array(src.shape) * np.array(src.header.get_zooms()[:3])
    assert np.all(np.abs(fov - src_fov) <= 2.0)
    assert json.loads(r["params"])["resampled"] is True
    assert r["spacing"].tolist() == [2.0, 2.0, 2.0]
