"""Tasks for the mask stage: the masks dataset and its figures, through the mask source the flow
names (components.backends)."""

from __future__ import annotations

from prefect import task
from pydantic import BaseModel

from components.backends import get_mask_source, summary_dict
from tasks.common import CACHE, IO_RETRIES


@task(name="augment-masks", cache_policy=CACHE, persist_result=True, **IO_RETRIES)
def augment_masks_task(workspace: str, backend: str, source: str, source_manifest_sha256: str, name: str,
                       config: BaseModel) -> dict:
    # source_manifest_sha256 is part of the cache key: a changed source dataset re-runs the stage.
    return summary_dict(get_mask_source(backend).make(workspace, source, name, config))


@task(name="mask-figures", cache_policy=CACHE, persist_result=True, **IO_RETRIES)
def mask_figures_task(workspace: str, backend: str, name: str, manifest_sha256: str, n_cases: int = 4) -> dict:
    return get_mask_source(backend).figures(workspace, name, n_cases)


@task(name="combine-masks", cache_policy=CACHE, persist_result=True, **IO_RETRIES)
def combine_masks_task(workspace: str, name: str, parts: dict[str, str], digests: dict[str, str]) -> str:
    """One masks dataset holding every mask source's masks (components.masks.combine); ``digests`` (the
    parts' manifest digests) key the cache."""
    from components.masks.combine import combine_masks

    return combine_masks(workspace, name, parts).manifest_digest
