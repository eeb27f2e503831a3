"""Typed settings of the ``ldm`` synthesizer and the YAML profiles in ``configs/ldm/`` that fill them.

Nothing here imports torch: a pipeline config naming the backend and a profile is checked without it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from components.config_base import FrozenModel, ProfileDir, check_latent_grid, check_levels, with_stage_steps
from components.errors import InputError
from components.synthesis.config import BackendConfig, SampleConfig

PROFILES_DIR = Path(__file__).resolve().parents[2] / "configs" / "ldm"


class LdmError(InputError):
    """Wrong input or state for the ldm synthesizer."""


class AutoencoderConfig(FrozenModel):
    """Arguments of MONAI's ``AutoencoderKL`` (spatial_dims 3, 4 modalities in and out)."""

    channels: tuple[int, ...] = (64, 128, 256)
    latent_channels: int = Field(8, ge=1)
    num_res_blocks: int = Field(2, ge=1)
    norm_num_groups: int = Field(32, ge=1)
    norm_eps: float = Field(1e-6, gt=0.0)
    attention_levels: tuple[bool, ...] = (False, False, False)
    with_encoder_nonlocal_attn: bool = False
    with_decoder_nonlocal_attn: bool = False

    @property
    def factor(self) -> int:
        """Downsampling of the image grid to the latent grid, per axis."""
        return 2 ** (len(self.channels) - 1)

    @model_validator(mode="after")
    def _check(self) -> AutoencoderConfig:
        check_levels("autoencoder", self.channels, self.norm_num_groups, self.attention_levels)
        return self


class DiscriminatorConfig(FrozenModel):
    """Arguments of MONAI's ``PatchDiscriminator`` (spatial_dims 3, 4 channels in, 1 out)."""

    num_layers_d: int = Field(3, ge=1)
    channels: int = Field(32, ge=1)
    norm: Literal["INSTANCE", "BATCH"] = "INSTANCE"


class LossConfig(FrozenModel):
    """Autoencoder loss: l1 * |x - x'| + kl * KL + adversarial * LSGAN + perceptual * 2.5-D ResNet-50."""

    l1: float = Field(1.0, ge=0.0)
    kl: float = Field(1e-7, ge=0.0)
    adversarial: float = Field(0.1, ge=0.0, description="least-squares PatchGAN weight (0: no discriminator)")
    adversarial_warmup_steps: int = Field(0, ge=0, description="autoencoder steps before the adversarial part starts")
    perceptual: float = Field(0.1, ge=0.0, description="used only when perceptual_weights names a local file")
    fake_3d_ratio: float = Field(0.2, gt=0.0, le=1.0, description="share of the slices of each axis the perceptual loss sees")


class UNetConfig(FrozenModel):
    """Arguments of MONAI's ``DiffusionModelUNet`` on the latent grid (in: latents + mask channels)."""

    channels: tuple[int, ...] = (256, 256, 512)
    attention_levels: tuple[bool, ...] = (False, True, True)
    num_head_channels: int | tuple[int, ...] = (0, 64, 64)
    num_res_blocks: int = Field(2, ge=1)
    norm_num_groups: int = Field(32, ge=1)
    use_flash_attention: bool = False

    @model_validator(mode="after")
    def _check(self) -> UNetConfig:
        check_levels("unet", self.channels, self.norm_num_groups, self.attention_levels)
        return self


class LatentDiffusionConfig(FrozenModel):
    """The forward process on the scaled latents (``DDPMScheduler``; DDIM for sampling)."""

    num_train_timesteps: int = Field(1000, ge=2)
    schedule: Literal["scaled_linear_beta", "linear_beta", "cosine"] = "scaled_linear_beta"
    beta_start: float = Field(0.0015, gt=0.0)
    beta_end: float = Field(0.0195, gt=0.0)
    prediction_type: Literal["epsilon"] = "epsilon"


