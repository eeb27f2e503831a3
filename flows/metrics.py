"""Flows for the metrics stage: segmentation scores per case and region, synthesis scores per modality."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from pydantic import BaseModel, ConfigDict

from components.metrics import code_digest
from components.metrics.segmentation import SegmentationEvalConfig, inputs_digest
from components.metrics.synthesis import SynthesisEvalConfig
from data_catalog import open_dataset
from tasks.common import run_cached
from tasks.metrics import evaluate_segmentation_task, evaluate_synthesis_task, synthesis_outputs


class SegmentationEvalParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    gt: str  # a folder of seg files or a dataset name in the workspace
    pred: str
    out: str
    workspace: str = "workspace"
    config: SegmentationEvalConfig


class SynthesisEvalParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    real: str
    synthetic: str
    out: str | None = None  # default: <workspace>/metrics/synthesis_<synthetic>_vs_<real>.json
    workspace: str = "workspace"
    config: SynthesisEvalConfig = SynthesisEvalConfig()


@flow(name="evaluate-segmentation")
def evaluate_segmentation_flow(params: SegmentationEvalParams) -> dict:
    logger = get_run_logger()
    ws = str(Path(params.workspace).resolve())
    gt = str(Path(params.gt).resolve()) if Path(params.gt).is_dir() else params.gt
    pred = str(Path(params.pred).resolve())
    out = str(Path(params.out).resolve())
    gt_digest, pred_digest = inputs_digest(gt, pred, ws)
    result = run_cached(
        evaluate_segmentation_task, [Path(out), Path(out).with_suffix(".json")], gt=gt, gt_digest=gt_digest,
        pred=pred, pred_digest=pred_digest, workspace=ws, out=out, config=params.config, code_digest=code_digest(),
    )
    logger.info("segmentation scores of %d cases -> %s (%d problems)", result["n_cases"], out, len(result["problems"]))
    return result


def default_synthesis_out(workspace: str, real: str, synthetic: str) -> str:
    return str(Path(workspace) / "metrics" / f"synthesis_{synthetic}_vs_{real}.json")


@flow(name="evaluate-synthesis")
def evaluate_synthesis_flow(params: SynthesisEvalParams) -> dict:
    logger = get_run_logger()
    ws = str(Path(params.workspace).resolve())
    out = str(Path(params.out or default_synthesis_out(ws, params.real, params.synthetic)).resolve())
    real_digest = open_dataset(ws, params.real).manifest_digest
    synth_digest = open_dataset(ws, params.synthetic).manifest_digest
    result = run_cached(
        evaluate_synthesis_task, synthesis_outputs(out), workspace=ws, real=params.real, real_digest=real_digest,
        synthetic=params.synthetic, synthetic_digest=synth_digest, out=out, config=params.config,
        code_digest=code_digest(),
    )
    logger.info("synthesis scores of %s vs %s -> %s", params.synthetic, params.real, result["json"])
    return result
