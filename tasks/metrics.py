"""Tasks for the metrics stage: segmentation scores and synthesis scores (thin wrappers)."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from components.metrics.segmentation import SegmentationEvalConfig, evaluate_segmentation, write_segmentation_report
from components.metrics.synthesis import SynthesisEvalConfig, evaluate_synthesis, write_report
from tasks.common import CACHE, IO_RETRIES


@task(name="evaluate-segmentation", cache_policy=CACHE, persist_result=True, **IO_RETRIES)
def evaluate_segmentation_task(
    gt: str, gt_digest: str, pred: str, pred_digest: str, workspace: str, out: str, config: SegmentationEvalConfig,
    code_digest: str = "",
) -> dict:
    # The digests are part of the cache key: unchanged files and metric code are a cache hit and do no work.
    report = evaluate_segmentation(gt, pred, config, workspace)
    csv_path, json_path = write_segmentation_report(
        report, out, config, extra={"gt": gt, "gt_digest": gt_digest, "pred": pred, "pred_digest": pred_digest},
    )
    return {
        "csv": str(csv_path), "json": str(json_path), "n_cases": report.n_cases, "problems": report.problems,
        "summary": report.summary().to_dict(orient="records"), "seconds": report.seconds,
    }


@task(name="evaluate-synthesis", cache_policy=CACHE, persist_result=True, **IO_RETRIES)
def evaluate_synthesis_task(
    workspace: str, real: str, real_digest: str, synthetic: str, synthetic_digest: str, out: str,
    config: SynthesisEvalConfig, code_digest: str = "",
) -> dict:
    report = evaluate_synthesis(workspace, real, synthetic, config)
    json_path, csv_path = write_report(report, out)
    return {"json": str(json_path), "csv": str(csv_path), "rows": report.rows, "info": report.info}


def synthesis_outputs(out: str) -> list[Path]:
    base = Path(out).with_suffix("") if Path(out).suffix.lower() in (".json", ".csv") else Path(out)
    return [base.with_suffix(".json"), base.with_suffix(".csv")]
