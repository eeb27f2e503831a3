"""The ldm synthesizer (components/ldm, components/backends/ldm.py) on the tiny profile: the stored latent
scale factor is what decoding uses, the backend trains, resumes and writes a synthetic dataset that
honours the synthesizer contract, and a seed fixes the sample."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from components.ldm.config import LdmError
from components.synthesis.config import SynthesizeConfig
from data_catalog import MODALITIES, open_dataset
from tests.builders import write_catalog_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tiny_catalog_ws):
    """Model ``m`` (tiny profile) on dataset ``tiny``, tracked in MLflow, and the masks dataset ``tmasks``."""
    from components.backends import get_synthesizer

    write_catalog_dataset(tiny_catalog_ws, "tmasks", n_cases=2, kind="masks")
    backend = get_synthesizer("ldm")
    summary = backend.train(tiny_catalog_ws, "tiny", "m", backend.resolve_config("tiny"), track=True)
    return tiny_catalog_ws, backend, summary


def _synthesize(ws, backend, name, seed=0):
    cfg = SynthesizeConfig(seed=seed, device="cpu", montage_cases=0)
    return backend.synthesize(ws, "m", "tmasks", name, cfg)


def test_decoding_uses_the_stored_scale_factor(trained):
    import torch

    from components.ldm.sampling import decode_latents, generate
    from components.ldm.store import load_trained_ldm
    from components.synthesis.sampling import make_generator

    ws, _, _ = trained
    tm = load_trained_ldm(ws, "m", "cpu")
    card = json.loads((ws / "models" / "m" / "config.json").read_text())
    stored = torch.load(ws / "models" / "m" / "autoencoder.pt", weights_only=True)["scale_factor"]
    assert tm.scale_factor == pytest.approx(card["scale_factor"]) == pytest.approx(stored)
    assert abs(tm.scale_factor - 1.0) > 0.05  # a factor of 1 could not tell the two decodings apart
    # 1 / std of the training latents: the scaled latents have unit spread
    assert tm.scale_factor * card["stages"]["autoencoder"]["latent_std"] == pytest.approx(1.0)

    ae = tm.autoencoder
    x = torch.rand((1, 4, 16, 16, 16), generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        z = ae.encode(x)[0]
        direct = ae.decode(z).clamp(-1, 1)
    np.testing.assert_allclose(decode_latents(ae, z * tm.scale_factor, tm.scale_factor), direct, atol=1e-5)

    labels = torch.ones((1, 16, 16, 16), dtype=torch.long)
    labels[0, 6:10, 6:10, 6:10] = 3
    images, zs = generate(tm, labels, [make_generator(3)], "ddim", 5, 1.0)
    with torch.no_grad():
        expected = ae.decode(zs / tm.scale_factor).clamp(-1, 1)
        ignored = ae.decode(zs).clamp(-1, 1)
    np.testing.assert_allclose(images, expected, atol=1e-5)
    assert float((images - ignored).abs().max()) > 1e-3


def test_train_then_synthesize_through_the_backend(trained):
    from components.ablation import generator_record

    ws, backend, summary = trained
    card = json.loads((ws / "models" / "m" / "config.json").read_text())
    train_cases = open_dataset(ws, "tiny").ok_cases("train")["case_id"].tolist()
    assert card["backend"] == "ldm" and card["dataset"] == "tiny" and card["train_cases"] == train_cases
    assert card["perceptual_loss"] == "off" and card["device"] == "cpu" and card["config"]["profile"] == "tiny"
    assert card["stages"]["autoencoder"]["done"] and card["stages"]["diffusion"]["done"]
    assert all(p.is_file() for p in backend.model_files(ws, "m"))
    assert len(backend.weights_digest(ws, "m")) == 64
    assert "scale factor" in summary.line() and summary.run_id

    out = _synthesize(ws, backend, "syn")
    assert out.n_ok == 2 and out.n_written == 2 and out.n_quarantined == 0
    syn = open_dataset(ws, "syn")
    masks = open_dataset(ws, "tmasks")
    assert syn.info["generator_dataset"] == "tiny" and syn.info["generator_train_cases"] == train_cases
    rec = generator_record(ws, syn)
    assert rec is not None and rec.train_cases == tuple(train_cases)
    ok = syn.ok_cases()
    assert sorted(ok["case_id"]) == sorted(f"{c}-syn0" for c in masks.manifest["case_id"])
    for _, row in ok.iterrows():
        ref = nib.load(masks.path(row["mask_case"], "seg"))
        params = json.loads(row["params"])
        assert params["backend"] == "ldm" and params["sampler"] == "ddim" and params["steps"] == 5
        assert params["scale_factor"] == pytest.approx(card["scale_factor"]) and params["device"] == "cpu"
        for key in (*MODALITIES, "seg", "head"):
            img = nib.load(syn.path(row["case_id"], key))
            assert img.shape == ref.shape
            np.testing.assert_allclose(img.affine, ref.affine, atol=1e-5)
        flair = np.asarray(nib.load(syn.path(row["case_id"], "t2f")).dataobj)
        head = np.asarray(nib.load(syn.path(row["case_id"], "head")).dataobj) > 0
        assert (flair[~head] == 0).all() and flair[head].std() > 0
        np.testing.assert_array_equal(np.asarray(nib.load(syn.path(row["case_id"], "seg")).dataobj),
                                      np.asarray(ref.dataobj))

    from mlflow import MlflowClient

    from components.tracking import tracking_uri

    run = MlflowClient(tracking_uri=tracking_uri(ws)).get_run(summary.run_id)
    assert run.data.params["backend"] == "ldm" and run.data.params["perceptual_loss"] == "off"
    assert {"ae_l1", "ae_disc", "ldm_loss", "scale_factor"} <= set(run.data.metrics)


def test_the_same_seed_gives_the_same_cases(trained):
    ws, backend, _ = trained
    _synthesize(ws, backend, "seed0-a")
    _synthesize(ws, backend, "seed0-b")
    _synthesize(ws, backend, "seed1", seed=1)
    a, b, c = (open_dataset(ws, n) for n in ("seed0-a", "seed0-b", "seed1"))
    for cid in a.ok_cases()["case_id"]:
        va, vb, vc = (np.asarray(nib.load(d.path(cid, "t1c")).dataobj) for d in (a, b, c))
        np.testing.assert_array_equal(va, vb)
        assert not np.array_equal(va, vc)
    again = _synthesize(ws, backend, "seed0-a")  # a re-run keeps every case whose inputs are unchanged
    assert again.n_reused == 2 and again.n_written == 0


def test_a_killed_run_resumes_to_the_uninterrupted_weights(trained):
    import torch

    ws, backend, _ = trained
    full = backend.resolve_config("tiny")
    half_ae = full.model_copy(update={"autoencoder_train": full.autoencoder_train.model_copy(update={"steps": 2})})
    backend.train(ws, "tiny", "r", half_ae.with_steps(2), track=False)  # "killed" half-way through the autoencoder
    with pytest.raises(LdmError, match="--resume"):
        backend.train(ws, "tiny", "r", full, track=False)
    backend.train(ws, "tiny", "r", full.with_steps(2), resume=True, track=False)  # killed half-way through diffusion
    ae_file = ws / "models" / "r" / "autoencoder.pt"
    ae_bytes = ae_file.read_bytes()
    backend.train(ws, "tiny", "r", full, resume=True, track=False)
    assert ae_file.read_bytes() == ae_bytes  # the finished autoencoder stage is kept
    for f in ("autoencoder.pt", "diffusion.pt"):
        resumed = torch.load(ws / "models" / "r" / f, weights_only=True)
        straight = torch.load(ws / "models" / "m" / f, weights_only=True)
        assert resumed["step"] == straight["step"] == 4 and resumed["scale_factor"] == straight["scale_factor"]
        key = "unet" if f == "diffusion.pt" else "autoencoder"
        for k, v in straight[key].items():
            torch.testing.assert_close(resumed[key][k], v, rtol=0, atol=0)


def test_a_killed_run_is_never_taken_as_trained(trained, monkeypatch):
    import components.ldm.training as training

    ws, backend, _ = trained
    full = backend.resolve_config("tiny")
    backend.train(ws, "tiny", "k", full, track=False)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:  # a longer diffusion stage, killed before its first checkpoint
        m.setattr(training, "_train_diffusion", killed)
        with pytest.raises(KeyboardInterrupt):
            backend.train(ws, "tiny", "k", full.with_steps(6), resume=True, track=False)
    card = json.loads((ws / "models" / "k" / "config.json").read_text())
    assert "diffusion" not in card["stages"] and card["stages"]["autoencoder"]["done"]
    with pytest.raises(LdmError, match="--resume"):  # the 4-step diffusion.pt is not a 6-step model
        backend.train(ws, "tiny", "k", full.with_steps(6), track=False)
    with pytest.raises(LdmError, match="not trained to the end"):
        backend.weights_digest(ws, "k")


def test_auto_resume_moves_a_model_of_other_settings_aside(trained):
    ws, backend, _ = trained
    full = backend.resolve_config("tiny")
    backend.train(ws, "tiny", "a", full, track=False)
    digest = backend.weights_digest(ws, "a")
    backend.train(ws, "tiny", "a", full, resume="auto", track=False)  # the same settings: kept as it is
    assert backend.weights_digest(ws, "a") == digest and not list((ws / "models").glob("a.replaced-*"))
    other = full.model_copy(update={"seed": 1})
    backend.train(ws, "tiny", "a", other, resume="auto", track=False)
    aside = list((ws / "models").glob("a.replaced-*"))
    assert len(aside) == 1 and json.loads((aside[0] / "config.json").read_text())["config"]["seed"] == 0
    assert json.loads((ws / "models" / "a" / "config.json").read_text())["config"]["seed"] == 1
    assert backend.weights_digest(ws, "a") != digest


def test_an_unknown_profile_is_one_sentence_without_torch():
    code = ("import sys\n"
            "from components.backends import get_synthesizer\n"
            "try:\n"
            "    get_synthesizer('ldm').check_profile('no-such-profile')\n"
            "except Exception as err:\n"
            "    print(type(err).__name__, '|', err)\n"
            "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    first, torch_loaded = out.strip().splitlines()
    assert first.startswith("LdmError | unknown ldm profile 'no-such-profile'") and "cpu-demo" in first
    assert first.count(". ") == 0 and torch_loaded == "False"


def test_the_contrast_check_sees_the_tumour_of_real_cases(tiny_catalog_ws):
    from components.ldm.evaluate import contrast_table, flair_dice

    ds = open_dataset(tiny_catalog_ws, "tiny")
    table = contrast_table(ds, shell_mm=3.0)
    # tests/builders.py TISSUE_CONTRASTS: the tumour is 1.6-3x brighter than healthy tissue on T2, darker on T1
    assert (table["t2w_contrast"] > 1.5).all() and (table["t1n_contrast"] < 1.0).all()
    threshold = float((table["t2f_tumour"].mean() + table["t2f_surround"].mean()) / 2)
    assert np.mean(flair_dice(ds, table, threshold)) > 0.5


@pytest.mark.slow
def test_the_perceptual_loss_runs_from_a_local_file_only(tiny_catalog_ws, tmp_path):
    import torch
    import torchvision

    from components.backends import get_synthesizer

    backend = get_synthesizer("ldm")
    cfg = backend.resolve_config("tiny")
    with pytest.raises(LdmError, match="no such file"):
        backend.train(tiny_catalog_ws, "tiny", "p0", cfg.model_copy(update={"perceptual_weights": str(tmp_path / "x.pt")}),
                      track=False)
    assert not (tiny_catalog_ws / "models" / "p0").exists()
    weights = tmp_path / "resnet50.pt"  # random weights: this checks the wiring, not the loss's value
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), weights)
    backend.train(tiny_catalog_ws, "tiny", "p1", cfg.model_copy(update={"perceptual_weights": str(weights)}), track=False)
    card = json.loads((tiny_catalog_ws / "models" / "p1" / "config.json").read_text())
    assert card["perceptual_loss"] == f"on ({weights})"
    log = (tiny_catalog_ws / "models" / "p1" / "train_log_autoencoder.csv").read_text().splitlines()
    assert all(float(line.split(",")[4]) > 0 for line in log[1:])  # the perceptual column
