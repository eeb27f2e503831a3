"""The ldm networks and schedulers (MONAI): autoencoder, patch discriminator, latent U-Net, and the
mask moved onto the latent grid."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from components.ldm.config import LatentDiffusionConfig, LdmConfig, LdmError
from components.synthesis.data import one_hot
from data_catalog import MODALITIES

N_MODALITIES = len(MODALITIES)


def _seeded(seed: int, build):  # weights from ``seed`` without touching the caller's global RNG
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            return build()
        except ValueError as err:
            raise LdmError(f"network settings rejected by MONAI: {err}") from err


def build_autoencoder(cfg: LdmConfig) -> torch.nn.Module:
    from monai.networks.nets import AutoencoderKL

    a = cfg.autoencoder
    return _seeded(cfg.seed, lambda: AutoencoderKL(
        spatial_dims=3, in_channels=N_MODALITIES, out_channels=N_MODALITIES, channels=a.channels,
        latent_channels=a.latent_channels, num_res_blocks=a.num_res_blocks, norm_num_groups=a.norm_num_groups,
        norm_eps=a.norm_eps, attention_levels=a.attention_levels, with_encoder_nonlocal_attn=a.with_encoder_nonlocal_attn,
        with_decoder_nonlocal_attn=a.with_decoder_nonlocal_attn, include_fc=False))


def build_discriminator(cfg: LdmConfig) -> torch.nn.Module:
    from monai.networks.nets import PatchDiscriminator

    d = cfg.discriminator
    return _seeded(cfg.seed + 1, lambda: PatchDiscriminator(
        spatial_dims=3, num_layers_d=d.num_layers_d, channels=d.channels, in_channels=N_MODALITIES, out_channels=1,
        norm=d.norm))


def build_unet(cfg: LdmConfig, n_condition: int) -> torch.nn.Module:
    """The latent denoiser: noisy latent (latent_channels) + mask fractions (n_condition) in, noise out."""
    from monai.networks.nets import DiffusionModelUNet

    u = cfg.unet
    c = cfg.autoencoder.latent_channels
    return _seeded(cfg.seed + 2, lambda: DiffusionModelUNet(
        spatial_dims=3, in_channels=c + n_condition, out_channels=c, channels=u.channels,
        attention_levels=u.attention_levels, num_head_channels=u.num_head_channels, num_res_blocks=u.num_res_blocks,
        norm_num_groups=u.norm_num_groups, use_flash_attention=u.use_flash_attention, include_fc=False))


def build_scheduler(cfg: LatentDiffusionConfig, kind: str = "ddpm"):
    """``DDPMScheduler`` (training, full-length reference) or ``DDIMScheduler``; latents are not clipped."""
    from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

    kwargs = {"beta_start": cfg.beta_start, "beta_end": cfg.beta_end} if cfg.schedule != "cosine" else {}
    common = dict(num_train_timesteps=cfg.num_train_timesteps, schedule=cfg.schedule, clip_sample=False,
                  prediction_type=cfg.prediction_type, **kwargs)
    if kind == "ddpm":
        return DDPMScheduler(variance_type="fixed_small", **common)
    if kind == "ddim":
        return DDIMScheduler(**common)
    raise LdmError(f"unknown sampler {kind!r}: use 'ddim' or 'ddpm'")


def diffusion_target(scheduler: Any, z: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the U-Net learns to output for ``scheduler.prediction_type``: the noise (Ho et al. 2020, eq. 14),
    v (MONAI's ``get_velocity``) or the clean latent."""
    kind = scheduler.prediction_type
    if kind == "v_prediction":
        return scheduler.get_velocity(z, noise, t)
    return z if kind == "sample" else noise


def latent_condition(labels: torch.Tensor, n_condition: int, factor: int) -> torch.Tensor:
    """(B, X, Y, Z) conditioning labels -> (B, C, X/f, Y/f, Z/f): the share of each label (background,
    head, tumour labels) in each latent voxel's f^3 block, so a tumour smaller than a block still shows."""
    return F.avg_pool3d(one_hot(labels, n_condition), kernel_size=factor, stride=factor)


def count_parameters(net: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in net.parameters()))
