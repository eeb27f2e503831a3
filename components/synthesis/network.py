"""Network and scheduler factories (MONAI generative): the denoiser and the noise schedule."""

from __future__ import annotations

import torch

from components.synthesis.config import DiffusionConfig, NetworkConfig, SynthesisError
from data_catalog import MODALITIES

N_MODALITIES = len(MODALITIES)


def build_network(cfg: NetworkConfig, n_condition: int, seed: int = 0) -> torch.nn.Module:
    """``DiffusionModelUNet`` (3-D) taking the noisy 4-modality image concatenated with the one-hot
    mask (4 + C channels) and predicting the noise of the 4 modalities (Med-DDPM's conditioning).

    Weights are initialised from ``seed`` without touching the caller's global RNG state.
    """
    from monai.networks.nets import DiffusionModelUNet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            return DiffusionModelUNet(
                spatial_dims=3, in_channels=N_MODALITIES + n_condition, out_channels=N_MODALITIES,
                channels=cfg.channels, num_res_blocks=cfg.num_res_blocks, attention_levels=cfg.attention_levels,
                num_head_channels=cfg.num_head_channels, norm_num_groups=cfg.norm_num_groups,
                use_flash_attention=cfg.use_flash_attention,
            )
        except ValueError as err:
            raise SynthesisError(f"network settings rejected by MONAI's DiffusionModelUNet: {err}") from err


def build_scheduler(cfg: DiffusionConfig, kind: str = "ddpm"):
    """MONAI ``DDPMScheduler`` (training and the full-length reference) or ``DDIMScheduler``."""
    from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

    kwargs = {"beta_start": cfg.beta_start, "beta_end": cfg.beta_end} if cfg.schedule != "cosine" else {}
    common = dict(num_train_timesteps=cfg.num_train_timesteps, schedule=cfg.schedule, clip_sample=cfg.clip_sample,
                  prediction_type=cfg.prediction_type, **kwargs)
    if kind == "ddpm":
        return DDPMScheduler(variance_type="fixed_small", **common)
    if kind == "ddim":
        return DDIMScheduler(**common)
    raise SynthesisError(f"unknown sampler {kind!r}: use 'ddim' or 'ddpm'")


def count_parameters(net: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in net.parameters()))


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SynthesisError("device 'cuda' requested but no CUDA device is available; use --device auto or cpu")
    return torch.device(device)
