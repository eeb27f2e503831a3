"""The ``sbldm`` synthesizer: slice-based latent diffusion that writes an image AND its tumour mask per
requested set of tumour features (``components.sbldm``). Profiles are ``configs/sbldm/*.yaml``; docs/sbldm.md
describes it. It needs no mask source: the masks dataset it is given is only the list of requests."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from components.sbldm.config import SbldmConfig, SbldmError, check_profile, load_profile
from components.sbldm.store import sbldm_paths, weights_digest
from components.synthesis.config import SynthesizeConfig

if TYPE_CHECKING:  # torch loads when a model trains or samples: a config naming sbldm is checked without it
    from components.backends.registry import ModelSummary
    from components.sbldm.sampling import SbldmSynthesisSummary

NAME = "sbldm"


class SbldmSynthesizer:
    """Train with ``components.sbldm.training``, sample with ``components.sbldm.sampling``."""

    def check_profile(self, profile: str) -> None:
        check_profile(profile)

    def resolve_config(self, profile: str, steps: int | None = None, config: BaseModel | None = None) -> SbldmConfig:
        if config is not None and not isinstance(config, SbldmConfig):
            try:
                config = SbldmConfig.model_validate(config.model_dump())
            except ValueError as err:
                raise SbldmError(f"sbldm config of type {type(config).__name__} does not fit the sbldm settings: {err}") from err
        return (config or load_profile(profile)).with_steps(steps)

    def train(self, workspace: str | Path, dataset: str, name: str, config: BaseModel, *,
              resume: bool | str = False, track: bool = True) -> ModelSummary:
        from components.sbldm.training import train_sbldm

        return train_sbldm(workspace, dataset, name, self.resolve_config("", config=config), resume=resume,  # type: ignore[arg-type]
                           track=track)

    def model_files(self, workspace: str | Path, name: str) -> list[Path]:
        paths = sbldm_paths(workspace, name)
        return [paths.vae, paths.diffusion, paths.config, paths.stats]

    def weights_digest(self, workspace: str | Path, model: str) -> str:
        return weights_digest(workspace, model)

    def synthesize(self, workspace: str | Path, model: str, masks: str, name: str,
                   config: SynthesizeConfig) -> SbldmSynthesisSummary:
        from components.sbldm.sampling import synthesize_dataset

        return synthesize_dataset(workspace, model, masks, name, config)

    def dataset_metrics(self, workspace: str | Path, name: str) -> dict[str, float]:
        """What a written dataset adds to FID/KID/MS-SSIM on MLflow: the controllability errors
        (``ctrl_err_<feature>``) and the generated masks' plausibility pass rate (``mask_pass_rate``)."""
        from components.sbldm.features import controllability_metrics

        return controllability_metrics(workspace, name)
