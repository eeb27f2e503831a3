"""Tasks for the synthesizer stage: training and sampling (cached on dataset digests + config), each
through the synthesizer backend the flow names (components.backends)."""

from __future__ import annotations

import logging

from prefect import task
from pydantic import BaseModel

from components.backends import get_synthesizer, summary_dict
from components.synthesis.config import SynthesizeConfig
from tasks.common import CACHE, IO_RETRIES


def _show_component_progress() -> None:
    """Prefect sets the root logger to WARNING; let the stage's INFO progress lines through (once)."""
    lg = logging.getLogger("components.synthesis")
    if lg.level == logging.NOTSET:
        lg.setLevel(logging.INFO)


@task(name="train-synthesizer", cache_policy=CACHE, persist_result=True)
def train_synthesizer_task(workspace: str, backend: str, dataset: str, manifest_sha256: str, name: str,
                           config: BaseModel, resume: bool | str, track: bool = True) -> dict:
    # manifest_sha256 is part of the cache key: new or changed training cases mean a new run
    _show_component_progress()
    return summary_dict(get_synthesizer(backend).train(workspace, dataset, name, config, resume=resume, track=track))


@task(name="synthesize", cache_policy=CACHE, persist_result=True, **IO_RETRIES)
def synthesize_task(workspace: str, backend: str, model: str, model_digest: str, masks: str,
                    masks_manifest_sha256: str, name: str, config: SynthesizeConfig) -> dict:
    # model_digest (the weights) and the masks manifest digest key the cache
    _show_component_progress()
    return summary_dict(get_synthesizer(backend).synthesize(workspace, model, masks, name, config))


@task(name="combine-synthetic", cache_policy=CACHE, persist_result=True, **IO_RETRIES)
def combine_synthetic_task(workspace: str, name: str, parts: dict[str, str], digests: dict[str, str]) -> str:
    """One synthetic dataset holding every synthesizer's cases (components.synthetic_sets); ``digests``
    (the parts' manifest digests) key the cache."""
    from components.synthetic_sets import combine_synthetic

    return combine_synthetic(workspace, name, parts).manifest_digest
