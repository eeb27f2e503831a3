"""Sampling the label model: new label maps (mask source) and MRI-conditioned samples (segmenter).

The loop is MONAI's latent diffusion sampling written out (as ``components.ldm.sampling`` does), because
MONAI's ``ControlNetLatentDiffusionInferer.sample`` resizes the ControlNet's conditioning to the latent
grid (nearest neighbour), where this ControlNet's embedding brings the MRIs down with learnt strided
convolutions, and its loop takes no ``torch.Generator`` per volume. DDIM (Song et al. 2021, eq. 12) with
eta 0 is deterministic given the initial noise, which comes from one generator per volume: a seed fixes a
sample whatever else is in the batch. The final latent is decoded as ``decode(z / scale_factor)``.
"""

from __future__ import annotations

import numpy as np
import torch

from components.labelldm.networks import build_scheduler
from components.labelldm.store import LabelModel


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=torch.device(device)).manual_seed(int(seed))


@torch.no_grad()
def sample_latents(model: LabelModel, generators: list[torch.Generator], steps: int, eta: float = 0.0,
                   cond: torch.Tensor | None = None) -> torch.Tensor:
    """B scaled latents (B, C, *latent grid), one per generator; with ``cond`` (B, 4, *model grid: normalised
    MRIs) the model's ControlNet steers every step."""
    cfg = model.config
    device = model.device
    if cond is not None and model.controlnet is None:
        raise ValueError("sample_latents: conditioning MRIs given, but the label model was loaded without its ControlNet")
    scheduler = build_scheduler(cfg.diffusion, "ddim")
    scheduler.set_timesteps(int(steps))
    shape = (cfg.autoencoder.latent_channels, *cfg.latent_shape)
    z = torch.stack([torch.randn(shape, generator=g, device=g.device).to(device) for g in generators])
    if cond is not None:
        cond = cond.to(device)
    use_amp = cfg.amp and device.type == "cuda"
    scale = cfg.segmenter.controlnet.conditioning_scale
    for t in scheduler.timesteps.tolist():
        tt = torch.full((len(z),), int(t), device=device, dtype=torch.long)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            if cond is None:
                eps = model.unet(z, timesteps=tt)
            else:
                down, mid = model.controlnet(z, timesteps=tt, controlnet_cond=cond, conditioning_scale=scale)
                eps = model.unet(z, timesteps=tt, down_block_additional_residuals=down, mid_block_additional_residual=mid)
        eps = eps.float()
        if eta == 0.0:
            z, _ = scheduler.step(eps, int(t), z, eta=0.0)
            continue
        z = torch.cat([scheduler.step(eps[i:i + 1], int(t), z[i:i + 1], eta=eta, generator=g)[0]
                       for i, g in enumerate(generators)])
    return z


@torch.no_grad()
def decode_probabilities(model: LabelModel, z: torch.Tensor) -> torch.Tensor:
    """Class probabilities (B, n_classes, *model grid) on the CPU: softmax of ``decode(z / scale_factor)``."""
    device = model.device
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=model.config.amp and device.type == "cuda"):
        logits = model.autoencoder.decode(z.to(device) / model.scale_factor)
    return torch.softmax(logits.float(), dim=1).cpu()


def sample_label_maps(model: LabelModel, seeds: list[int], steps: int | None = None, eta: float | None = None,
                      batch: int | None = None) -> np.ndarray:
    """New label maps (len(seeds), *model grid) uint8 class maps (0 background, 1 head, 2.. tumour labels),
    one per seed (the profile's sample block for what is not given)."""
    s = model.config.sample
    steps, eta, batch = steps or s.steps, s.eta if eta is None else eta, batch or s.batch
    out = []
    for i in range(0, len(seeds), batch):
        gens = [make_generator(seed, model.device) for seed in seeds[i:i + batch]]
        z = sample_latents(model, gens, steps, eta)
        out.append(decode_probabilities(model, z).argmax(1).numpy().astype(np.uint8))
    return np.concatenate(out) if out else np.zeros((0, *model.config.data.shape), np.uint8)


def segment_samples(model: LabelModel, image: np.ndarray, seeds: list[int], steps: int | None = None,
                    batch: int = 8) -> np.ndarray:
    """Class probabilities (len(seeds), n_classes, *model grid) float32 of one case: one sample per seed,
    each conditioned on ``image`` (4, *model grid), the case's MRIs normalised on the model grid."""
    steps = steps or model.config.segmenter.sample_steps
    cond = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    out = []
    for i in range(0, len(seeds), batch):
        part = seeds[i:i + batch]
        gens = [make_generator(seed, model.device) for seed in part]
        z = sample_latents(model, gens, steps, 0.0, cond=cond.expand(len(part), *cond.shape[1:]))
        out.append(decode_probabilities(model, z).numpy())
    return np.concatenate(out).astype(np.float32)
