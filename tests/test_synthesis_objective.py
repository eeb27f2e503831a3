"""The diffusion objective: the loss falls on a fixed batch, timestep draws, per-sample weights."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from components.synthesis.data import n_condition_channels
from components.synthesis.network import build_network, build_scheduler
from components.synthesis.objective import draw_timesteps, timestep_weights, training_loss
from data_catalog import load_label_scheme
from tests import builders as b

pytestmark = pytest.mark.usefixtures("one_torch_thread")


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


def test_lognormal_timesteps_stay_in_range_and_follow_the_generator():
    cfg = b.tiny_synth_config()
    a = build_scheduler(cfg.diffusion).alphas_cumprod
    t1 = draw_timesteps(500, a, cfg.diffusion, torch.Generator().manual_seed(3))
    t2 = draw_timesteps(500, a, cfg.diffusion, torch.Generator().manual_seed(3))
    assert torch.equal(t1, t2) and t1.dtype == torch.long
    assert 0 <= int(t1.min()) and int(t1.max()) < cfg.diffusion.num_train_timesteps
    # EDM's median noise level exp(-1.2) ~ 0.3 sits in the lower half of a cosine schedule
    assert float(t1.float().median()) < cfg.diffusion.num_train_timesteps / 2


def test_min_snr_weights_cap_the_signal_to_noise_ratio_and_none_gives_ones():
    # SNR_t = a / (1 - a): 9, 1 and 1/9 here; min-SNR with gamma 5 weighs min(SNR, 5) / SNR = 5/9, 1, 1.
    a = torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 0])
    w = timestep_weights(a, t, SimpleNamespace(loss_weighting="min_snr", min_snr_gamma=5.0))
    torch.testing.assert_close(w, torch.tensor([5 / 9, 1.0, 1.0, 5 / 9]))
    ones = timestep_weights(a, t, SimpleNamespace(loss_weighting="none"))
    assert ones.dtype == torch.float32 and torch.equal(ones, torch.ones(4))
