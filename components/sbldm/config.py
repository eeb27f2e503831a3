"""Typed settings of the ``sbldm`` synthesizer and the YAML profiles in ``configs/sbldm/`` that fill them.

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
from components.masks.config import CheckConfig
from components.synthesis.config import BackendConfig

PROFILES_DIR = Path(__file__).resolve().parents[2] / "configs" / "sbldm"
# mask_features' names (components/masks/features.py) that can condition the model; n_components is left out
CONDITION_FEATURES = ("volume_mm3", "surface_mm2", "sphericity", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm",
                      "bbox_x_mm", "bbox_y_mm", "bbox_z_mm")
FeatureName = Literal["volume_mm3", "surface_mm2", "sphericity", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm",
                      "bbox_x_mm", "bbox_y_mm", "bbox_z_mm"]


class SbldmError(InputError):
    """Wrong input or state for the sbldm synthesizer."""


class VaeConfig(FrozenModel):
    """The 2-D slice VAE: one level per entry of ``channels``, a stride-2 step between levels (in-plane only)."""

    channels: tuple[int, ...] = (64, 128, 256, 256)
    latent_channels: int = Field(4, ge=1)
    num_res_blocks: int = Field(2, ge=1)
    norm_num_groups: int = Field(32, ge=1)
    position_dim: int = Field(64, ge=4, description="size of the slice-position embedding that drives the FiLM layers")

    @property
    def factor(self) -> int:
        """In-plane downsampling of a slice to its latent (the slice axis is not downsampled)."""
        return 2 ** (len(self.channels) - 1)

    @model_validator(mode="after")
    def _check(self) -> VaeConfig:
        check_levels("vae", self.channels, self.norm_num_groups)
        return self


class VaeLossConfig(FrozenModel):
    """l1 * |x - x'| (image) + seg * DiceCE(mask logits, mask) + kl * KL."""

    l1: float = Field(1.0, ge=0.0)
    seg: float = Field(1.0, ge=0.0)
    kl: float = Field(1e-6, ge=0.0)


class StageConfig(FrozenModel):
    steps: int = Field(..., ge=1, description="optimizer steps")
    batch_size: int = Field(8, ge=1, description="slices (VAE) or latent volumes (diffusion) per step")
    lr: float = Field(1e-4, gt=0.0, description="AdamW learning rate")
    ema_decay: float | None = Field(None, ge=0.0, lt=1.0, description="EMA of the weights used for sampling (None: off)")
    log_every: int = Field(10, ge=1)


class DiffusionTrainConfig(StageConfig):
    checkpoint_every: int = Field(200, ge=1, description="steps between checkpoints a killed run resumes from "
                                  "(not part of the model's digest)")
    keep_checkpoints: int = Field(2, ge=1, description="newest checkpoints kept")
    condition_dropout: float = Field(0.1, ge=0.0, lt=1.0, description="share of draws whose features are replaced "
                                     "by the learnt null embedding (what makes classifier-free guidance possible)")


class FeatureConfig(FrozenModel):
    """The conditioning vector: ``<name>_<region>`` for every name and region (mask_features' columns)."""

    names: tuple[FeatureName, ...] = CONDITION_FEATURES
    regions: tuple[str, ...] | None = Field(None, description="label-scheme regions (e.g. WT, TC, ET); None: all of them")


class UNetConfig(FrozenModel):
    """MONAI ``DiffusionModelUNet`` on the stacked latent (latent_channels in and out)."""

    channels: tuple[int, ...] = (64, 128, 256, 512)
    attention_levels: tuple[bool, ...] = (False, False, True, True)
    num_head_channels: int | tuple[int, ...] = 32
    num_res_blocks: int = Field(2, ge=1)
    norm_num_groups: int = Field(32, ge=1)

    @model_validator(mode="after")
    def _check(self) -> UNetConfig:
        check_levels("unet", self.channels, self.norm_num_groups, self.attention_levels)
        return self


class DiffusionConfig(FrozenModel):
    """The forward process on the scaled latents. The default is MONAI's latent-diffusion schedule: with the
    pixel-space linear 1e-4..0.02 betas the last step keeps alpha_bar ~ 4e-5, so an epsilon error there is
    magnified ~150x in the predicted latent and short DDIM runs start from garbage."""

    num_train_timesteps: int = Field(1000, ge=2)
    schedule: Literal["linear_beta", "scaled_linear_beta", "cosine"] = "scaled_linear_beta"
    beta_start: float = Field(0.0015, gt=0.0)
    beta_end: float = Field(0.0195, gt=0.0)
    prediction_type: Literal["epsilon", "v_prediction"] = Field(
        "epsilon", description="what the U-Net predicts: the noise, or v = alpha_t eps - sigma_t x0 (Salimans & Ho "
        "2022), whose latent estimate at high noise is not the noise estimate divided by a small alpha_t")


