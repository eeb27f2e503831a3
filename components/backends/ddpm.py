"""The ``ddpm`` synthesizer: the pixel-space, mask-conditioned 3-D diffusion model (Med-DDPM recipe
on MONAI parts) of ``components.synthesis``. Profiles are ``configs/synthesizer/*.yaml``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from components.synthesis.config import (
    SynthesisError,
    SynthesizeConfig,
    SynthesizerConfig,
    list_profiles,
    load_profile,
)
from components.synthesis.store import model_paths, weights_digest

if TYPE_CHECKING:  # torch loads when a model trains or samples: a config naming ddpm is checked without it
    from components.synthesis.training import TrainResult
    from components.synthesis.writer import SynthesisSummary

NAME = "ddpm"


class DdpmSynthesizer:
    """Train with ``components.synthesis.training``, sample with ``components.synthesis.writer``."""

    def check_profile(self, profile: str) -> None:
        if profile not in list_profiles() and not (profile.endswith((".yaml", ".yml")) and Path(profile).is_file()):
            raise SynthesisError(f"unknown synthesizer profile {profile!r}: expected one of {list_profiles()} "
                                 f"or a YAML file")

    def resolve_config(self, profile: str, steps: int | None = None,
                       config: BaseModel | None = None) -> SynthesizerConfig:
        if config is not None and not isinstance(config, SynthesizerConfig):
            config = SynthesizerConfig.model_validate(config.model_dump())
        return (config or load_profile(profile)).with_steps(steps)

    def train(self, workspace: str | Path, dataset: str, name: str, config: BaseModel, *,
              resume: bool | str = False, track: bool = True) -> TrainResult:
        from components.synthesis.training import train_synthesizer

        return train_synthesizer(workspace, dataset, name, self.resolve_config("", config=config), resume=resume,
                                 track=track, run_params={"backend": NAME})

    def model_files(self, workspace: str | Path, name: str) -> list[Path]:
        paths = model_paths(workspace, name)
        return [paths.ema, paths.config]

    def weights_digest(self, workspace: str | Path, model: str) -> str:
        return weights_digest(workspace, model)

    def synthesize(self, workspace: str | Path, model: str, masks: str, name: str,
                   config: SynthesizeConfig) -> SynthesisSummary:
        from components.synthesis.writer import synthesize_dataset

        return synthesize_dataset(workspace, model, masks, name, config)
