"""The 3-D diffusion U-Net of sbldm over the stacked slice latents, conditioned on tumour features.

MONAI's ``DiffusionModelUNet`` takes classes, not a feature vector, and its res-blocks only add the time
embedding; it is extended minimally: the class-embedding table is replaced by an identity so the U-Net
adds our feature embedding (an MLP of the normalised features, or the learnt null embedding) to its time
embedding itself, and each res-block's projection of that embedding is doubled to a per-channel scale and
shift applied after its second GroupNorm (scale-shift normalisation as in Dhariwal & Nichol 2021).
"""

from __future__ import annotations

import torch
from monai.networks.nets import DiffusionModelUNet
from monai.networks.nets.diffusion_model_unet import DiffusionUNetResnetBlock
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from torch import nn

from components.sbldm.config import DiffusionConfig, UNetConfig


class ScaleShiftResnetBlock(DiffusionUNetResnetBlock):
    """MONAI's res-block with ``h = norm2(h) * (1 + scale) + shift`` in place of ``h + temb`` before norm2."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.nonlinearity(self.norm1(x))
        if self.upsample is not None:
            x, h = self.upsample(x), self.upsample(h)
        elif self.downsample is not None:
            x, h = self.downsample(x), self.downsample(h)
        h = self.conv1(h)
        scale, shift = self.time_emb_proj(self.nonlinearity(emb)).chunk(2, dim=1)
        view = (slice(None), slice(None), *([None] * (h.ndim - 2)))
        h = self.norm2(h) * (1.0 + scale[view]) + shift[view]
        h = self.conv2(self.nonlinearity(h))
        return self.skip_connection(x) + h


class FeatureConditionedUNet(nn.Module):
    def __init__(self, cfg: UNetConfig, latent_channels: int, n_features: int):
        super().__init__()
        self.n_features = n_features
        self.unet = DiffusionModelUNet(
            spatial_dims=3, in_channels=latent_channels, out_channels=latent_channels, channels=cfg.channels,
            attention_levels=cfg.attention_levels, num_res_blocks=cfg.num_res_blocks,
            num_head_channels=cfg.num_head_channels, norm_num_groups=cfg.norm_num_groups, num_class_embeds=1)
        emb_dim = cfg.channels[0] * 4  # MONAI's time-embedding width
        self.unet.class_embedding = nn.Identity()  # "class_labels" is our embedding, added to the time embedding
        for block in self.unet.modules():
            if type(block) is DiffusionUNetResnetBlock:
                block.time_emb_proj = nn.Linear(emb_dim, 2 * block.out_channels)
                block.__class__ = ScaleShiftResnetBlock
        self.feature_mlp = nn.Sequential(nn.Linear(n_features, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.null_embedding = nn.Parameter(torch.randn(emb_dim) * 0.02)

    def embed(self, features: torch.Tensor | None, drop: torch.Tensor | None = None, batch: int = 1) -> torch.Tensor:
        """Condition embedding (B, E): the features' MLP, the null embedding where ``drop`` (or for no features)."""
        if features is None:
            return self.null_embedding[None].expand(batch, -1)
        emb = self.feature_mlp(features.float())
        if drop is not None:
            emb = torch.where(drop[:, None], self.null_embedding[None].to(emb.dtype), emb)
        return emb

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, features: torch.Tensor | None = None,
                drop: torch.Tensor | None = None) -> torch.Tensor:
        return self.unet(x, timesteps=timesteps, class_labels=self.embed(features, drop, x.shape[0]))


def guided_output(unet: FeatureConditionedUNet, x: torch.Tensor, t: torch.Tensor, features: torch.Tensor | None,
                   guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance on the network output (epsilon or v, both linear in the score):
    out_null + s (out_features - out_null); s = 0 is the unconditional model."""
    if guidance_scale == 0.0 or features is None:
        return unet(x, t, None)
    cond = unet(x, t, features)
    if guidance_scale == 1.0:
        return cond
    uncond = unet(x, t, None)
    return uncond + guidance_scale * (cond - uncond)


def build_unet(cfg: UNetConfig, latent_channels: int, n_features: int) -> FeatureConditionedUNet:
    return FeatureConditionedUNet(cfg, latent_channels, n_features)


def build_scheduler(cfg: DiffusionConfig, sampler: str = "ddpm") -> DDPMScheduler | DDIMScheduler:
    kw = {"num_train_timesteps": cfg.num_train_timesteps, "schedule": cfg.schedule, "prediction_type": cfg.prediction_type}
    if cfg.schedule != "cosine":
        kw.update(beta_start=cfg.beta_start, beta_end=cfg.beta_end)
    if sampler == "ddim":
        return DDIMScheduler(**kw, clip_sample=False)
    return DDPMScheduler(**kw, clip_sample=False)


@torch.no_grad()
def ddim_sample(unet: FeatureConditionedUNet, features: torch.Tensor | None, shape: tuple[int, ...],
                latent_channels: int, diffusion: DiffusionConfig, generators: list[torch.Generator], steps: int,
                guidance_scale: float, amp: bool = True, progress: bool | None = None) -> torch.Tensor:
    """Deterministic DDIM (eta 0) from one seeded initial noise per volume -> scaled latents (B, L, *shape)."""
    from components.progress import tqdm

    device = next(unet.parameters()).device
    z = torch.stack([torch.randn((latent_channels, *shape), generator=g, device=g.device).to(device)
                     for g in generators])
    sched = build_scheduler(diffusion, "ddim")
    sched.set_timesteps(steps)
    feats = None if features is None else features.to(device)
    use_amp = amp and device.type == "cuda"
    unet.eval()
    for t in tqdm(sched.timesteps.tolist(), desc=f"ddim {steps} steps", unit="step", leave=False,
                  disable=None if progress is None else not progress):
        tt = torch.full((z.shape[0],), int(t), device=device, dtype=torch.long)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            out = guided_output(unet, z, tt, feats, guidance_scale).float()
        z, _ = sched.step(out, int(t), z, eta=0.0)
    return z
