"""Synthesizer training: the loss falls, checkpoints resume exactly, the train split only is used."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.synthesis.config import DiffusionConfig, SynthesisError
from components.synthesis.data import n_condition_channels
from components.synthesis.network import build_network, build_scheduler
from components.synthesis.store import model_paths, read_json
from components.synthesis.training import read_log, timestep_weights, train_synthesizer, training_loss
from data_catalog import load_label_scheme, open_dataset
from tests import builders as b


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with b.torch_threads(1):
        yield


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    ws = tmp_path_factory.mktemp("synth-train")
    b.write_catalog_dataset(ws, "tiny", n_cases=4)
    return ws


def test_loss_falls_on_a_fixed_batch():
    from monai.inferers import DiffusionInferer

    cfg = b.tiny_synth_config()
    scheme = load_label_scheme("brats2023")
    n_cond = n_condition_channels(scheme)
    net = build_network(cfg.network, n_cond, seed=0, diffusion=cfg.diffusion)
    scheduler = build_scheduler(cfg.diffusion)
    inferer = DiffusionInferer(scheduler)
    g = torch.Generator().manual_seed(0)
    # a fixed batch whose four modalities are a function of the mask (what the synthesizer must learn)
    labels = torch.randint(0, n_cond, (2, 16, 16, 16), generator=g)
    contrast = torch.rand((n_cond, 4), generator=g) * 2 - 1
    image = contrast[labels].permute(0, 4, 1, 2, 3).contiguous()
    noise = torch.randn(image.shape, generator=g)
    prior = image.mean(0, keepdim=True).expand_as(image).contiguous()  # the profile's prior channels
    t = torch.tensor([10, 60])
    w = timestep_weights(scheduler.alphas_cumprod, t, cfg.diffusion)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(50):
        opt.zero_grad()
        loss = training_loss(net, inferer, image, labels, noise, t, n_cond, "mse", weights=w, prior=prior)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_resume_gives_the_losses_and_weights_of_an_uninterrupted_run(ws, monkeypatch):
    import components.synthesis.training as training

    cfg = b.tiny_synth_config(steps=6, checkpoint_every=2, montage_cases=0)
    train_synthesizer(ws, "tiny", "straight", cfg, track=False, progress=False)

    real_save = training.save_checkpoint

    def save_then_die(paths, step, *args, **kwargs):  # the process is killed right after step 4's checkpoint
        real_save(paths, step, *args, **kwargs)
        if step == 4:
            raise KeyboardInterrupt

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


def test_edm_preconditioned_network_starts_as_the_linear_denoiser():
    from components.synthesis.network import EDMPreconditioned, edm_coefficients

    cfg = b.tiny_synth_config()
    diffusion = cfg.diffusion.model_copy(update={"prior": "none"})
    net = build_network(cfg.network, 5, seed=0, diffusion=diffusion)
    assert isinstance(net, EDMPreconditioned)
    a = build_scheduler(diffusion).alphas_cumprod
    c_in, c_skip, c_out = edm_coefficients(a.double(), diffusion.sigma_data)
    # eps = (linear estimate from x_t) + (what it leaves): the two variances add up to one
    torch.testing.assert_close(c_skip**2 * (a.double() * diffusion.sigma_data**2 + 1 - a.double()) + c_out**2,
                               torch.ones_like(c_out))
    x = torch.randn(2, 9, 16, 16, 16)
    t = torch.tensor([5, 80])
    with torch.no_grad():
        out = net(x, timesteps=t)  # the U-Net's output convolution starts at zero
    torch.testing.assert_close(out, c_skip[t].float().view(-1, 1, 1, 1, 1) * x[:, :4])


def test_a_prior_centres_the_untrained_denoiser_on_the_prior():
    cfg = b.tiny_synth_config()
    assert cfg.diffusion.prior == "healthy_mean"
    net = build_network(cfg.network, 5, seed=0, diffusion=cfg.diffusion)
    assert net.n_prior == 4 and net.unet.conv_in.conv.in_channels == 4 + 5 + 4
    a = build_scheduler(cfg.diffusion).alphas_cumprod
    g = torch.Generator().manual_seed(0)
    m = torch.rand((2, 4, 16, 16, 16), generator=g) * 2 - 1
    mask = torch.nn.functional.one_hot(torch.randint(0, 5, (2, 16, 16, 16), generator=g), 5).permute(0, 4, 1, 2, 3).float()
    t = torch.tensor([5, 80])
    at = a[t].view(-1, 1, 1, 1, 1)
    with torch.no_grad():
        # x_t = sqrt(a) m: no residual and no noise, so the x_0 estimate is the prior itself at any noise level
        x_t = at.sqrt() * m
        eps = net(torch.cat([x_t, mask, m], 1), timesteps=t)
        torch.testing.assert_close((x_t - (1 - at).sqrt() * eps) / at.sqrt(), m)
        # the same x_t without the prior's pull: another estimate (the network reads the prior channels)
        eps0 = net(torch.cat([x_t, mask, torch.zeros_like(m)], 1), timesteps=t)
    assert not torch.allclose(eps0, eps)
    with pytest.raises(ValueError, match="needs precondition 'edm'"):
        DiffusionConfig.model_validate({**cfg.diffusion.model_dump(), "precondition": "none", "loss_weighting": "none"})


def test_the_prior_is_the_healthy_tissue_mean_and_travels_with_the_model(ws):
    from components.synthesis.data import HEAD, healthy_mean_prior, prepare_training_set
    from components.synthesis.store import load_trained_model

    cfg = b.tiny_synth_config(steps=1, montage_cases=0)
    train_synthesizer(ws, "tiny", "prior", cfg, track=False, progress=False)
    ds = open_dataset(ws, "tiny")
    paths = model_paths(ws, "prior")
    ts = prepare_training_set(ds, ds.ok_cases("train"), cfg.data, ds.label_scheme, paths.cache, progress=False)
    imgs = np.stack([ts.get(i)[0] for i in range(len(ts))])
    labs = np.stack([ts.get(i)[1] for i in range(len(ts))])
    prior = healthy_mean_prior(ts)
    assert prior.shape == imgs.shape[1:] and prior.dtype == np.float32
    healthy = labs == HEAD
    both = healthy.all(0)  # healthy in every case: the plain mean
    np.testing.assert_allclose(prior[:, both], imgs[:, :, both].mean(0), atol=1e-5)
    tumour_in_one = (labs > HEAD).any(0) & (healthy.sum(0) == len(ts) - 1)
    assert tumour_in_one.any()  # the tumour voxels of one case are left out of the mean there
    k = np.argmax(labs > HEAD, axis=0)
    for v in zip(*np.nonzero(tumour_in_one), strict=True):
        others = [i for i in range(len(ts)) if i != k[v]]
        np.testing.assert_allclose(prior[(slice(None), *v)], imgs[others][(slice(None), slice(None), *v)].mean(0), atol=1e-5)
    nowhere = (labs == 0).all(0)  # outside every head: the background value
    assert nowhere.any() and np.all(prior[:, nowhere] == -1.0)
    # saved with the weights (the model digest covers it) and handed to the sampler by the loader
    tm = load_trained_model(ws, "prior")
    np.testing.assert_array_equal(tm.prior.numpy(), prior)
    assert torch.equal(torch.load(paths.checkpoint(1), weights_only=True)["prior"], tm.prior)


def test_a_drawn_prior_is_flipped_and_cropped_with_its_image(ws):
    from components.synthesis.data import draw_batch, prepare_training_set

    cfg = b.tiny_synth_config()
    data = cfg.data.model_copy(update={"train_crop": (8, 8, 8), "flip_axes": (0, 1), "flip_prob": 0.5})
    ds = open_dataset(ws, "tiny")
    one = ds.ok_cases("train").head(1)
    ts = prepare_training_set(ds, one, data, ds.label_scheme, ws / "prior-draw-cache", progress=False)
    image = ts.get(0)[0]
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    img, lab, pri = draw_batch(ts, 16, data, g1, prior=image)  # a prior equal to the case: every draw must match
    assert pri is not None and pri.shape == img.shape == (16, 4, 8, 8, 8)
    assert torch.equal(pri, img)
    assert len({tuple(p.flatten()[:64].tolist()) for p in pri}) > 1  # the draws differ (crops, flips)
    img2, lab2, none = draw_batch(ts, 16, data, g2)  # without a prior: the same draws
    assert none is None and torch.equal(img2, img) and torch.equal(lab2, lab)


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


def test_only_train_split_cases_are_used(ws):
    cfg = b.tiny_synth_config(steps=1, montage_cases=0)
    train_synthesizer(ws, "tiny", "split", cfg, track=False, progress=False)
    ds = open_dataset(ws, "tiny")
    card = read_json(model_paths(ws, "split").config)
    assert card["train_cases"] == ds.ok_cases("train")["case_id"].tolist()
    assert len(card["train_cases"]) == 3 and not set(card["train_cases"]) & set(ds.ok_cases("test")["case_id"])


def test_a_second_training_without_resume_is_refused(ws):
    cfg = b.tiny_synth_config(steps=1, montage_cases=0)
    train_synthesizer(ws, "tiny", "twice", cfg, track=False, progress=False)
    with pytest.raises(SynthesisError, match="--resume"):
        train_synthesizer(ws, "tiny", "twice", cfg, steps=2, track=False, progress=False)
    with pytest.raises(SynthesisError, match="config differs"):
        other = cfg.model_copy(update={"train": cfg.train.model_copy(update={"lr": 0.5})})
        train_synthesizer(ws, "tiny", "twice", other, steps=2, resume=True, track=False, progress=False)
    assert np.isfinite(read_log(model_paths(ws, "twice").log)[-1]["loss"])


def test_lognormal_timesteps_stay_in_range_and_follow_the_generator():
    from components.synthesis.training import draw_timesteps

    cfg = b.tiny_synth_config()
    a = build_scheduler(cfg.diffusion).alphas_cumprod
    t1 = draw_timesteps(500, a, cfg.diffusion, torch.Generator().manual_seed(3))
    t2 = draw_timesteps(500, a, cfg.diffusion, torch.Generator().manual_seed(3))
    assert torch.equal(t1, t2) and t1.dtype == torch.long
    assert 0 <= int(t1.min()) and int(t1.max()) < cfg.diffusion.num_train_timesteps
    # EDM's median noise level exp(-1.2) ~ 0.3 sits in the lower half of a cosine schedule
    assert float(t1.float().median()) < cfg.diffusion.num_train_timesteps / 2


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