class StageConfig(FrozenModel):
    """Length and optimiser of one training stage."""

    steps: int = Field(..., ge=1, description="optimizer steps")
    batch_size: int = Field(1, ge=1)
    lr: float = Field(1e-5, gt=0.0, description="Adam learning rate")
    lr_milestones: tuple[int, ...] = Field((), description="steps at which the learning rate is multiplied by lr_gamma")
    lr_gamma: float = Field(0.1, gt=0.0)
    checkpoint_every: int = Field(100, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    ema_decay: float | None = Field(None, ge=0.0, lt=1.0, description="EMA of the weights used for sampling (None: off)")


class AutoencoderStageConfig(StageConfig):
    crop: tuple[int, int, int] | None = Field(None, description="random crop of the model grid per draw (None: whole grid)")


class LdmConfig(BackendConfig):
    """Everything that defines one trained ldm synthesizer."""

    backend: Literal["ldm"] = "ldm"
    autoencoder: AutoencoderConfig = AutoencoderConfig()
    discriminator: DiscriminatorConfig = DiscriminatorConfig()
    loss: LossConfig = LossConfig()
    perceptual_weights: str | None = Field(
        None, description="local torchvision ResNet-50 state dict for the perceptual loss; None: no perceptual loss "
        "(nothing is ever downloaded)")
    autoencoder_train: AutoencoderStageConfig
    unet: UNetConfig = UNetConfig()
    diffusion: LatentDiffusionConfig = LatentDiffusionConfig()
    diffusion_train: StageConfig
    latent: Literal["posterior_mean"] = Field(
        "posterior_mean", description="the diffusion learns the encoder's posterior mean (deterministic), and the "
        "scale factor is 1 / std of those means over the training cases")
    conditioning: Literal["concat"] = Field(
        "concat", description="the one-hot mask (background, head, tumour labels) averaged onto the latent grid and "
        "concatenated to the noisy latent at every step")
    sample: SampleConfig = SampleConfig(steps=50, eta=0.0)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        f = self.autoencoder.factor
        return tuple(s // f for s in self.data.shape)  # type: ignore[return-value]

    @model_validator(mode="after")
    def _check(self) -> LdmConfig:
        f = self.autoencoder.factor
        crop = self.autoencoder_train.crop
        bad = [s for s in (*self.data.shape, *(crop or ())) if s % f]
        if bad:
            raise ValueError(f"data.shape {self.data.shape} / autoencoder_train.crop {crop}: with "
                             f"{len(self.autoencoder.channels)} autoencoder levels every side must be a multiple of {f}; "
                             f"{bad} are not")
        if crop is not None and any(c > s for c, s in zip(crop, self.data.shape, strict=True)):
            raise ValueError(f"autoencoder_train.crop {crop} must fit inside data.shape {self.data.shape}")
        check_latent_grid(self.latent_shape, self.unet.channels, f"data.shape / {f}")
        if self.sample.steps > self.diffusion.num_train_timesteps:
            raise ValueError(f"sample.steps {self.sample.steps} exceeds num_train_timesteps "
                             f"{self.diffusion.num_train_timesteps}")
        if self.sample.sampler not in ("ddim", "ddpm"):
            raise ValueError(f"sample.sampler {self.sample.sampler!r}: ldm samples with ddim or ddpm")
        return self

    @property
    def perceptual_on(self) -> bool:
        return self.perceptual_weights is not None and self.loss.perceptual > 0

    def with_steps(self, steps: int | None) -> LdmConfig:
        """The same config with the diffusion stage's steps replaced (the --steps option)."""
        return with_stage_steps(self, "diffusion_train", steps)

    def stage_digest(self, stage: Literal["autoencoder", "diffusion"]) -> str:
        """Digest of the settings a stage's weights depend on (steps excluded: a longer run extends a shorter one)."""
        d = self.model_dump(mode="json")
        keep = ["seed", "data", "autoencoder", "discriminator", "loss", "perceptual_weights", "autoencoder_train"]
        if stage == "diffusion":
            keep += ["unet", "diffusion", "diffusion_train", "latent", "conditioning"]
            d["diffusion_train"].pop("steps")
        else:
            d["autoencoder_train"].pop("steps")
        return hashlib.sha256(json.dumps({k: d[k] for k in keep}, sort_keys=True).encode()).hexdigest()

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


PROFILES = ProfileDir(PROFILES_DIR, LdmConfig, LdmError, "ldm")
# the profiles by name (configs/ldm/<name>.yaml) or YAML path: list, find, refuse an unknown one, read (no torch)
list_profiles, profile_path, check_profile, load_profile = PROFILES.names, PROFILES.path, PROFILES.check, PROFILES.load
