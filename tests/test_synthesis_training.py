"""Synthesizer training: the preconditioned network and its prior, drawn batches, the train split only,
a grid too small for the heads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.synthesis.config import DiffusionConfig, SynthesisError
from components.synthesis.network import build_network, build_scheduler
from components.synthesis.store import model_paths, read_json
from components.synthesis.training import train_synthesizer
from data_catalog import open_dataset
from tests import builders as b

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ws(tiny_catalog_ws):
    return tiny_catalog_ws


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


def test_only_train_split_cases_are_used(ws):
    cfg = b.tiny_synth_config(steps=1, montage_cases=0)
    train_synthesizer(ws, "tiny", "split", cfg, track=False, progress=False)
    ds = open_dataset(ws, "tiny")
    card = read_json(model_paths(ws, "split").config)
    assert card["train_cases"] == ds.ok_cases("train")["case_id"].tolist()
    assert len(card["train_cases"]) == 3 and not set(card["train_cases"]) & set(ds.ok_cases("test")["case_id"])


def test_a_grid_too_small_for_the_heads_is_refused_before_the_first_step(ws):
    cfg = b.tiny_synth_config(steps=2, montage_cases=0)
    # at 0.5 mm the heads (about 22 x 18 x 20 mm) span more voxels than the tiny grid's 16 per axis
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"spacing": (0.5, 0.5, 0.5)})})
    with pytest.raises(SynthesisError, match=r"data\.shape \[16, 16, 16\] at \[0\.5, 0\.5, 0\.5\] mm.*would need at "
                       r"least \[\d+, \d+, \d+\] voxels") as err:
        train_synthesizer(ws, "tiny", "small-grid", cfg, track=False, progress=False)
    need = [int(v) for v in str(err.value).split("at least [")[1].split("]")[0].split(", ")]
    assert all(n > 16 for n in need)
    assert not model_paths(ws, "small-grid").list_checkpoints()
