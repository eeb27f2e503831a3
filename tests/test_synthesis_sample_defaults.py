"""The synthesize stage samples the way the model's profile says (its ``sample`` block) unless told otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from components.synthesis.config import SynthesisError, SynthesizeConfig, SynthesizerConfig, load_profile
from components.synthesis.sampling import resolve_sampling
from components.synthesis.training import train_synthesizer
from components.synthesis.writer import synthesize_dataset
from data_catalog import MODALITIES, open_dataset
from tests import builders as b

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PROFILE_SAMPLE = {"sampler": "ddim", "steps": 3, "eta": 0.7, "batch": 2}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _with_sample(cfg: SynthesizerConfig, **sample) -> SynthesizerConfig:
    d = cfg.model_dump(mode="json")
    d["sample"] = {**d["sample"], **sample}
    return SynthesizerConfig.model_validate(d)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    ws = tmp_path_factory.mktemp("synth-defaults")
    b.write_catalog_dataset(ws, "tiny", n_cases=4)
    b.write_catalog_dataset(ws, "tmasks", n_cases=2, kind="masks")
    cfg = _with_sample(b.tiny_synth_config(steps=1, montage_cases=0), **PROFILE_SAMPLE)
    train_synthesizer(ws, "tiny", "m", cfg, track=False, progress=False)
    return ws


def _images(ws, name: str) -> dict[str, np.ndarray]:
    ds = open_dataset(ws, name)
    return {cid: np.stack([np.asarray(nib.load(str(ds.path(cid, m))).dataobj) for m in MODALITIES])
            for cid in ds.ok_cases()["case_id"]}


def test_unset_fields_take_the_model_profile_sample_block_and_are_recorded(ws):
    card = json.loads((ws / "models" / "m" / "config.json").read_text())
    assert card["config"]["sample"] == PROFILE_SAMPLE  # the profile's block is saved with the model

    s = synthesize_dataset(ws, "m", "tmasks", "prof", SynthesizeConfig(montage_cases=0), progress=False)
    assert (s.sampler, s.steps) == ("ddim", 3)
    ds = open_dataset(ws, "prof")
    assert (ds.info["sampler"], ds.info["steps"], ds.info["eta"]) == ("ddim", 3, 0.7)
    assert {k: ds.info["config"][k] for k in PROFILE_SAMPLE} == PROFILE_SAMPLE
    for p in ds.manifest["params"]:
        assert {k: json.loads(p)[k] for k in ("sampler", "steps", "eta")} == {"sampler": "ddim", "steps": 3, "eta": 0.7}

    # the recorded values are the ones sampled with: the same as asking for them explicitly
    synthesize_dataset(ws, "m", "tmasks", "explicit", SynthesizeConfig(montage_cases=0, **PROFILE_SAMPLE),
                       progress=False)
    a, e = _images(ws, "prof"), _images(ws, "explicit")
    assert a.keys() == e.keys() and all(np.array_equal(a[k], e[k]) for k in a)


def test_an_explicit_value_overrides_the_profile(ws):
    synthesize_dataset(ws, "m", "tmasks", "over", SynthesizeConfig(steps=2, eta=0.0, batch=1, montage_cases=0),
                       progress=False)
    ds = open_dataset(ws, "over")
    assert (ds.info["sampler"], ds.info["steps"], ds.info["eta"], ds.info["config"]["batch"]) == ("ddim", 2, 0.0, 1)
    assert all(json.loads(p)["eta"] == 0.0 and json.loads(p)["steps"] == 2 for p in ds.manifest["params"])
    if not (ws / "datasets" / "prof").is_dir():
        synthesize_dataset(ws, "m", "tmasks", "prof", SynthesizeConfig(montage_cases=0), progress=False)
    a, o = _images(ws, "prof"), _images(ws, "over")
    assert not any(np.array_equal(a[k], o[k]) for k in a)  # another sampler setting, other samples


def test_resolution_rules():
    model = _with_sample(b.tiny_synth_config(), **PROFILE_SAMPLE)
    r = resolve_sampling(SynthesizeConfig(), model)
    assert (r.sampler, r.steps, r.eta, r.batch) == ("ddim", 3, 0.7, 2)
    r = resolve_sampling(SynthesizeConfig(eta=0.0, batch=1), model)
    assert (r.sampler, r.steps, r.eta, r.batch) == ("ddim", 3, 0.0, 1)
    # the DDPM reference runs all T steps and has no eta
    r = resolve_sampling(SynthesizeConfig(sampler="ddpm"), model)
    assert (r.sampler, r.steps, r.eta) == ("ddpm", model.diffusion.num_train_timesteps, None)
    with pytest.raises(SynthesisError, match="step-noise weight of ddim and dpmpp2m"):
        resolve_sampling(SynthesizeConfig(sampler="ddpm", eta=0.5), model)
    with pytest.raises(ValueError):
        SynthesizeConfig(eta=1.5)  # above 1 the DDIM step takes the square root of a negative number


def test_the_full_scale_profile_samples_the_validated_way():
    """DDIM with eta 1 matched the 1000-step DDPM reference in bench/sampling_quality.py (cpu-demo: with 16
    network evaluations); eta 0 was noisier."""
    prof = load_profile("brats-gpu")
    assert prof.sample.sampler == "ddim" and prof.sample.eta > 0
    assert 1 <= prof.sample.steps <= prof.diffusion.num_train_timesteps
    pipeline = yaml.safe_load((CONFIGS / "brats-gpu.yaml").read_text())
    assert pipeline["synthesizer"]["profile"] == "brats-gpu"
    run = resolve_sampling(SynthesizeConfig.model_validate(pipeline["synthesis"]["config"]), prof)
    assert run.sampler == "ddim" and run.eta > 0 and run.eta == prof.sample.eta and run.steps == prof.sample.steps
    # the demo pipeline's explicit settings are its profile's own
    demo = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    cpu = load_profile(demo["synthesizer"]["profile"])
    explicit = resolve_sampling(SynthesizeConfig.model_validate(demo["synthesis"]["config"]), cpu)
    default = resolve_sampling(SynthesizeConfig(), cpu)
    assert (explicit.sampler, explicit.steps, explicit.eta) == (default.sampler, default.steps, default.eta) == ("ddim", 16, 1.0)
