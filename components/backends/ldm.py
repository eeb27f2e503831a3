"""The ``ldm`` synthesizer: a mask-conditioned 3-D latent diffusion model (MONAI's
``brats_mri_generative_diffusion`` recipe for all four modalities) of ``components.ldm``. Profiles are
``configs/ldm/*.yaml``; docs/ldm.md describes it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from components.ldm.config import LdmConfig, LdmError, check_profile, load_profile
from components.ldm.store import ldm_paths, weights_digest
from components.synthesis.config import SynthesizeConfig

if TYPE_CHECKING:  # torch loads when a model trains or samples: a config naming ldm is checked without it
    from components.backends.registry import ModelSummary
    from components.ldm.sampling import LdmSynthesisSummary

NAME = "ldm"


class LdmSynthesizer:
    """Train with ``components.ldm.training``, sample with ``components.ldm.sampling``."""

    def check_profile(self, profile: str) -> None:
        check_profile(profile)

    def resolve_config(self, profile: str, steps: int | None = None, config: BaseModel | None = None) -> LdmConfig:
        if config is not None and not isinstance(config, LdmConfig):
            try:
                config = LdmConfig.model_validate(config.model_dump())
            except ValueError as err:
                raise LdmError(f"ldm config of type {type(config).__name__} does not fit the ldm settings: {err}") from err
        return (config or load_profile(profile)).with_steps(steps)

    def train(self, workspace: str | Path, dataset: str, name: str, config: BaseModel, *,
              resume: bool | str = False, track: bool = True) -> ModelSummary:
        from components.ldm.training import train_ldm

        return train_ldm(workspace, dataset, name, self.resolve_config("", config=config), resume=resume,  # type: ignore[arg-type]
                         track=track)

    def model_files(self, workspace: str | Path, name: str) -> list[Path]:
        paths = ldm_paths(workspace, name)
        return [paths.autoencoder, paths.diffusion, paths.config, paths.stats]

    def weights_digest(self, workspace: str | Path, model: str) -> str:
        return weights_digest(workspace, model)

    def synthesize(self, workspace: str | Path, model: str, masks: str, name: str,
                   config: SynthesizeConfig) -> LdmSynthesisSummary:
        from components.ldm.sampling import synthesize_dataset

        return synthesize_dataset(workspace, model, masks, name, config)
