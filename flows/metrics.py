"""Flows for the metrics stage: segmentation scores per case and region, synthesis scores per modality."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from pydantic import Field

from components.metrics import code_digest
from components.metrics.segmentation import SegmentationEvalConfig, inputs_digest
from components.metrics.synthesis import SynthesisEvalConfig
from data_catalog import open_dataset
from flows.params import StageParams
from tasks.common import run_cached
from tasks.metrics import evaluate_segmentation_task, evaluate_synthesis_task, synthesis_outputs


class SegmentationEvalParams(StageParams):
    gt: str = Field(description="ground truth: a folder of seg files (searched recursively) or a dataset name in the "
                    "workspace catalog (its ok cases with a seg)")
    pred: str = Field(description="folder of predicted segmentations")
    out: str = Field(description="per-case CSV to write (a .json goes beside it)")
    config: SegmentationEvalConfig


class SynthesisEvalParams(StageParams):
    real: str = Field(description="real (or phantom) dataset name in the workspace catalog")
    synthetic: str = Field(description="synthetic dataset name in the workspace catalog")
    out: str | None = Field(None, description="report path (default: <workspace>/metrics/synthesis_<synthetic>_vs_"
                            "<real>.json, with a .csv beside it)")
    config: SynthesisEvalConfig = SynthesisEvalConfig()


@flow(name="evaluate-segmentation")
def evaluate_segmentation_flow(params: SegmentationEvalParams) -> dict:
    logger, ws = get_run_logger(), params.root
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
    logger, ws = get_run_logger(), params.root
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
