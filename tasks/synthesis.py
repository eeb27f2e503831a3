"""Tasks for the synthesizer stage: training and sampling (cached on dataset digests + config)."""

from __future__ import annotations

import logging

from prefect import task

from components.synthesis.config import SynthesizeConfig, SynthesizerConfig
from tasks.common import CACHE, IO_RETRIES


def _show_component_progress() -> None:
    """Prefect sets the root logger to WARNING; let the stage's INFO progress lines through (once)."""
    lg = logging.getLogger("components.synthesis")
    if lg.level == logging.NOTSET:
        lg.setLevel(logging.INFO)


@task(name="train-synthesizer", cache_policy=CACHE, persist_result=True)
def train_synthesizer_task(workspace: str, dataset: str, manifest_sha256: str, name: str, config: SynthesizerConfig,
                           resume: bool | str, track: bool = True) -> dict:
    # manifest_sha256 is part of the cache key: new or changed training cases mean a new run
    from components.synthesis.training import train_synthesizer

    _show_component_progress()
    r = train_synthesizer(workspace, dataset, name, config, resume=resume, track=track)
    return {"name": r.name, "model_dir": str(r.model_dir), "steps": r.steps, "start_step": r.start_step,
            "final_loss": r.final_loss, "smoothed_loss": r.smoothed_loss, "seconds": r.seconds,
            "train_seconds": r.train_seconds, "n_params": r.n_params, "device": r.device,
            "montage": str(r.montage) if r.montage else None, "run_id": r.run_id, "weights_sha256": r.weights_sha256,
            "line": r.line()}


@task(name="synthesize", cache_policy=CACHE, persist_result=True, **IO_RETRIES)
def synthesize_task(workspace: str, model: str, model_digest: str, masks: str, masks_manifest_sha256: str, name: str,
                    config: SynthesizeConfig) -> dict:
    # model_digest (the weights) and the masks manifest digest key the cache
    from components.synthesis.writer import synthesize_dataset

    _show_component_progress()
    s = synthesize_dataset(workspace, model, masks, name, config)
    return {"name": s.name, "n_ok": s.n_ok, "n_quarantined": s.n_quarantined, "n_written": s.n_written,
            "n_reused": s.n_reused, "seconds": s.seconds, "seconds_per_volume": s.seconds_per_volume,
            "sampler": s.sampler, "steps": s.steps, "montage": str(s.montage) if s.montage else None, "line": s.line()}
