"""Samplers: DDIM (eta 0 to 1) and the full-length ancestral DDPM reference (Med-DDPM/GliomaGen).

The loop mirrors MONAI's ``DiffusionInferer.sample`` with ``mode="concat"`` (the one-hot mask is
concatenated to the noisy image at every step), but passes a ``torch.Generator`` per volume to the
scheduler's ``step``: the inferer's loop cannot, so a stochastic step would draw from the global
RNG and a seed would not fix the sample.
"""

from __future__ import annotations

import logging

import torch

from components.progress import tqdm
from components.synthesis.config import DiffusionConfig, SynthesisError, SynthesizeConfig, SynthesizerConfig
from components.synthesis.data import one_hot
from components.synthesis.network import N_MODALITIES, build_scheduler

log = logging.getLogger(__name__)


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=torch.device(device)).manual_seed(int(seed))


def resolve_steps(diffusion: DiffusionConfig, sampler: str, steps: int | None, default_steps: int) -> int:
    """DDIM: the given or default step count; DDPM: always the full T (it is the reference).

    MONAI's DDPM step uses ``t - 1`` as the previous timestep, so a shortened DDPM chain would be
    wrong; shortened sampling is what DDIM is for.
    """
    T = diffusion.num_train_timesteps
    if sampler == "ddpm":
        if steps not in (None, T):
            raise SynthesisError(f"the DDPM sampler is the full-length reference and runs all T={T} steps; got "
                                 f"--steps {steps}. Use --sampler ddim for fewer steps")
        return T
    if sampler != "ddim":
        raise SynthesisError(f"unknown sampler {sampler!r}: use 'ddim' or 'ddpm'")
    n = default_steps if steps is None else int(steps)
    if not 1 <= n <= T:
        raise SynthesisError(f"DDIM steps must be between 1 and T={T}, got {n}")
    return n


def resolve_sampling(run: SynthesizeConfig, model: SynthesizerConfig) -> SynthesizeConfig:
    """``run`` with sampler, steps, eta and batch filled in: each one left None comes from the model's
    profile (``model.sample``), each one given overrides it. Steps: :func:`resolve_steps` (DDPM always
    T). eta is DDIM's noise weight: None for DDPM, which has none (an explicit eta with DDPM is refused)."""
    sample = model.sample
    sampler = run.sampler or sample.sampler
    steps = resolve_steps(model.diffusion, sampler, run.steps, sample.steps)
    if sampler == "ddpm":
        if run.eta is not None:
            raise SynthesisError(f"eta {run.eta} is the DDIM noise weight; the DDPM reference has none (leave eta "
                                 f"unset, or use sampler ddim)")
        eta = None
    else:
        eta = sample.eta if run.eta is None else float(run.eta)
    batch = sample.batch if run.batch is None else int(run.batch)
    return run.model_copy(update={"sampler": sampler, "steps": steps, "eta": eta, "batch": batch})


@torch.no_grad()
def sample_images(
    network: torch.nn.Module,
    labels: torch.Tensor,
    n_condition: int,
    diffusion: DiffusionConfig,
    generators: list[torch.Generator],
    sampler: str = "ddim",
    steps: int = 50,
    eta: float = 0.0,
    amp: bool = True,
    progress: bool | None = None,
    prior: torch.Tensor | None = None,
) -> torch.Tensor:
    """Generate B volumes for B conditioning maps.

    labels: (B, X, Y, Z) conditioning label map (0 background, 1 head, 2.. tumour), on any device.
    generators: one per volume, on the network's device; they fix the initial noise and any step noise.
    prior: the model's prior (C, X, Y, Z) on the same grid, for a network trained with one (its
    ``n_prior`` channels follow the mask), or one per volume (B, C, X, Y, Z) (the prior moved with
    each augmented mask's head, see ``components.synthesis.prior``); refused for a network without.
    Returns (B, 4, X, Y, Z) float32 on the CPU, in [-1, 1] (the data range the model was trained on).
    """
    device = next(network.parameters()).device
    B = labels.shape[0]
    if len(generators) != B:
        raise SynthesisError(f"need one generator per volume: {B} volumes, {len(generators)} generators")
    off = sorted({str(g.device) for g in generators if (g.device.type, g.device.index or 0) != (device.type, device.index or 0)})
    if off:  # the noise is drawn on the network's device (here and in MONAI's step): the generators must be there
        raise SynthesisError(f"generators on {off} but the network is on {device}: make them with "
                             f"make_generator(seed, device)")
    n_steps = resolve_steps(diffusion, sampler, steps, default_steps=steps)
    scheduler = build_scheduler(diffusion, sampler)
    scheduler.set_timesteps(n_steps)
    cond = one_hot(labels.to(device), n_condition)
    n_prior = int(getattr(network, "n_prior", 0))
    if n_prior or prior is not None:
        if prior is None or not n_prior:
            raise SynthesisError("this network was trained with a prior; pass the model's prior" if n_prior else
                                 "this network was trained without a prior; do not pass one")
        if tuple(prior.shape) not in ((n_prior, *labels.shape[1:]), (B, n_prior, *labels.shape[1:])):
            raise SynthesisError(f"prior has shape {tuple(prior.shape)}, expected {(n_prior, *labels.shape[1:])} "
                                 f"or one per volume {(B, n_prior, *labels.shape[1:])} (the model grid of the masks)")
        prior = prior.to(device=device, dtype=cond.dtype)
        cond = torch.cat([cond, prior if prior.dim() == 5 else prior[None].expand(B, -1, -1, -1, -1)], dim=1)
    shape = (N_MODALITIES, *labels.shape[1:])
    x = torch.stack([torch.randn(shape, generator=g, device=device) for g in generators])
    use_amp = amp and device.type == "cuda"
    deterministic = sampler == "ddim" and eta == 0.0
    network.eval()
    for t in tqdm(scheduler.timesteps.tolist(), desc=f"{sampler} {n_steps} steps", unit="step", leave=False,
                  disable=None if progress is None else not progress):
        tt = torch.full((B,), int(t), device=device, dtype=torch.long)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            eps = network(torch.cat([x, cond], dim=1), timesteps=tt)
        eps = eps.float()
        if deterministic:
            # DDIM eq. (12) with sigma_t = 0 (Song et al. 2021): no noise is drawn
            x, _ = scheduler.step(eps, int(t), x, eta=0.0)
            continue
        out = []
        for i in range(B):  # one generator per volume: the noise does not depend on the batch
            if sampler == "ddim":
                xi, _ = scheduler.step(eps[i:i + 1], int(t), x[i:i + 1], eta=eta, generator=generators[i])
            else:
                # DDPM posterior mean, eq. (7) of Ho et al. 2020, plus fixed-small variance noise
                xi, _ = scheduler.step(eps[i:i + 1], int(t), x[i:i + 1], generator=generators[i])
            out.append(xi)
        x = torch.cat(out)
    return x.clamp(-1.0, 1.0).float().cpu()
