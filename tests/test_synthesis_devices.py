"""Tensors that cross devices in training and sampling, checked without a GPU.

On CUDA, MONAI's ``add_noise`` moves its scheduler's ``alphas_cumprod`` to the data's device after
the first batch, while the timestep draws come from a CPU generator; searching one in the other
failed from the second micro-batch on. PyTorch's ``meta`` device (shapes and dtypes, no data) applies
the same same-device checks as CUDA, so the project's training step run on it takes that path on a
CPU-only machine: the first micro-batch moves the schedule to ``meta``, the next ones draw on it
(before the fix: "Tensor on device meta is not on the expected device cpu!").
"""

from __future__ import annotations

import pytest
import torch

from components.synthesis.config import DiffusionConfig, SynthesisError
from components.synthesis.network import build_network, build_scheduler
from components.synthesis.objective import draw_timesteps, optimizer_step, timestep_weights
from components.synthesis.sampling import make_generator, sample_images
from tests import builders as b

META = torch.device("meta")


@pytest.mark.parametrize("sampling", ["lognormal", "uniform"])
def test_timesteps_and_weights_are_drawn_on_the_device_of_the_schedule(sampling):
    diffusion = DiffusionConfig(num_train_timesteps=100, timestep_sampling=sampling, precondition="edm",
                                loss_weighting="edm")
    alphas = build_scheduler(diffusion).alphas_cumprod
    t_cpu = draw_timesteps(6, alphas, diffusion, torch.Generator().manual_seed(0))
    assert t_cpu.dtype == torch.long and t_cpu.shape == (6,) and t_cpu.device.type == "cpu"
    assert int(t_cpu.min()) >= 0 and int(t_cpu.max()) < 100
    # the schedule elsewhere (as after MONAI's add_noise on a GPU), the draws still from the CPU generator
    t = draw_timesteps(6, alphas.to(META), diffusion, torch.Generator().manual_seed(0))
    assert t.device == META and t.dtype == torch.long and t.shape == (6,)
    w = timestep_weights(alphas.to(META), t_cpu, diffusion)
    assert w.device == META and w.shape == (6,)
    torch.testing.assert_close(timestep_weights(alphas, t_cpu, diffusion),
                               timestep_weights(alphas.double(), t_cpu, diffusion))


def test_the_training_step_runs_again_after_monai_moved_the_schedule():
    cfg = b.tiny_synth_config()  # lognormal timesteps, edm weighting and a prior: every crossing path
    assert cfg.diffusion.timestep_sampling == "lognormal" and cfg.diffusion.prior != "none"
    net = build_network(cfg.network, 5, seed=0, diffusion=cfg.diffusion).to(META)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    from monai.inferers import DiffusionInferer

    inferer = DiffusionInferer(build_scheduler(cfg.diffusion, "ddpm"))
    gen = torch.Generator().manual_seed(0)
    shape = cfg.data.shape

    def batches():  # CPU tensors, as draw_batch gives them
        for _ in range(cfg.train.grad_accum):
            labels = torch.zeros((1, *shape), dtype=torch.long)
            labels[:, 3:13, 3:13, 3:13] = 1
            labels[:, 6:9, 6:9, 6:9] = 2
            yield torch.rand((1, 4, *shape)) * 2 - 1, labels, torch.zeros((1, 4, *shape))

    first = optimizer_step(net, opt, inferer, batches(), cfg, gen, 5, lr=1e-3)
    assert inferer.scheduler.alphas_cumprod.device == META  # what add_noise does with data on a GPU
    second = optimizer_step(net, opt, inferer, batches(), cfg, gen, 5, lr=1e-3)
    assert first.shape == second.shape == (cfg.train.grad_accum,) and second.device == META


def test_the_training_step_autocasts_to_bfloat16_where_told():
    """``train.amp`` autocasts on a GPU only; ``amp=True`` turns the same bfloat16 autocast on for the
    CPU (what bench/memory.py measures), ``amp=False`` keeps float32 even with ``train.amp``."""
    from monai.inferers import DiffusionInferer

    cfg = b.tiny_synth_config()
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"amp": True, "grad_accum": 1})})
    net = build_network(cfg.network, 5, seed=0, diffusion=cfg.diffusion)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    inferer = DiffusionInferer(build_scheduler(cfg.diffusion, "ddpm"))
    seen: list[torch.dtype] = []
    conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv3d))
    conv.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    shape = cfg.data.shape
    batch = [(torch.rand((1, 4, *shape)) * 2 - 1, torch.zeros((1, *shape), dtype=torch.long), torch.zeros((1, 4, *shape)))]
    for amp, dtype in ((None, torch.float32), (True, torch.bfloat16), (False, torch.float32)):
        seen.clear()
        loss = optimizer_step(net, opt, inferer, batch, cfg, torch.Generator().manual_seed(0), 5, lr=1e-3, amp=amp)
        assert seen == [dtype] and torch.isfinite(loss).all()
        assert all(p.dtype == torch.float32 for p in net.parameters())


def test_the_sampler_refuses_generators_on_another_device():
    cfg = b.tiny_synth_config()
    net = build_network(cfg.network, 5, seed=0).to(META)
    labels = torch.zeros((1, *cfg.data.shape), dtype=torch.long)
    with pytest.raises(SynthesisError, match="make_generator"):
        sample_images(net, labels, 5, DiffusionConfig(num_train_timesteps=20), [make_generator(0)], steps=2,
                      progress=False)
