"""Typed settings of the label-map latent diffusion model and the YAML profiles in ``configs/labelldm/``.

One profile holds the label model (autoencoder + unconditional latent diffusion, what the ``ldm`` mask
source trains) and, under ``segmenter``, what the ``ldmseg`` segmenter adds: its own stage lengths, the
ControlNet and the ensemble used to predict. Nothing here imports torch: a config naming a profile is
checked without it.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from components.config_base import FrozenModel, ProfileDir, check_latent_grid, check_levels
from components.errors import InputError
from components.ldm.config import LatentDiffusionConfig, StageConfig, UNetConfig
from components.synthesis.config import BackendConfig

PROFILES_DIR = Path(__file__).resolve().parents[2] / "configs" / "labelldm"

Stage = Literal["autoencoder", "diffusion", "controlnet"]
STAGES: tuple[Stage, ...] = ("autoencoder", "diffusion", "controlnet")


class LabelDiffusionConfig(LatentDiffusionConfig):
    """The label model's forward process; its U-Net may predict the noise, v or the clean latent."""

    prediction_type: Literal["epsilon", "v_prediction", "sample"] = Field(  # type: ignore[assignment]
        "epsilon", description="what the U-Net (and the ControlNet steering it) predicts: the noise, v = alpha_t eps - "
        "sigma_t z0 (Salimans & Ho 2022) or the clean latent z0; with few DDIM steps from pure noise, v and z0 give "
        "a usable latent estimate at high noise where epsilon divides its error by a small alpha_t")


class LabelLdmError(InputError):
    """Wrong input or state for the label-map latent diffusion model (mask source ``ldm``, segmenter ``ldmseg``)."""


class LabelAutoencoderConfig(FrozenModel):
    """Arguments of MONAI's ``AutoencoderKL`` (spatial_dims 3) on one-hot label maps: background, head and
    one channel per tumour label of the scheme, in and out (the output is logits)."""

    channels: tuple[int, ...] = (32, 64, 64)
    latent_channels: int = Field(3, ge=1)
    num_res_blocks: int = Field(1, ge=1)
    norm_num_groups: int = Field(16, ge=1)
    attention_levels: tuple[bool, ...] = (False, False, False)

    @property
    def factor(self) -> int:
        """Downsampling of the label grid to the latent grid, per axis."""
        return 2 ** (len(self.channels) - 1)

    @model_validator(mode="after")
    def _check(self) -> LabelAutoencoderConfig:
        check_levels("autoencoder", self.channels, self.norm_num_groups, self.attention_levels)
        return self


class LabelLossConfig(FrozenModel):
    """Autoencoder loss: dice * Dice + ce * cross-entropy (MONAI ``DiceCELoss`` on the decoded logits,
    softmax over the classes) + kl * KL(posterior || N(0, 1))."""

    dice: float = Field(1.0, ge=0.0)
    ce: float = Field(1.0, ge=0.0)
    kl: float = Field(1e-6, ge=0.0)


class LabelSampleConfig(FrozenModel):
    """How the mask source samples label maps: DDIM from seeded noise, ``eta`` 0 (deterministic given the noise)."""

    steps: int = Field(25, ge=1, description="DDIM steps")
    eta: float = Field(0.0, ge=0.0, le=1.0, description="DDIM noise weight (0: the initial noise fixes the sample)")
    batch: int = Field(4, ge=1, description="label maps sampled together")


class ControlNetConfig(FrozenModel):
    """MONAI ``ControlNet``: a trainable copy of the frozen U-Net's encoder (copied weights, zero
    convolutions out) whose conditioning embedding takes the four normalised MRIs on the label grid and
    brings them to the latent grid with strided convolutions (one per autoencoder level below the first)."""

    embedding_channels: tuple[int, ...] = Field((16, 32, 64), description="conditioning embedding channels; "
                                                "one more entry than the autoencoder has downsamplings")
    conditioning_scale: float = Field(1.0, gt=0.0)


class SegmenterConfig(FrozenModel):
    """What the ``ldmseg`` segmenter trains and how it predicts (N samples averaged, threshold)."""

    autoencoder_steps: int | None = Field(None, ge=1, description="label autoencoder steps for the segmenter "
                                          "(None: autoencoder_train.steps)")
    diffusion_steps: int | None = Field(None, ge=1, description="label diffusion steps for the segmenter "
                                        "(None: diffusion_train.steps)")
    prediction_type: Literal["epsilon", "v_prediction", "sample"] | None = Field(
        None, description="what the segmenter's diffusion U-Net and ControlNet predict (None: diffusion.prediction_type); "
        "the segmenter samples with few DDIM steps from pure noise, where v keeps the latent estimate usable")
    controlnet: ControlNetConfig = ControlNetConfig()
    controlnet_train: StageConfig = StageConfig(steps=1000, batch_size=2, lr=1e-4)
    samples: int = Field(4, ge=1, le=256, description="N samples per case; their mean is thresholded")
    sample_steps: int = Field(10, ge=1, description="DDIM steps per sample (eta 0)")
    threshold: float = Field(0.5, gt=0.0, lt=1.0, description="a region where the mean of its N probabilities exceeds this")
    calibration_bins: int = Field(10, ge=2, le=100, description="variance bins of the calibration figure")


