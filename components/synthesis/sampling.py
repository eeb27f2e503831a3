"""Samplers: DDIM (eta 0 to 1), DPM-Solver++(2M) and the full-length ancestral DDPM reference (Med-DDPM/GliomaGen).

The loop mirrors MONAI's ``DiffusionInferer.sample`` with ``mode="concat"`` (the one-hot mask is
concatenated to the noisy image at every step), but passes a ``torch.Generator`` per volume to the
scheduler's ``step``: the inferer's loop cannot, so a stochastic step would draw from the global
RNG and a seed would not fix the sample.
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import torch

from components.progress import tqdm
from components.synthesis.config import (
    DEFAULT_ETA,
    DiffusionConfig,
    SynthesisError,
    SynthesizeConfig,
    SynthesizerConfig,
)
from components.synthesis.data import one_hot
from components.synthesis.network import N_MODALITIES, build_scheduler

log = logging.getLogger(__name__)


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=torch.device(device)).manual_seed(int(seed))


def resolve_steps(diffusion: DiffusionConfig, sampler: str, steps: int | None, default_steps: int) -> int:
    """DDIM and DPM-Solver++(2M): the given or default step count; DDPM: always the full T (it is the reference).

    MONAI's DDPM step uses ``t - 1`` as the previous timestep, so a shortened DDPM chain would be
    wrong; shortened sampling is what DDIM and the solver are for.
    """
    T = diffusion.num_train_timesteps
    if sampler == "ddpm":
        if steps not in (None, T):
            raise SynthesisError(f"the DDPM sampler is the full-length reference and runs all T={T} steps; got "
                                 f"--steps {steps}. Use --sampler ddim or dpmpp2m for fewer steps")
        return T
    if sampler not in ("ddim", "dpmpp2m"):
        raise SynthesisError(f"unknown sampler {sampler!r}: use 'ddim', 'dpmpp2m' or 'ddpm'")
    n = default_steps if steps is None else int(steps)
    if not 1 <= n <= T:
        raise SynthesisError(f"{sampler} steps must be between 1 and T={T}, got {n}")
    return n


def resolve_sampling(run: SynthesizeConfig, model: SynthesizerConfig) -> SynthesizeConfig:
    """``run`` with sampler, steps, eta and batch filled in: each one left None comes from the model's
    profile (``model.sample``), each one given overrides it. Steps: :func:`resolve_steps` (DDPM always
    T). eta is the step-noise weight of DDIM and DPM-Solver++(2M) (0: deterministic given the initial
    noise); a run that switches to another sampler than the profile's and leaves eta unset gets that
    sampler's own (``DEFAULT_ETA``: ddim 1, dpmpp2m 0, the ODE solver). DDPM has none: None, an explicit
    eta is refused."""
    sample = model.sample
    sampler = run.sampler or sample.sampler
    steps = resolve_steps(model.diffusion, sampler, run.steps, sample.steps)
    if sampler == "ddpm":
        if run.eta is not None:
            raise SynthesisError(f"eta {run.eta} is the step-noise weight of ddim and dpmpp2m; the ddpm reference has "
                                 f"none (leave eta unset)")
        eta = None
    elif run.eta is not None:
        eta = float(run.eta)
    else:
        eta = sample.eta if sampler == sample.sampler else DEFAULT_ETA[sampler]
    batch = sample.batch if run.batch is None else int(run.batch)
    return run.model_copy(update={"sampler": sampler, "steps": steps, "eta": eta, "batch": batch})


class DPMSolverPP2M:
    """DPM-Solver++(2M), the multistep second-order solver in data prediction (Lu et al. 2022,
    "DPM-Solver++", Algorithm 2; with ``eta`` > 0 its stochastic form, SDE-DPM-Solver++(2M) of the same
    paper's appendix), for an epsilon-prediction model.

    MONAI 1.6 has no such scheduler and diffusers is not in the stack, so it is written here against
    the model's own ``alphas_cumprod`` (cosine or scaled-linear, from the DDPM scheduler). With
    alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t), lambda_t = log(alpha_t / sigma_t):

    - data prediction: x0_i = (x_i - sigma_i eps(x_i, t_i)) / alpha_i, clipped to [-1, 1] with ``clip_sample``
      (the same clipping of the predicted x_0 as MONAI's DDIM step);
    - h_i = lambda_{i+1} - lambda_i, r_i = h_{i-1} / h_i, g_i = 1 - exp(-(1 + eta) h_i);
    - x_{i+1} = (sigma_{i+1} / sigma_i) exp(-eta h_i) x_i + alpha_{i+1} g_i x0_i
      + alpha_{i+1} g_i / (2 r_i) (x0_i - x0_{i-1})  (second-order term; absent at the first step)
      + sigma_{i+1} sqrt(1 - exp(-2 eta h_i)) z_i,  z_i ~ N(0, I).

    eta = 0 is the ODE solver (Algorithm 2: g_i = 1 - exp(-h_i), no noise; its first order is DDIM);
    eta = 1 is SDE-DPM-Solver++(2M) (g_i = 1 - exp(-2 h_i)); values between keep both the signal
    coefficient (alpha_{i+1} for an exact x0) and the noise variance (sigma_{i+1}^2) of the forward
    process, so every eta samples the same marginals, like DDIM's eta.

    The n network evaluations are at n distinct integer timesteps from T-1 down to 0 (the network was
    trained on integers); the last update goes from the last of them (t = 0 when n >= 2) to the clean
    image (sigma = 0, lambda = inf), where the second-order term is undefined, so it is first order and
    returns the predicted x_0 there, as MONAI's DDIM does at its last step. Spacing: ``time_quadratic`` (default; t_k = (T-1)
    (1 - k/(n-1))^2, the ``time_quadratic`` option of the DPM-Solver reference code, DDIM's CIFAR
    spacing) or ``time_uniform`` (t_k = (T-1)(1 - k/(n-1)), MONAI's DDIM grid). On the cosine schedule
    lambda runs from -9.9 at t = 999 to 1.8 at t = 100 and 5.0 at t = 0: a uniform grid leaves one
    step across lambda 1.8 -> 5.0, where the second-order extrapolation overshoots (on a Gaussian toy
    with a known ODE solution, 20 steps: 0.14 max error uniform, 0.007 quadratic), and a uniform
    log-SNR grid puts half its steps at t > 990, where rounding to integers makes them collide.
    """

    def __init__(self, alphas_cumprod: torch.Tensor, clip_sample: bool = True,
                 spacing: Literal["time_quadratic", "time_uniform"] = "time_quadratic", eta: float = 0.0):
        if not 0.0 <= float(eta) <= 1.0:
            raise SynthesisError(f"DPM-Solver++ eta must be between 0 (ODE) and 1 (SDE), got {eta}")
        if spacing not in ("time_quadratic", "time_uniform"):
            raise SynthesisError(f"unknown DPM-Solver++ spacing {spacing!r}: use 'time_quadratic' or 'time_uniform'")
        a = alphas_cumprod.detach().double().cpu()
        self.num_train_timesteps = int(a.numel())
        self.alpha, self.sigma = a.sqrt(), (1.0 - a).sqrt()
        self.lam = torch.log(self.alpha / self.sigma)
        self.clip_sample = bool(clip_sample)
        self.spacing = spacing
        self.eta = float(eta)
        self.timesteps = torch.empty(0, dtype=torch.long)
        self._index, self._prev_x0, self._prev_h = 0, None, None

    def set_timesteps(self, num_inference_steps: int) -> None:
        n, T = int(num_inference_steps), self.num_train_timesteps
        if not 1 <= n <= T:
            raise SynthesisError(f"dpmpp2m steps must be between 1 and T={T}, got {n}")
        u = torch.linspace(1.0, 0.0, n, dtype=torch.float64) if n > 1 else torch.ones(1, dtype=torch.float64)
        grid = ((T - 1) * (u**2 if self.spacing == "time_quadratic" else u)).round().long().tolist()
        for k in range(n - 2, -1, -1):  # rounding can merge neighbours near t = 0: keep them distinct
            grid[k] = max(grid[k], grid[k + 1] + 1)
        self.timesteps = torch.tensor(grid, dtype=torch.long)
        self._index, self._prev_x0, self._prev_h = 0, None, None

    @property
    def needs_noise(self) -> bool:
        """Whether the next :meth:`step` takes a ``noise`` tensor (eta > 0 and not the last step)."""
        return self.eta > 0.0 and self._index < len(self.timesteps) - 1

    def step(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor,
             noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One solver step from ``sample`` at ``timestep`` (the next of :attr:`timesteps`) given the
        network's epsilon; ``noise`` (standard normal, shaped like ``sample``) when :attr:`needs_noise`.
        Returns (next sample, predicted x_0), like MONAI's scheduler ``step``."""
        i = self._index
        if i >= len(self.timesteps) or int(self.timesteps[i]) != int(timestep):
            raise SynthesisError(f"dpmpp2m step {i} called at timestep {timestep}; expected the timesteps "
                                 f"{self.timesteps.tolist()} in order (call set_timesteps first)")
        last = i == len(self.timesteps) - 1
        if self.eta > 0.0 and not last and (noise is None or noise.shape != sample.shape):
            raise SynthesisError(f"dpmpp2m with eta {self.eta:g} needs a standard-normal noise tensor of shape "
                                 f"{tuple(sample.shape)} at every step but the last; got "
                                 f"{None if noise is None else tuple(noise.shape)}")
        t = int(timestep)
        alpha, sigma = float(self.alpha[t]), float(self.sigma[t])
        x0 = (sample - sigma * model_output) / alpha
        if self.clip_sample:
            x0 = x0.clamp(-1.0, 1.0)
        if last:  # t -> clean image (sigma 0): first order, x = x0
            self._index += 1
            return x0, x0
        s = int(self.timesteps[i + 1])
        h = float(self.lam[s] - self.lam[t])
        g = -math.expm1(-(1.0 + self.eta) * h)
        d = x0
        if self._prev_x0 is not None:
            r = self._prev_h / h
            d = x0 + (x0 - self._prev_x0) / (2.0 * r)
        x = (float(self.sigma[s]) / sigma) * math.exp(-self.eta * h) * sample + float(self.alpha[s]) * g * d
        if self.eta > 0.0:
            x = x + float(self.sigma[s]) * math.sqrt(-math.expm1(-2.0 * self.eta * h)) * noise
        self._prev_x0, self._prev_h, self._index = x0, h, i + 1
        return x, x0


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
    sampler: ``ddim`` (``eta`` weighs its step noise), ``dpmpp2m`` (:class:`DPMSolverPP2M`; ``eta`` 0 or None
    the deterministic ODE solver, 1 SDE-DPM-Solver++(2M)) or ``ddpm`` (the full-length reference; ``steps``
    must be T).
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
    if sampler == "dpmpp2m":
        scheduler = DPMSolverPP2M(build_scheduler(diffusion).alphas_cumprod, clip_sample=diffusion.clip_sample,
                                  eta=eta or 0.0)
    else:
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
        if sampler == "dpmpp2m":
            # DPM-Solver++(2M) update (Lu et al. 2022); its step noise, when eta > 0, from each volume's generator
            noise = torch.stack([torch.randn(shape, generator=g, device=device) for g in generators]) \
                if scheduler.needs_noise else None
            x, _ = scheduler.step(eps, int(t), x, noise=noise)
            continue
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
