"""Tasks for the foundation stage: phantom, ingestion, montages."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from prefect import task

from components.brats import IngestConfig, ingest
from components.phantom import PhantomConfig, make_phantom
from components.viz import dataset_montage
from data_catalog import open_dataset
from tasks.common import CACHE, IO_RETRIES


@task(name="phantom", cache_policy=CACHE, persist_result=True, **IO_RETRIES)
def phantom_task(workspace: str, name: str, config: PhantomConfig) -> dict:
    s = make_phantom(workspace, name, config)
    return {"name": s.name, "n_cases": s.n_cases, "seconds": s.seconds, "line": s.line()}


@task(name="ingest", cache_policy=CACHE, persist_result=True, **IO_RETRIES)
def ingest_task(source: str, source_digest: str, workspace: str, name: str, config: IngestConfig) -> dict:
    # source_digest is part of the cache key: an unchanged source is a cache hit and does no work.
    s = ingest(source, workspace, name, config)
    d = asdict(s)
    d["line"] = s.line()
    return d


@task(name="montage", cache_policy=CACHE, persist_result=True, **IO_RETRIES)
def montage_task(workspace: str, name: str, manifest_sha256: str, n_cases: int = 4) -> str | None:
    out = dataset_montage(open_dataset(workspace, name), n_cases=n_cases)
    return str(out) if out else None


def montage_path(workspace: str, name: str) -> Path:
    return Path(workspace) / "datasets" / name / "montage.png"