class SampleConfig(FrozenModel):
    """Deterministic DDIM (eta 0) with classifier-free guidance."""

    sampler: Literal["ddim"] = "ddim"
    steps: int = Field(50, ge=1)
    guidance_scale: float = Field(1.0, ge=0.0, description="0: unconditional; 1: conditional; > 1: guided")


class GenerateConfig(FrozenModel):
    """How ``synthesize`` turns requests into cases (defaults; the Python call can override each)."""

    features_csv: str | None = Field(None, description="CSV of requested features (one row per request, with a "
                                     "source_case column) instead of the masks dataset's masks")
    failed_masks: Literal["quarantine", "keep"] = Field(
        "quarantine", description="a generated mask failing the plausibility checks is quarantined with the reason "
        "(as mask augmentation does), or kept with the reasons recorded in mask_check")
    checks: CheckConfig | None = Field(None, description="check bounds; None: the masks dataset's own (its "
                                       "augmentation config), else the defaults")
    sweep_points: int = Field(5, ge=2, description="requested volumes in the size-sweep montage")
    max_draws: int = Field(1, ge=1, le=100, description="masks drawn per request (each from its own recorded seed) "
                           "until one passes the checks, as mask augmentation draws its candidates")


class SbldmConfig(BackendConfig):
    """Everything that defines one trained sbldm synthesizer."""

    backend: Literal["sbldm"] = "sbldm"
    vae: VaeConfig = VaeConfig()
    vae_loss: VaeLossConfig = VaeLossConfig()
    vae_train: StageConfig
    features: FeatureConfig = FeatureConfig()
    unet: UNetConfig = UNetConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    diffusion_train: DiffusionTrainConfig
    sample: SampleConfig = SampleConfig()
    generate: GenerateConfig = GenerateConfig()

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        f = self.vae.factor
        x, y, z = self.data.shape
        return x // f, y // f, z

    @model_validator(mode="after")
    def _check(self) -> SbldmConfig:
        f = self.vae.factor
        bad = [s for s in self.data.shape[:2] if s % f]
        if bad:
            raise ValueError(f"data.shape {self.data.shape}: with {len(self.vae.channels)} VAE levels the two in-plane "
                             f"sides must be multiples of {f}; {bad} are not")
        if 2 in self.data.flip_axes:
            raise ValueError("data.flip_axes may not contain 2: it is the slice axis, and a flip would reverse the "
                             "slice positions the VAE is told")
        if self.data.train_crop is not None:
            raise ValueError("data.train_crop is not used by sbldm (the VAE trains on whole slices); remove it")
        check_latent_grid(self.latent_shape, self.unet.channels, f"in-plane / {f}, slices kept")
        if self.sample.steps > self.diffusion.num_train_timesteps:
            raise ValueError(f"sample.steps {self.sample.steps} exceeds num_train_timesteps "
                             f"{self.diffusion.num_train_timesteps}")
        return self

    def with_steps(self, steps: int | None) -> SbldmConfig:
        """The same config with the diffusion stage's steps replaced (the --steps option)."""
        return with_stage_steps(self, "diffusion_train", steps)

    def stage_digest(self, stage: Literal["vae", "diffusion"]) -> str:
        """Digest of the settings a stage's weights depend on."""
        d = self.model_dump(mode="json")
        for k in ("checkpoint_every", "keep_checkpoints"):  # when the weights are saved, not what they are
            d["diffusion_train"].pop(k)
        keep = ["seed", "data", "vae", "vae_loss", "vae_train"]
        if stage == "diffusion":
            keep += ["features", "unet", "diffusion", "diffusion_train"]
        return hashlib.sha256(json.dumps({k: d[k] for k in keep}, sort_keys=True).encode()).hexdigest()


PROFILES = ProfileDir(PROFILES_DIR, SbldmConfig, SbldmError, "sbldm")
# the profiles by name (configs/sbldm/<name>.yaml) or YAML path: list, find, refuse an unknown one, read (no torch)
list_profiles, profile_path, check_profile, load_profile = PROFILES.names, PROFILES.path, PROFILES.check, PROFILES.load
