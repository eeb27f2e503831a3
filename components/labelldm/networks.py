"""The label model's networks (MONAI): the label autoencoder, the unconditional latent U-Net, the ControlNet.

Classes of a label map (``components.synthesis.data.condition_labels``): 0 background, 1 head, then one
per tumour label of the scheme, by rank; the autoencoder takes their one-hot and returns one logit each.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from components.labelldm.config import LabelLdmConfig, LabelLdmError
from components.ldm.networks import build_scheduler, count_parameters, diffusion_target

__all__ = ["build_autoencoder", "build_controlnet", "build_scheduler", "build_unet", "count_parameters",
           "diffusion_target", "one_hot", "kl_loss"]

_INIT_LOCK = threading.Lock()


def _seeded(seed: int, build: Callable[[], Any]) -> Any:
    """Weights drawn from ``seed``: MONAI's layers initialise from the process-wide generator, so it is forked
    for the block (one network at a time: configurations may build theirs on threads)."""
    with _INIT_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            return build()
        except ValueError as err:
            raise LabelLdmError(f"network settings rejected by MONAI: {err}") from err


def build_autoencoder(cfg: LabelLdmConfig, n_classes: int) -> torch.nn.Module:
    """``AutoencoderKL``: one-hot label map (n_classes channels) in, class logits out."""
    from monai.networks.nets import AutoencoderKL

    a = cfg.autoencoder
    return _seeded(cfg.seed, lambda: AutoencoderKL(
        spatial_dims=3, in_channels=n_classes, out_channels=n_classes, channels=a.channels,
        latent_channels=a.latent_channels, num_res_blocks=a.num_res_blocks, norm_num_groups=a.norm_num_groups,
        attention_levels=a.attention_levels, with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False,
        include_fc=False))


def _unet_kwargs(cfg: LabelLdmConfig) -> dict[str, Any]:
    u = cfg.unet
    return dict(spatial_dims=3, in_channels=cfg.autoencoder.latent_channels, channels=u.channels,
                attention_levels=u.attention_levels, num_head_channels=u.num_head_channels,
                num_res_blocks=u.num_res_blocks, norm_num_groups=u.norm_num_groups,
                use_flash_attention=u.use_flash_attention, include_fc=False)


def build_unet(cfg: LabelLdmConfig) -> torch.nn.Module:
    """The unconditional latent denoiser: noisy scaled latent in, noise out."""
    from monai.networks.nets import DiffusionModelUNet

    return _seeded(cfg.seed + 1, lambda: DiffusionModelUNet(out_channels=cfg.autoencoder.latent_channels,
                                                            **_unet_kwargs(cfg)))


def build_controlnet(cfg: LabelLdmConfig, unet: torch.nn.Module, n_modalities: int) -> torch.nn.Module:
    """MONAI ``ControlNet`` matching ``unet``, its encoder initialised from the U-Net's weights (Zhang et al.
    2023, §3.2: the trainable copy starts as the locked model; the zero convolutions make it a no-op at first)."""
    from monai.networks.nets import ControlNet

    c = cfg.segmenter.controlnet
    net = _seeded(cfg.seed + 2, lambda: ControlNet(
        conditioning_embedding_in_channels=n_modalities, conditioning_embedding_num_channels=c.embedding_channels,
        **_unet_kwargs(cfg)))
    net.load_state_dict(unet.state_dict(), strict=False)  # the shared encoder blocks; the rest keeps its init
    return net


def one_hot(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(B, X, Y, Z) integer class map -> (B, C, X, Y, Z) float one-hot."""
    return F.one_hot(labels.long(), n_classes).permute(0, 4, 1, 2, 3).float()


def kl_loss(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma) || N(0, 1)) summed over the latent voxels, mean over the batch."""
    kl = 0.5 * torch.sum(z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2)) - 1, dim=[1, 2, 3, 4])
    return kl.mean()
