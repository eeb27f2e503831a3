"""Checkpoints and resume: exact continuation, refusals, what a checkpoint holds, the automatic policy."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from components.synthesis.config import SynthesisError
from components.synthesis.resume import extends_exactly, load_checkpoint, save_checkpoint
from components.synthesis.store import model_paths, read_json
from components.synthesis.training import read_log, train_synthesizer
from tests import builders as b

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ws(tiny_catalog_ws):
    return tiny_catalog_ws


def test_resume_gives_the_losses_and_weights_of_an_uninterrupted_run(ws, monkeypatch):
    import components.synthesis.training as training

    cfg = b.tiny_synth_config(steps=6, checkpoint_every=2, montage_cases=0)
    train_synthesizer(ws, "tiny", "straight", cfg, track=False, progress=False)

    real_save = training.save_checkpoint

    def save_then_die(paths, step, *args, **kwargs):  # the process is killed right after step 4's checkpoint
        real_save(paths, step, *args, **kwargs)
        if step == 4:
            raise KeyboardInterrupt

    # the loop calls the name training imported from resume: patch it there
    monkeypatch.setattr(training, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_synthesizer(ws, "tiny", "interrupted", cfg, track=False, progress=False)
    monkeypatch.setattr(training, "save_checkpoint", real_save)
    r = train_synthesizer(ws, "tiny", "interrupted", cfg, resume=True, track=False, progress=False)
    assert r.start_step == 4 and r.steps == 6
    a = read_log(model_paths(ws, "straight").log)
    c = read_log(model_paths(ws, "interrupted").log)
    assert [x["step"] for x in c] == [1, 2, 3, 4, 5, 6]
    assert [x["loss"] for x in a] == [x["loss"] for x in c]
    wa = torch.load(model_paths(ws, "straight").ema, weights_only=True)
    wc = torch.load(model_paths(ws, "interrupted").ema, weights_only=True)
    assert wa["step"] == wc["step"] == 6
    for k in wa["ema"]:
        assert torch.equal(wa["ema"][k], wc["ema"][k]), k


def test_resume_to_more_steps_continues_from_the_last_checkpoint(ws):
    cfg = b.tiny_synth_config(steps=2, checkpoint_every=1, montage_cases=0, lr_schedule="constant")
    train_synthesizer(ws, "tiny", "longer", cfg, track=False, progress=False)
    r = train_synthesizer(ws, "tiny", "longer", cfg, steps=4, resume=True, track=False, progress=False)
    assert (r.start_step, r.steps) == (2, 4)
    assert [x["step"] for x in read_log(model_paths(ws, "longer").log)] == [1, 2, 3, 4]
    # the same as four uninterrupted steps: a constant schedule does not depend on the total
    train_synthesizer(ws, "tiny", "four", cfg, steps=4, track=False, progress=False)
    assert [x["loss"] for x in read_log(model_paths(ws, "four").log)] == \
        [x["loss"] for x in read_log(model_paths(ws, "longer").log)]


def test_resume_to_another_total_under_a_cosine_schedule_is_refused(ws):
    cfg = b.tiny_synth_config(steps=2, checkpoint_every=1, montage_cases=0)
    assert cfg.train.lr_schedule == "cosine"
    train_synthesizer(ws, "tiny", "cosine", cfg, track=False, progress=False)
    with pytest.raises(SynthesisError, match="cosine learning-rate schedule"):
        train_synthesizer(ws, "tiny", "cosine", cfg, steps=4, resume=True, track=False, progress=False)

def test_checkpoint_holds_model_ema_optimizer_step_and_rng_states(ws):
    cfg = b.tiny_synth_config(steps=2, checkpoint_every=1, keep_checkpoints=1, montage_cases=0)
    train_synthesizer(ws, "tiny", "ck", cfg, track=False, progress=False)
    paths = model_paths(ws, "ck")
    assert [s for s, _ in paths.list_checkpoints()] == [2]
    ck = torch.load(paths.checkpoint(2), weights_only=True)
    assert ck["step"] == 2 and {"model", "ema", "optimizer", "rng"} <= set(ck)
    assert set(ck["rng"]) == {"data", "noise"} and all(isinstance(v, torch.Tensor) for v in ck["rng"].values())
    stats = read_json(paths.stats)
    assert set(stats["normalisation"]["lo"]) == {"t1n", "t1c", "t2w", "t2f"}
    assert stats["quality_reference"]["t1c"]["head"]["n_cases"] == 3


def test_a_second_training_without_resume_is_refused(ws):
    cfg = b.tiny_synth_config(steps=1, montage_cases=0)
    train_synthesizer(ws, "tiny", "twice", cfg, track=False, progress=False)
    with pytest.raises(SynthesisError, match="--resume"):
        train_synthesizer(ws, "tiny", "twice", cfg, steps=2, track=False, progress=False)
    with pytest.raises(SynthesisError, match="config differs"):
        other = cfg.model_copy(update={"train": cfg.train.model_copy(update={"lr": 0.5})})
        train_synthesizer(ws, "tiny", "twice", other, steps=2, resume=True, track=False, progress=False)
    assert np.isfinite(read_log(model_paths(ws, "twice").log)[-1]["loss"])


def test_auto_resume_continues_the_same_model_and_moves_another_aside(ws):
    cfg = b.tiny_synth_config(steps=2, checkpoint_every=1, montage_cases=0, lr_schedule="constant")
    train_synthesizer(ws, "tiny", "auto", cfg, resume="auto", track=False, progress=False)
    # the pipeline started again with more steps: continue from the last checkpoint
    r = train_synthesizer(ws, "tiny", "auto", cfg, steps=3, resume="auto", track=False, progress=False)
    assert (r.start_step, r.steps) == (2, 3)
    # another config under the same name: the old model is kept aside, a new one starts at step 0
    other = cfg.model_copy(update={"train": cfg.train.model_copy(update={"lr": 0.5})})
    r = train_synthesizer(ws, "tiny", "auto", other, resume="auto", track=False, progress=False)
    assert (r.start_step, r.steps) == (0, 2)
    aside = sorted((ws / "models").glob("auto.replaced-*"))
    assert len(aside) == 1 and [x["step"] for x in read_log(model_paths(ws, aside[0].name).log)] == [1, 2, 3]
    # a cosine schedule started for 2 steps, now asked for 3: a new run, since the decay is shaped by the total
    cos = b.tiny_synth_config(steps=2, checkpoint_every=1, montage_cases=0)
    train_synthesizer(ws, "tiny", "auto-cos", cos, resume="auto", track=False, progress=False)
    r = train_synthesizer(ws, "tiny", "auto-cos", cos, steps=3, resume="auto", track=False, progress=False)
    assert (r.start_step, r.steps) == (0, 3)
    assert len(sorted((ws / "models").glob("auto-cos.replaced-*"))) == 1



def test_a_checkpoint_restores_weights_optimizer_and_generators_and_refuses_another_config(tmp_path):
    paths = model_paths(tmp_path, "unit")
    net = torch.nn.Linear(3, 2)
    ema, opt = copy.deepcopy(net), torch.optim.Adam(net.parameters(), lr=0.1)
    net(torch.ones(1, 3)).sum().backward()
    opt.step()  # an optimizer with state to restore
    gens = {"data": torch.Generator().manual_seed(1), "noise": torch.Generator().manual_seed(2)}
    for step in (1, 2):
        save_checkpoint(paths, step, net, ema, opt, gens, ema_updates=5, config_sha="abc", keep=1)
    assert [s for s, _ in paths.list_checkpoints()] == [2]  # keep=1: the older one is gone
    net2 = torch.nn.Linear(3, 2)
    ema2, opt2 = copy.deepcopy(net2), torch.optim.Adam(net2.parameters(), lr=0.1)
    gens2 = {"data": torch.Generator(), "noise": torch.Generator()}
    step, updates, prior = load_checkpoint(paths.checkpoint(2), "abc", net2, ema2, opt2, gens2)
    assert (step, updates, prior) == (2, 5, None)
    assert all(torch.equal(a, c) for a, c in zip(net.state_dict().values(), net2.state_dict().values(), strict=True))
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    assert all(torch.equal(gens[k].get_state(), gens2[k].get_state()) for k in gens)
    with pytest.raises(SynthesisError, match="belongs to another config"):
        load_checkpoint(paths.checkpoint(2), "other", net2, ema2, opt2, gens2)


def test_only_a_constant_schedule_extends_exactly_to_another_total():
    cos = b.tiny_synth_config(steps=2)
    const = b.tiny_synth_config(steps=2, lr_schedule="constant")
    assert extends_exactly(cos, cos) and extends_exactly(const, const.with_steps(5))
    assert not extends_exactly(cos, cos.with_steps(5))
