"""Flows for the synthesizer stage: train a model on a dataset, sample a synthetic dataset.

Which synthesizer runs is a name in the registry of ``components.backends`` (``ddpm`` by default)."""

from __future__ import annotations

from typing import Literal

from prefect import flow, get_run_logger
from pydantic import Field

from components.backends import DEFAULT_SYNTHESIZER, SynthesizerName, get_synthesizer
from components.synthesis.config import SynthesizeConfig, SynthesizerConfig
from data_catalog import dataset_dir, open_dataset
from flows.params import StageParams
from tasks.common import run_cached
from tasks.synthesis import synthesize_task, train_synthesizer_task

BACKEND_HELP = "synthesizer backend (components.backends registry; ddpm: the pixel-space diffusion model)"


class TrainSynthesizerParams(StageParams):
    dataset: str = Field(description="dataset to train on (its train split only)")
    name: str = Field(description="model name (folder under <workspace>/models/)")
    backend: SynthesizerName = Field(DEFAULT_SYNTHESIZER, description=BACKEND_HELP)
    profile: str = Field("cpu-demo", description="profile name in configs/synthesizer/ or a YAML path")
    config: SynthesizerConfig | None = Field(None, description="explicit config (ddpm); overrides the profile")
    steps: int | None = Field(None, ge=1, description="total optimizer steps (overrides the profile)")
    resume: bool | Literal["auto"] = Field(False, description="continue from the last checkpoint; auto (the pipeline): continue a model of the same config and cases, move any other aside and start anew")
    track: bool = Field(True, description="log the training to MLflow")


class SynthesizeParams(StageParams):
    model: str = Field(description="trained model name (under <workspace>/models/)")
    masks: str = Field(description="masks dataset, or a real/phantom dataset used for its segs")
    name: str = Field(description="name of the synthetic dataset to write")
    backend: SynthesizerName = Field(DEFAULT_SYNTHESIZER, description=BACKEND_HELP + "; the one that trained the model")
    config: SynthesizeConfig = SynthesizeConfig()


@flow(name="train-synthesizer")
def train_synthesizer_flow(params: TrainSynthesizerParams) -> dict:
    logger, ws = get_run_logger(), params.root
    synthesizer = get_synthesizer(params.backend)
    cfg = synthesizer.resolve_config(params.profile, params.steps, params.config)
    ds = open_dataset(ws, params.dataset)
    out = run_cached(train_synthesizer_task, synthesizer.model_files(ws, params.name), workspace=ws,
                     backend=params.backend, dataset=params.dataset, manifest_sha256=ds.manifest_digest,
                     name=params.name, config=cfg, resume=params.resume, track=params.track)
    logger.info(out["line"])
    return out


@flow(name="synthesize")
def synthesize_flow(params: SynthesizeParams) -> dict:
    logger, ws = get_run_logger(), params.root
    # refuses an untrained model before anything runs
    digest = get_synthesizer(params.backend).weights_digest(ws, params.model)
    masks = open_dataset(ws, params.masks)
    out = run_cached(synthesize_task, [dataset_dir(ws, params.name) / "dataset.json"], workspace=ws,
                     backend=params.backend, model=params.model, model_digest=digest, masks=params.masks,
                     masks_manifest_sha256=masks.manifest_digest, name=params.name, config=params.config)
    logger.info(out["line"])
    return out
