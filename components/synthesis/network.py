"""Network and scheduler factories (MONAI generative): the denoiser and the noise schedule."""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from components.devices import resolve_device as _resolve_device
from components.synthesis.config import DiffusionConfig, NetworkConfig, SynthesisError
from data_catalog import MODALITIES

N_MODALITIES = len(MODALITIES)


def edm_coefficients(a: torch.Tensor, sigma_data: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_in, c_skip, c_out) for x_t = sqrt(a) x_0 + sqrt(1 - a) eps with E[x_0^2] = s^2.

    v = a s^2 + 1 - a is the variance of x_t; c_skip = sqrt(1 - a) / v is the linear minimum-mean-
    square-error estimate of eps from x_t, c_out = sqrt(a s^2 / v) the standard deviation of what it
    leaves, c_in = 1 / sqrt(v) scales the input to unit variance (Karras et al. 2022, Table 1 and
    appendix B.6, rewritten for an epsilon target).
    """
    s2 = float(sigma_data) ** 2
    v = a * s2 + 1.0 - a
    return 1.0 / torch.sqrt(v), torch.sqrt(1.0 - a) / v, torch.sqrt(a * s2 / v)


class EDMPreconditioned(torch.nn.Module):
    """Epsilon network eps(x_t, t) = c_skip x_t + c_out F([c_in x_t, mask], t), F = MONAI's U-Net.

    The output is epsilon, so schedulers, losses and samplers are the same as for the plain network.
    F's output convolution starts at zero, so the untrained model is the linear (Wiener) denoiser,
    not noise that the sampler's clipping turns into salt and pepper; trained with loss weighting
    'edm', F sees a unit-variance target at every noise level, which is what lets a few hundred CPU
    steps learn the image structure.

    With a prior (``n_prior`` > 0) the input's last ``n_prior`` channels hold a mean image m and the
    preconditioning is centred on it: r_t = x_t - sqrt(a_t) m = sqrt(a_t) (x_0 - m) + sqrt(1 - a_t) eps
    holds the same eps, so eps = c_skip r_t + c_out F([c_in r_t, mask, m], t) with sigma_data the RMS
    of x_0 - m. This is diffusion of the residual from m written on x_t, so the schedulers, the
    samplers and their clipping of the predicted x_0 to the data range stay as they are.
    """

    def __init__(self, unet: torch.nn.Module, alphas_cumprod: torch.Tensor, sigma_data: float, n_image: int,
                 n_prior: int = 0):
        super().__init__()
        self.unet = unet
        self.sigma_data = float(sigma_data)
        self.n_image = n_image
        self.n_prior = int(n_prior)
        self.register_buffer("alphas_cumprod", alphas_cumprod.detach().float().clone(), persistent=False)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        a = self.alphas_cumprod[timesteps.long()].view(-1, *([1] * (x.dim() - 1)))
        c_in, c_skip, c_out = (c.to(x.dtype) for c in edm_coefficients(a, self.sigma_data))
        x_t = x[:, : self.n_image]
        if self.n_prior:
            x_t = x_t - torch.sqrt(a).to(x.dtype) * x[:, x.shape[1] - self.n_prior:]
        inner = torch.cat([c_in * x_t, x[:, self.n_image:]], dim=1)
        return c_skip * x_t + c_out * self.unet(inner, timesteps=timesteps, context=context)


def _checkpointed_forward(self: torch.nn.Module, *args, **kwargs):
    """The block's own forward under ``torch.utils.checkpoint`` while gradients are on (training);
    a plain call otherwise (sampling, EMA), where there is nothing to save."""
    forward = type(self).forward
    if torch.is_grad_enabled() and self.training:
        return checkpoint(forward, self, *args, use_reentrant=False, **kwargs)
    return forward(self, *args, **kwargs)


def enable_gradient_checkpointing(unet: torch.nn.Module) -> torch.nn.Module:
    """Recompute each residual and attention block of MONAI's ``DiffusionModelUNet`` in the backward pass.

    MONAI 1.6's DiffusionModelUNet has no checkpointing option (its AutoencoderKL has ``use_checkpoint``),
    so each residual / attention block's ``forward`` is rebound to :func:`_checkpointed_forward`. Per
    residual block rather than per down/middle/up block: a whole up block's recomputation (three residual
    blocks on the concatenated skips) was itself the peak (docs/benchmarks.md, bench/memory.py). The
    modules stay where they are, so the state-dict keys (checkpoints, ema.pt) are those of the plain
    network; the rebinding is a bound method on the module, so ``copy.deepcopy`` (the EMA) binds it to the copy.
    """
    import types

    for block in (*unet.down_blocks, unet.middle_block, *unet.up_blocks):
        parts = [*(getattr(block, "resnets", None) or []), *(getattr(block, "attentions", None) or [])]
        parts += [m for m in (getattr(block, n, None) for n in ("resnet_1", "attention", "resnet_2")) if m is not None]
        for m in parts:
            m.forward = types.MethodType(_checkpointed_forward, m)
    return unet


def prior_channels(diffusion: DiffusionConfig | None) -> int:
    """Conditioning channels the prior adds after the one-hot mask: 4 (one mean image per modality) or 0."""
    return N_MODALITIES if diffusion is not None and diffusion.prior != "none" else 0


def build_network(cfg: NetworkConfig, n_condition: int, seed: int = 0,
                  diffusion: DiffusionConfig | None = None) -> torch.nn.Module:
    """``DiffusionModelUNet`` (3-D) taking the noisy 4-modality image concatenated with the one-hot
    mask (4 + C channels; + 4 prior channels with ``diffusion.prior``) and predicting the noise of the
    4 modalities (Med-DDPM's conditioning); wrapped in :class:`EDMPreconditioned` when
    ``diffusion.precondition == "edm"``; with ``cfg.gradient_checkpointing`` its blocks are recomputed
    in the backward pass (:func:`enable_gradient_checkpointing`).

    Weights are initialised from ``seed`` without touching the caller's global RNG state.
    """
    from monai.networks.nets import DiffusionModelUNet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            net = DiffusionModelUNet(
                spatial_dims=3, in_channels=N_MODALITIES + n_condition + prior_channels(diffusion), out_channels=N_MODALITIES,
                channels=cfg.channels, num_res_blocks=cfg.num_res_blocks, attention_levels=cfg.attention_levels,
                num_head_channels=cfg.num_head_channels, norm_num_groups=cfg.norm_num_groups,
                use_flash_attention=cfg.use_flash_attention,
            )
        except ValueError as err:
            raise SynthesisError(f"network settings rejected by MONAI's DiffusionModelUNet: {err}") from err
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(net)
    if diffusion is not None and diffusion.precondition == "edm":
        return EDMPreconditioned(net, build_scheduler(diffusion).alphas_cumprod, diffusion.sigma_data, N_MODALITIES,
                                 prior_channels(diffusion))
    return net


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
    raise SynthesisError(f"unknown MONAI scheduler {kind!r}: use 'ddim' or 'ddpm' (dpmpp2m is "
                         f"components.synthesis.sampling.DPMSolverPP2M)")


def place_network(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move the network to ``device``; on the CPU also to the channels-last 3-D memory format.

    oneDNN's 3-D convolutions run faster on channels-last weights: a cpu-demo training step (8 x 16^3
    crops, forward and backward) took 0.47 s instead of 0.59 s on 2 cores; a sampling step (forward
    only, 40x48x40) is about the same either way (0.39-0.47 s). The values are the same up to float
    rounding; model and EMA weights are saved contiguous, so ema.pt does not depend on the layout.
    """
    net = net.to(device)
    if device.type == "cpu":  # only the 5-D (convolution) tensors: Module.to(memory_format) rejects 4-D buffers
        with torch.no_grad():
            for t in (*net.parameters(), *net.buffers()):
                if t.dim() == 5:
                    t.data = t.data.contiguous(memory_format=torch.channels_last_3d)
    return net


def count_parameters(net: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in net.parameters()))


def resolve_device(device: str) -> torch.device:
    return _resolve_device(device, "synthesizer")
