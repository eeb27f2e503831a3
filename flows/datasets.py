"""Flows for the foundation stage: the embedded phantom dataset, BraTS ingestion and synthetic sets
made by other tools."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from prefect import flow, get_run_logger
from pydantic import Field

from components.brats import IngestConfig, source_fingerprint
from components.foreign import ForeignIngestConfig, ingest_synthetic
from components.phantom import PhantomConfig
from data_catalog import dataset_dir, open_dataset
from flows.params import StageParams
from tasks.common import run_cached
from tasks.datasets import ingest_task, montage_task, phantom_task


class PhantomParams(StageParams):
    name: str = Field("phantom", description="dataset name in the workspace catalog")
    config: PhantomConfig = PhantomConfig()


class IngestParams(StageParams):
    source: str = Field(description="folder holding the release (a Task folder, a release folder or any parent)")
    name: str = Field(description="dataset name in the workspace catalog")
    config: IngestConfig = IngestConfig()


def _with_montage(workspace: str, name: str) -> str | None:
    ds = open_dataset(workspace, name)
    return run_cached(
        montage_task, [ds.root / "montage.png"], workspace=workspace, name=name, manifest_sha256=ds.manifest_digest
    )


@flow(name="phantom")
def phantom_flow(params: PhantomParams) -> dict:
    logger, ws = get_run_logger(), params.root
    out = dataset_dir(ws, params.name)
    summary = run_cached(phantom_task, [out / "dataset.json"], workspace=ws, name=params.name, config=params.config)
    summary["montage"] = _with_montage(ws, params.name)
    logger.info(summary["line"])
    return summary


@flow(name="ingest")
def ingest_flow(params: IngestParams) -> dict:
    logger, ws = get_run_logger(), params.root
    source = str(Path(params.source).resolve())
    out = dataset_dir(ws, params.name)
    digest = source_fingerprint(source)
    summary = run_cached(
        ingest_task, [out / "dataset.json"], source=source, source_digest=digest, workspace=ws, name=params.name,
        config=params.config,
    )
    summary["montage"] = _with_montage(ws, params.name)
    logger.info(summary["line"])
    return summary


class IngestSyntheticParams(StageParams):
    source: str = Field(description="folder of the synthetic cases (BraTS 2021/2023 naming or MSD Task01)")
    name: str = Field(description="name of the synthetic dataset in the workspace catalog")
    real: str = Field(description="the real dataset the cases derive from (its test split is held out)")
    links: str = Field(description="CSV with columns case_id,source_case (optional: mask_case, quality_score)")
    generator_train_cases: str = Field(description="what the generator learnt from: a text file of case ids of REAL, "
                                       "one a line, or the word `unknown` (the ablation then refuses the set)")
    config: ForeignIngestConfig = ForeignIngestConfig()


@flow(name="ingest-synthetic")
def ingest_synthetic_flow(params: IngestSyntheticParams) -> dict:
    """A synthetic set made by another tool, validated like a release and linked to its real cases.
    Cases whose files are unchanged since the last run are reused (components.brats.ingest_case)."""
    logger, ws = get_run_logger(), params.root
    s = ingest_synthetic(str(Path(params.source).resolve()), ws, params.name, params.real,
                         str(Path(params.links).resolve()), params.generator_train_cases, params.config)
    summary = {**asdict(s), "line": s.line()}
    summary["montage"] = _with_montage(ws, params.name)
    logger.info(summary["line"])
    return summary
