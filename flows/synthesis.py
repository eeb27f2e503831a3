"""Flows for the synthesizer stage: train a model on a dataset, sample a synthetic dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger
from pydantic import BaseModel, ConfigDict, Field

from components.synthesis.config import SynthesizeConfig, SynthesizerConfig, load_profile
from components.synthesis.store import model_paths, weights_digest
from data_catalog import dataset_dir, open_dataset
from tasks.common import run_cached
from tasks.synthesis import synthesize_task, train_synthesizer_task


class TrainSynthesizerParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    workspace: str = "workspace"
    dataset: str
    name: str
    profile: str = Field("cpu-demo", description="profile name in configs/synthesizer/ or a YAML path")
    config: SynthesizerConfig | None = Field(None, description="explicit config; overrides the profile")
    steps: int | None = Field(None, ge=1, description="total optimizer steps (overrides the profile)")
    resume: bool | Literal["auto"] = Field(False, description="continue from the last checkpoint; auto (the pipeline): continue a model of the same config and cases, move any other aside and start anew")
    track: bool = True


class SynthesizeParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    workspace: str = "workspace"
    model: str
    masks: str
    name: str
    config: SynthesizeConfig = SynthesizeConfig()


@flow(name="train-synthesizer")
def train_synthesizer_flow(params: TrainSynthesizerParams) -> dict:
    logger = get_run_logger()
    ws = str(Path(params.workspace).resolve())
    cfg = (params.config or load_profile(params.profile)).with_steps(params.steps)
    ds = open_dataset(ws, params.dataset)
    paths = model_paths(ws, params.name)
    out = run_cached(train_synthesizer_task, [paths.ema, paths.config], workspace=ws, dataset=params.dataset,
                     manifest_sha256=ds.manifest_digest, name=params.name, config=cfg, resume=params.resume,
                     track=params.track)
    logger.info(out["line"])
    return out


@flow(name="synthesize")
def synthesize_flow(params: SynthesizeParams) -> dict:
    logger = get_run_logger()
    ws = str(Path(params.workspace).resolve())
    digest = weights_digest(ws, params.model)  # refuses an untrained model before anything runs
    masks = open_dataset(ws, params.masks)
    out = run_cached(synthesize_task, [dataset_dir(ws, params.name) / "dataset.json"], workspace=ws,
                     model=params.model, model_digest=digest, masks=params.masks,
                     masks_manifest_sha256=masks.manifest_digest, name=params.name, config=params.config)
    logger.info(out["line"])
    return out