class LabelLdmConfig(BackendConfig):
    """Everything that defines one trained label model (and, with ``segmenter``, one ldmseg model)."""

    backend: Literal["labelldm"] = "labelldm"
    autoencoder: LabelAutoencoderConfig = LabelAutoencoderConfig()
    loss: LabelLossConfig = LabelLossConfig()
    autoencoder_train: StageConfig
    unet: UNetConfig = UNetConfig(channels=(64, 128, 128), attention_levels=(False, False, True),
                                  num_head_channels=(0, 0, 32), num_res_blocks=1, norm_num_groups=16)
    diffusion: LabelDiffusionConfig = LabelDiffusionConfig()
    diffusion_train: StageConfig
    latent: Literal["posterior_mean"] = Field(
        "posterior_mean", description="the diffusion learns the encoder's posterior means; the scale factor is 1 / "
        "their std over the training cases (and their flips)")
    sample: LabelSampleConfig = LabelSampleConfig()
    segmenter: SegmenterConfig = SegmenterConfig()

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        f = self.autoencoder.factor
        return tuple(s // f for s in self.data.shape)  # type: ignore[return-value]

    @model_validator(mode="after")
    def _check(self) -> LabelLdmConfig:
        f = self.autoencoder.factor
        bad = [s for s in self.data.shape if s % f]
        if bad:
            raise ValueError(f"data.shape {list(self.data.shape)}: with {len(self.autoencoder.channels)} autoencoder "
                             f"levels every side must be a multiple of {f}; {bad} are not")
        if self.data.train_crop is not None:
            raise ValueError("data.train_crop: the label model trains on whole label maps (GroupNorm sees the whole "
                             "grid at sampling time); set it to null")
        check_latent_grid(list(self.latent_shape), self.unet.channels, f"data.shape / {f}")
        n_emb = len(self.segmenter.controlnet.embedding_channels)
        if n_emb != len(self.autoencoder.channels):
            raise ValueError(f"segmenter.controlnet.embedding_channels needs {len(self.autoencoder.channels)} entries "
                             f"(one per autoencoder level: {int(math.log2(f))} strided convolutions bring the MRIs "
                             f"to the latent grid), got {n_emb}")
        for what, steps in (("sample.steps", self.sample.steps), ("segmenter.sample_steps", self.segmenter.sample_steps)):
            if steps > self.diffusion.num_train_timesteps:
                raise ValueError(f"{what} {steps} exceeds diffusion.num_train_timesteps {self.diffusion.num_train_timesteps}")
        return self

    def for_segmenter(self, seed: int | None = None) -> LabelLdmConfig:
        """The config the ldmseg segmenter trains: the segmenter's stage lengths (when set) and ``seed``."""
        s = self.segmenter
        update: dict[str, Any] = {}
        if s.autoencoder_steps is not None:
            update["autoencoder_train"] = self.autoencoder_train.model_copy(update={"steps": s.autoencoder_steps})
        if s.diffusion_steps is not None:
            update["diffusion_train"] = self.diffusion_train.model_copy(update={"steps": s.diffusion_steps})
        if s.prediction_type is not None:
            update["diffusion"] = self.diffusion.model_copy(update={"prediction_type": s.prediction_type})
        if seed is not None:
            update["seed"] = int(seed)
        return self.model_copy(update=update)

    def stage_digest(self, stage: Stage) -> str:
        """Digest of the settings a stage's weights depend on (each stage depends on those before it)."""
        d = self.model_dump(mode="json")
        keep = ["seed", "data", "autoencoder", "loss", "autoencoder_train"]
        if stage in ("diffusion", "controlnet"):
            keep += ["unet", "diffusion", "diffusion_train", "latent"]
        if stage == "controlnet":
            d["segmenter"] = {k: d["segmenter"][k] for k in ("controlnet", "controlnet_train")}
            keep += ["segmenter"]
        return hashlib.sha256(json.dumps({k: d[k] for k in keep}, sort_keys=True).encode()).hexdigest()


PROFILES = ProfileDir(PROFILES_DIR, LabelLdmConfig, LabelLdmError, "labelldm")
# the profiles by name (configs/labelldm/<name>.yaml) or YAML path: list, refuse an unknown one, read (no torch)
list_profiles, check_profile, load_profile = PROFILES.names, PROFILES.check, PROFILES.load
