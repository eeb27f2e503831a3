"""Typed settings of the synthesizer stage and the YAML profiles that fill them.

One frozen pydantic model per concern (data grid, network, diffusion, training, sampling), all
nested in :class:`SynthesizerConfig`, which is what a profile in ``configs/synthesizer/`` holds and
what ``<workspace>/models/<name>/config.json`` records. GPU-scale settings are profiles of the same
code, never separate code paths.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator

from components.config_base import FrozenModel, with_stage_steps
from components.errors import InputError

PROFILES_DIR = Path(__file__).resolve().parents[2] / "configs" / "synthesizer"


class SynthesisError(InputError):
    """Wrong input or state for the synthesizer."""


class DataConfig(FrozenModel):
    """The grid the network sees and how intensities are scaled onto it."""

    spacing: tuple[float, float, float] | None = Field(
        None, description="voxel size in mm of the model grid; None keeps each dataset's own grid (no resampling)")
    shape: tuple[int, int, int] = Field(..., description="model grid (X, Y, Z): crop/pad around the head to this")
    percentiles: tuple[float, float] = Field((0.5, 99.5), description="per-modality window inside the head -> [-1, 1]")
    flip_axes: tuple[int, ...] = Field((0,), description="axes flipped at random (image and mask together)")
    flip_prob: float = Field(0.5, ge=0.0, le=1.0)
    train_crop: tuple[int, int, int] | None = Field(
        None, description="random crop of the model grid for each training draw (patch training: cheaper steps; "
        "the convolutional network still samples the whole grid); None trains on whole volumes")

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        lo, hi = self.percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}")
        if any(a not in (0, 1, 2) for a in self.flip_axes):
            raise ValueError(f"flip_axes must be spatial axes 0, 1 or 2, got {self.flip_axes}")
        if self.spacing is not None and any(s <= 0 for s in self.spacing):
            raise ValueError(f"spacing must be positive, got {self.spacing}")
        if self.train_crop is not None and any(c > s for c, s in zip(self.train_crop, self.shape, strict=True)):
            raise ValueError(f"train_crop {self.train_crop} must fit inside shape {self.shape}")
        return self


class BackendConfig(FrozenModel):
    """The fields the settings of the ldm, sbldm and label-map (labelldm) models open with, in this order;
    each narrows ``backend`` to its own name."""

    backend: str
    profile: str = "custom"
    description: str = ""
    seed: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = Field(True, description="bfloat16 autocast on a GPU; ignored on the CPU")
    data: DataConfig


class NetworkConfig(FrozenModel):
    """Arguments of MONAI's ``DiffusionModelUNet`` (spatial_dims 3; in/out channels come from the data)."""

    channels: tuple[int, ...] = (32, 64, 64)
    num_res_blocks: int | tuple[int, ...] = 1
    attention_levels: tuple[bool, ...] = (False, False, False)
    num_head_channels: int | tuple[int, ...] = 64
    norm_num_groups: int = 32
    use_flash_attention: bool = False
    gradient_checkpointing: bool = Field(
        False, description="recompute each residual and attention block of the U-Net in the backward pass instead of "
        "keeping their activations (torch.utils.checkpoint): less training memory for about one more forward "
        "pass; the weights and outputs are the same, so it is left out of the model digest")

    @model_validator(mode="after")
    def _check(self) -> NetworkConfig:
        if len(self.attention_levels) != len(self.channels):
            raise ValueError(f"attention_levels needs one entry per level: {len(self.channels)} levels, "
                             f"got {len(self.attention_levels)}")
        bad = [c for c in self.channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(f"every channel count must be a multiple of norm_num_groups={self.norm_num_groups}; "
                             f"{bad} are not")
        return self


class DiffusionConfig(FrozenModel):
    """Forward process and objective (Ho et al. 2020; cosine schedule of Nichol & Dhariwal 2021)."""

    num_train_timesteps: int = Field(1000, ge=2)
    schedule: Literal["cosine", "scaled_linear_beta"] = "cosine"
    beta_start: float = Field(0.0015, gt=0.0, description="scaled_linear_beta only")
    beta_end: float = Field(0.0195, gt=0.0, description="scaled_linear_beta only")
    prediction_type: Literal["epsilon"] = "epsilon"
    loss: Literal["l1", "mse"] = "mse"
    loss_weighting: Literal["none", "min_snr", "edm"] = Field(
        "none", description="per-timestep weight on the epsilon loss. min_snr: min(SNR, gamma) / SNR (Hang et al. "
        "2023); edm: 1 / c_out(t)^2, which with precondition 'edm' trains the inner network on a unit-variance "
        "target at every noise level (Karras et al. 2022)")
    min_snr_gamma: float = Field(5.0, gt=0.0)
    precondition: Literal["none", "edm"] = Field(
        "none", description="edm: eps = c_skip(t) x_t + c_out(t) F(c_in(t) x_t, mask, t), EDM's preconditioning "
        "written for epsilon (the model still predicts epsilon; schedulers and samplers are unchanged). It makes "
        "short CPU runs learn the image structure; none: the plain network (Med-DDPM)")
    sigma_data: float = Field(0.5, gt=0.0, description="RMS of the normalised data (edm preconditioning)")
    timestep_sampling: Literal["uniform", "lognormal"] = Field(
        "uniform", description="training timesteps: uniform over 0..T-1 (DDPM), or lognormal: the timestep whose "
        "noise level sigma = sqrt((1 - a) / a) is nearest to exp(N(p_mean, p_std^2)), EDM's training distribution, "
        "which spends the steps on the noise levels that shape the image")
    p_mean: float = -1.2
    p_std: float = Field(1.2, gt=0.0)
    prior: Literal["none", "healthy_mean"] = Field(
        "none", description="anatomical prior. healthy_mean: the voxel-wise mean of the training cases' healthy "
        "head tissue on the model grid (saved with the weights) is given to the network as 4 more conditioning "
        "channels, flipped and cropped with each draw, and the edm preconditioning is centred on it: the model "
        "denoises the residual x_0 - prior, so the layout the cases share (ventricles, cortex; BraTS is "
        "co-registered to one atlas) need not be learnt from noise. Needs precondition 'edm'; sigma_data is then "
        "the RMS of that residual. none: Med-DDPM's conditioning on the mask alone")
    clip_sample: bool = Field(True, description="clip the predicted x0 to [-1, 1], the data range")

    @model_validator(mode="after")
    def _check(self) -> DiffusionConfig:
        if self.loss_weighting == "edm" and self.precondition != "edm":
            raise ValueError("loss_weighting 'edm' needs precondition 'edm'")
        if self.prior != "none" and self.precondition != "edm":
            raise ValueError(f"prior {self.prior!r} needs precondition 'edm' (the preconditioning is centred on it)")
        return self


class TrainConfig(FrozenModel):
    steps: int = Field(..., ge=1, description="optimizer steps in total")
    batch_size: int = Field(1, ge=1)
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    lr: float = Field(1e-4, gt=0.0)
    warmup_steps: int = Field(0, ge=0, description="linear learning-rate warm-up")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="after warm-up: constant, or cosine decay to min_lr at the last step")
    min_lr: float = Field(0.0, ge=0.0)
    grad_clip: float | None = Field(1.0, gt=0.0)
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0)
    ema_start: int = Field(0, ge=0, description="optimizer step from which the EMA averages (before: a copy)")
    ema_every: int = Field(1, ge=1)
    checkpoint_every: int = Field(100, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    amp: bool = Field(True, description="bfloat16 autocast when on a GPU; ignored on the CPU")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    montage_cases: int = Field(2, ge=0, description="training masks sampled for the montage at the end (0: none)")
    montage_steps: int = Field(50, ge=1, description="DDIM steps for that montage")


# Each sampler's step-noise weight where none is given: DDIM's posterior noise (eta 1; eta 0 was noisier
# on the demo model), DPM-Solver++(2M)'s ODE form (eta 0).
DEFAULT_ETA: dict[str, float] = {"ddim": 1.0, "dpmpp2m": 0.0}


class SampleConfig(FrozenModel):
    """This model's sampler: the synthesize stage takes every field that its SynthesizeConfig leaves
    unset (None) from here, so a model samples the way its profile was validated.

    The default is DDIM with eta 1: on the demo model, 16 steps of it matched the 1000-step DDPM
    reference at 62x its speed, while eta 0 was noisier (docs/benchmarks.md, ``bench/sampling_quality.py``)."""

    sampler: Literal["ddim", "dpmpp2m", "ddpm"] = "ddim"
    steps: int = Field(50, ge=1, description="DDIM or DPM-Solver++(2M) steps (the DDPM reference always runs all T)")
    eta: float = Field(1.0, ge=0.0, le=1.0, description="step-noise weight of ddim and dpmpp2m: 0 deterministic "
                       "given the initial noise, 1 the DDPM-like posterior noise (ddim) or SDE-DPM-Solver++(2M); "
                       "left out: 1 for ddim, 0 (the ODE solver) for dpmpp2m")
    batch: int = Field(1, ge=1, description="volumes sampled together")

    @model_validator(mode="before")
    @classmethod
    def _sampler_eta(cls, data: Any) -> Any:
        # a block without eta takes its sampler's own (a dpmpp2m block: the ODE solver), as a run does
        if isinstance(data, dict) and "eta" not in data and data.get("sampler") in DEFAULT_ETA:
            return {**data, "eta": DEFAULT_ETA[data["sampler"]]}
        return data


class SynthesizerConfig(FrozenModel):
    """Everything that defines one trained synthesizer."""

    profile: str = "custom"
    description: str = ""
    seed: int = Field(0, ge=0)
    data: DataConfig
    network: NetworkConfig = NetworkConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    train: TrainConfig
    sample: SampleConfig = SampleConfig()

    @model_validator(mode="after")
    def _check(self) -> SynthesizerConfig:
        factor = 2 ** (len(self.network.channels) - 1)
        bad = [s for s in (*self.data.shape, *(self.data.train_crop or ())) if s % factor]
        if bad:
            raise ValueError(f"data.shape {self.data.shape} / train_crop {self.data.train_crop}: with {len(self.network.channels)} network levels every "
                             f"side must be a multiple of {factor}; {bad} are not (pick e.g. "
                             f"{tuple(-(-s // factor) * factor for s in self.data.shape)})")
        if self.sample.steps > self.diffusion.num_train_timesteps:
            raise ValueError(f"sample.steps {self.sample.steps} exceeds num_train_timesteps "
                             f"{self.diffusion.num_train_timesteps}")
        return self

    def with_steps(self, steps: int | None) -> SynthesizerConfig:
        """The same config with ``train.steps`` replaced (the --steps option)."""
        return with_stage_steps(self, "train", steps)

    def digest(self, ignore_steps: bool = False) -> str:
        d = self.model_dump(mode="json")
        if ignore_steps:
            d["train"].pop("steps")
        if d["diffusion"]["prior"] == "none":  # added later: without it, a model trained before keeps its digest
            d["diffusion"].pop("prior")
        d["network"].pop("gradient_checkpointing")  # memory, not the model: same weights with or without it
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


class SynthesizeConfig(FrozenModel):
    """One sampling run of a trained model over a masks dataset.

    sampler, steps, eta and batch left None are taken from the model's profile (``sample`` in its
    config.json); a value given here overrides it. The values used are recorded in the synthetic
    dataset (``components.synthesis.sampling.resolve_sampling``)."""

    sampler: Literal["ddim", "dpmpp2m", "ddpm"] | None = Field(
        None, description="ddim, dpmpp2m (DPM-Solver++(2M); eta > 0 its stochastic form) or ddpm (the full-length "
        "reference); "
        "None: the model's own (its profile's sample block)")
    steps: int | None = Field(None, ge=1, description="DDIM or DPM-Solver++(2M) steps; None: the model's "
                              "sample.steps (DDPM: always T)")
    eta: float | None = Field(None, ge=0.0, le=1.0, description="step-noise weight of ddim and dpmpp2m (0 is "
                              "deterministic given the initial noise); None: the model's sample.eta, or the "
                              "sampler's own (ddim 1, dpmpp2m 0) when it is not the model's. DDPM has none")
    seed: int = Field(0, ge=0, description="run seed; each case's own seed is recorded in the manifest")
    batch: int | None = Field(None, ge=1, description="volumes sampled together; None: the model's sample.batch")
    samples_per_mask: int = Field(1, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    montage_cases: int = Field(2, ge=0, description="cases in the real-vs-synthetic montage")


def list_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def load_profile(profile: str | Path) -> SynthesizerConfig:
    """Read a profile by name (``configs/synthesizer/<name>.yaml``) or from a YAML file path."""
    path = Path(profile)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = PROFILES_DIR / f"{profile}.yaml"
    if not path.is_file():
        raise SynthesisError(f"unknown synthesizer profile {str(profile)!r}: no file {path}; "
                             f"known profiles: {', '.join(list_profiles()) or 'none'}")
    with open(path, encoding="utf-8") as fh:
        data: dict[str, Any] = yaml.safe_load(fh) or {}
    data.setdefault("profile", path.stem)
    try:
        return SynthesizerConfig.model_validate(data)
    except ValueError as err:
        raise SynthesisError(f"profile {path}: {err}") from err
