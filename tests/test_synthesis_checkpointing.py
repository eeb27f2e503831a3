"""Gradient checkpointing of the U-Net blocks: same outputs and gradients, recomputed in backward."""

from __future__ import annotations

import copy

import pytest
import torch

from components.synthesis.network import build_network
from tests import builders as b

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _jitter(net):
    """MONAI zero-initialises the output convolution: give every weight a seeded nudge so the output
    and every gradient are non-zero (the same nudge for both networks)."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return net


def _pair(precondition: bool):
    cfg = b.tiny_synth_config()
    diffusion = cfg.diffusion if precondition else None
    on = cfg.network.model_copy(update={"gradient_checkpointing": True})
    return (_jitter(build_network(cfg.network, 5, seed=0, diffusion=diffusion)),
            _jitter(build_network(on, 5, seed=0, diffusion=diffusion)))


def _inputs(net):
    g = torch.Generator().manual_seed(0)
    n_in = 4 + 5 + int(getattr(net, "n_prior", 0))
    return torch.randn((2, n_in, 16, 16, 16), generator=g), torch.tensor([3, 71])


def _unet(net):
    return getattr(net, "unet", net)


@pytest.mark.parametrize("precondition", [False, True])
def test_outputs_and_gradients_are_the_same(precondition):
    plain, ckpt = _pair(precondition)
    assert plain.state_dict().keys() == ckpt.state_dict().keys()  # checkpoints and ema.pt load either way
    for a, c in zip(plain.state_dict().values(), ckpt.state_dict().values(), strict=True):
        assert torch.equal(a, c)
    x, t = _inputs(plain)
    target = torch.randn((2, 4, 16, 16, 16), generator=torch.Generator().manual_seed(1))
    outs = []
    for net in (plain, ckpt):
        net.train()
        out = net(x, timesteps=t)
        torch.nn.functional.mse_loss(out, target).backward()
        outs.append((out.detach(), [p.grad.clone() for p in net.parameters()]))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-5, atol=1e-6)
    assert len(outs[0][1]) == len(outs[1][1]) > 10 and all(float(g.abs().max()) > 0 for g in outs[0][1])
    for g0, g1 in zip(outs[0][1], outs[1][1], strict=True):
        torch.testing.assert_close(g1, g0, rtol=1e-4, atol=1e-6)


def test_residual_blocks_are_recomputed_in_backward_only_when_training():
    plain, ckpt = _pair(False)
    x, t = _inputs(plain)
    calls = []
    for net, forwards_in_training in ((plain, 1), (ckpt, 2)):
        calls.clear()
        for block in (*_unet(net).down_blocks, _unet(net).middle_block, *_unet(net).up_blocks):
            first = block.resnets[0] if hasattr(block, "resnets") else block.resnet_1  # the middle block has no list
            # a pre-hook on its first layer (the recomputation calls the residual block's own forward, which
            # calls its layers): it fires again when that residual block is recomputed in the backward pass
            first.norm1.register_forward_pre_hook(lambda *_: calls.append(1))
        n_blocks = len(_unet(net).down_blocks) + 1 + len(_unet(net).up_blocks)
        net.train()
        net(x, timesteps=t).square().mean().backward()
        assert len(calls) == forwards_in_training * n_blocks
        calls.clear()
        with torch.no_grad():  # sampling: nothing to recompute
            net.eval()(x, timesteps=t)
        assert len(calls) == n_blocks


def test_a_deep_copy_checkpoints_its_own_weights():
    """The EMA is a deepcopy of the network: its blocks must run with the copy's weights."""
    _, ckpt = _pair(False)
    ema = copy.deepcopy(ckpt)
    with torch.no_grad():
        for p in ema.parameters():
            p.mul_(0.5)
    x, t = _inputs(ckpt)
    ckpt.train()
    ema.train()
    assert not torch.allclose(ema(x, timesteps=t), ckpt(x, timesteps=t))
    block = _unet(ema).down_blocks[0].resnets[0]
    assert block.forward.__self__ is block


def test_the_option_does_not_change_the_model_digest():
    cfg = b.tiny_synth_config()
    on = cfg.model_copy(update={"network": cfg.network.model_copy(update={"gradient_checkpointing": True})})
    assert on.digest(ignore_steps=True) == cfg.digest(ignore_steps=True)
    assert "gradient_checkpointing" not in cfg.network.model_fields_set
