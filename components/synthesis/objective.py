"""The diffusion objective and one optimizer step: timestep draws (uniform or EDM lognormal), per-sample
loss weights, the epsilon loss on the mask-conditioned input (Ho et al. 2020, eq. 14)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F

from components.synthesis.config import SynthesisError, SynthesizerConfig
from components.synthesis.data import one_hot


def loss_function(kind: str):
    return F.l1_loss if kind == "l1" else F.mse_loss


def draw_timesteps(n: int, alphas_cumprod: torch.Tensor, diffusion: Any, generator: torch.Generator) -> torch.Tensor:
    """Training timesteps (n,) long: uniform, or EDM's lognormal over sigma (Karras et al. 2022, sec. 5)
    mapped to the nearest discrete timestep of the schedule.

    The draws come from ``generator`` (on the CPU) whatever the device of ``alphas_cumprod``: MONAI's
    ``add_noise`` moves its scheduler's ``alphas_cumprod`` to the data's device after the first batch,
    so the lognormal draw is moved there before the search; the timesteps are returned on that device."""
    T = alphas_cumprod.shape[0]
    if diffusion.timestep_sampling == "uniform":
        return torch.randint(0, T, (n,), generator=generator).to(alphas_cumprod.device)
    a = alphas_cumprod.detach().double()
    log_sigma = 0.5 * torch.log((1.0 - a) / a)  # increasing in t
    draw = diffusion.p_mean + diffusion.p_std * torch.randn(n, generator=generator, dtype=torch.float64)
    draw = draw.to(log_sigma.device)
    idx = torch.searchsorted(log_sigma, draw).clamp(1, T - 1)
    nearer_low = (draw - log_sigma[idx - 1]) < (log_sigma[idx] - draw)
    return torch.where(nearer_low, idx - 1, idx).long()


def timestep_weights(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, diffusion: Any) -> torch.Tensor:
    """Per-sample weights on the epsilon loss (B,). SNR_t = a_t / (1 - a_t).

    min_snr: min(SNR_t, gamma) / SNR_t (Hang et al. 2023, eq. 8, epsilon form); edm: 1 / c_out(t)^2,
    i.e. the inner network's loss on its unit-variance target (Karras et al. 2022); none: ones.
    Returned on the device of ``alphas_cumprod``.
    """
    if diffusion.loss_weighting == "none":
        return torch.ones(timesteps.shape, dtype=torch.float32, device=alphas_cumprod.device)
    a = alphas_cumprod.detach()[timesteps.to(alphas_cumprod.device)].double()  # on the schedule's device
    if diffusion.loss_weighting == "min_snr":
        snr = a / (1.0 - a)
        return (torch.clamp(snr, max=diffusion.min_snr_gamma) / snr).float()
    from components.synthesis.network import edm_coefficients

    return (1.0 / edm_coefficients(a, diffusion.sigma_data)[2] ** 2).float()


def training_loss(net: torch.nn.Module, inferer: Any, image: torch.Tensor, labels: torch.Tensor, noise: torch.Tensor,
                  timesteps: torch.Tensor, n_condition: int, loss: str, amp: bool = False,
                  weights: torch.Tensor | None = None, prior: torch.Tensor | None = None) -> torch.Tensor:
    """Epsilon objective (Ho et al. 2020, eq. 14): x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps, then the
    loss between eps and eps_theta([x_t, one-hot mask(, prior)], t), optionally weighted per sample.
    image (B, 4, X, Y, Z), labels (B, X, Y, Z), prior (B, 4, X, Y, Z) or None, timesteps and weights (B,)."""
    cond = one_hot(labels, n_condition)
    if prior is not None:
        cond = torch.cat([cond, prior.to(cond.dtype)], dim=1)
    # no autocast context at all without amp: torch refuses autocast(enabled=False) on some device types
    ctx = torch.autocast(device_type=image.device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()
    with ctx:
        pred = inferer(inputs=image, diffusion_model=net, noise=noise, timesteps=timesteps, condition=cond, mode="concat")
    per_sample = loss_function(loss)(pred.float(), noise, reduction="none").flatten(1).mean(1)
    if weights is not None:
        per_sample = per_sample * weights.to(per_sample.device)
    return per_sample.mean()


def optimizer_step(net: torch.nn.Module, opt: torch.optim.Optimizer, inferer: Any,
                   batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]], cfg: SynthesizerConfig,
                   noise_generator: torch.Generator, n_condition: int, lr: float,
                   amp: bool | None = None) -> torch.Tensor:
    """One optimizer step of the training loop, on the network's device (bfloat16 autocast on a GPU with
    ``train.amp``; ``amp`` True or False overrides that on any device, as the memory bench does on the
    CPU): for each micro-batch (image (B, 4, X, Y, Z), labels (B, X, Y, Z), prior (B, 4, X, Y, Z)
    or None; any device) the noise and then the timesteps are drawn from ``noise_generator`` (CPU), the
    loss / ``train.grad_accum`` is back-propagated; then gradient clipping and the step at learning rate
    ``lr``. Returns the micro-batch losses (already divided by grad_accum), detached, on that device.

    The timestep schedule is read from ``inferer.scheduler`` at each micro-batch, on whatever device
    MONAI's ``add_noise`` left it (the data's, after the first batch): :func:`draw_timesteps` and
    :func:`timestep_weights` work on that device, so a CUDA run does not mix devices.
    """
    device = next(net.parameters()).device
    use_amp = (cfg.train.amp and device.type == "cuda") if amp is None else bool(amp)
    accum = cfg.train.grad_accum
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    losses = []
    for img, lab, pri in batches:
        noise = torch.randn(img.shape, generator=noise_generator)
        schedule = inferer.scheduler.alphas_cumprod
        t = draw_timesteps(img.shape[0], schedule, cfg.diffusion, noise_generator)
        w = timestep_weights(schedule, t, cfg.diffusion)
        loss = training_loss(net, inferer, img.to(device), lab.to(device), noise.to(device), t.to(device), n_condition,
                             cfg.diffusion.loss, use_amp, weights=w, prior=None if pri is None else pri.to(device)) / accum
        loss.backward()
        losses.append(loss.detach())
    if not losses:
        raise SynthesisError("optimizer_step needs at least one micro-batch")
    if cfg.train.grad_clip:
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.train.grad_clip)
    opt.step()
    return torch.stack(losses)
