"""The full-scale ``brats-gpu`` recipe on a CPU: its real network and one training and one sampling step.

The profile's own network (channels, residual blocks, attention levels, heads, groups, flash
attention, conditioning channels of the brats2023 masks plus the prior's when the profile has one),
its diffusion objective and train settings (batch size, grad_accum, clipping, learning-rate warm-up)
and its sample block, only on a reduced grid: the smallest whose every side the network's
downsampling divides, two sides twice that (X = Y > Z, as 192 x 192 x 144). So a config or shape fault in the full-scale path
shows up without a GPU. Not covered here: bfloat16 autocast and memory, which only a GPU shows.

About 10 s on 2 idle CPU cores, 45 s with them shared (the network has 57.6 M parameters).
"""

from __future__ import annotations

import math

import pytest
import torch

from components.synthesis.config import SynthesizeConfig, SynthesizerConfig, load_profile
from components.synthesis.data import n_condition_channels
from components.synthesis.network import build_network, build_scheduler, count_parameters, place_network, prior_channels
from components.synthesis.objective import optimizer_step
from components.synthesis.sampling import make_generator, resolve_sampling, sample_images
from components.synthesis.training import learning_rate
from data_catalog import load_label_scheme

pytestmark = pytest.mark.slow


def _reduced(profile: str) -> SynthesizerConfig:
    cfg = load_profile(profile)
    factor = 2 ** (len(cfg.network.channels) - 1)
    d = cfg.model_dump(mode="json")
    d["data"].update(shape=[2 * factor, 2 * factor, factor], train_crop=None)  # 192x192x144 -> 32x32x16
    d["train"]["device"] = "cpu"
    return SynthesizerConfig.model_validate(d)  # the profile's validators, on the reduced grid


def test_the_brats_gpu_network_trains_and_samples_a_step_on_the_cpu():
    full = load_profile("brats-gpu")
    cfg = _reduced("brats-gpu")
    assert cfg.network == full.network and cfg.diffusion == full.diffusion and cfg.sample == full.sample
    scheme = load_label_scheme("brats2023")
    n_cond = n_condition_channels(scheme)
    n_prior = prior_channels(cfg.diffusion)
    device = torch.device("cpu")
    net = place_network(build_network(cfg.network, n_cond, seed=cfg.seed, diffusion=cfg.diffusion), device)
    if n_prior == 0 and cfg.diffusion.precondition == "none":  # the size documented in the profile
        assert count_parameters(net) == 57_562_564 + 1_728 * (n_cond - 4)

    shape = cfg.data.shape
    gen = torch.Generator().manual_seed(0)
    B = cfg.train.batch_size

    def labels(n: int) -> torch.Tensor:
        lab = torch.zeros((n, *shape), dtype=torch.long)
        lab[:, 2:-2, 2:-2, 2:-2] = 1                       # head
        for c in range(2, n_cond):                           # one block per tumour label
            lab[:, 4 + 3 * (c - 2):7 + 3 * (c - 2), 5:9, 5:9] = c
        return lab

    prior = torch.rand((n_prior, *shape), generator=gen) * 2 - 1 if n_prior else None
    batches = [(torch.rand((B, 4, *shape), generator=gen) * 2 - 1, labels(B),
                None if prior is None else prior[None].expand(B, -1, -1, -1, -1).clone())
               for _ in range(cfg.train.grad_accum)]
    from monai.inferers import DiffusionInferer

    inferer = DiffusionInferer(build_scheduler(cfg.diffusion, "ddpm"))
    opt = torch.optim.Adam(net.parameters(), lr=cfg.train.lr)
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    losses = optimizer_step(net, opt, inferer, batches, cfg, gen, n_cond, learning_rate(cfg.train, 1))
    assert losses.shape == (cfg.train.grad_accum,)
    assert all(math.isfinite(v) and v > 0 for v in losses.tolist())
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert len(grads) == len(list(net.parameters())) and all(torch.isfinite(g).all() for g in grads)
    assert any(not torch.equal(before[k], v) for k, v in net.state_dict().items())  # the step moved the weights

    run = resolve_sampling(SynthesizeConfig(steps=1), cfg)  # the profile's sampler, eta and batch; one step
    n = run.batch
    net.eval()
    x = sample_images(net, labels(n), n_cond, cfg.diffusion, [make_generator(i, device) for i in range(n)],
                      sampler=run.sampler, steps=run.steps, eta=run.eta, amp=cfg.train.amp, progress=False,
                      prior=prior)
    assert x.shape == (n, 4, *shape) and x.dtype == torch.float32
    assert torch.isfinite(x).all() and x.min() >= -1 and x.max() <= 1
