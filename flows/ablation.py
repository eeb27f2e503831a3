"""Flows for export and the ratio ablation. Configurations fan out through the flow's task runner."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from components.ablation import AblationConfig, MixPlan, check_no_leak, generator_record, plan_mixes
from components.ablation_report import close_parent_run
from components.backends import DEFAULT_SEGMENTER, SegmenterNames
from components.tracking import resume_run
from data_catalog import Dataset, open_dataset
from flows.params import StageParams
from tasks.ablation import (
    configuration_task,
    export_task,
    parent_run_task,
    prepare_segmenter_task,
    summary_task,
)


class ExportParams(StageParams):
    dataset: str = Field(description="the dataset to export; with `mix`, the real dataset of the ablation")
    format: Literal["brats", "nnunet"] = Field(description="brats or nnunet (a mix is always nnunet)")
    out: str = Field(description="brats: the release folder to write; nnunet: the nnUNet_raw folder that receives "
                     "Dataset<id>_<name>; a mix: a new folder (or an earlier mix export), replaced whole")
    synthetic: str | None = Field(None, description="with `mix`: the synthetic dataset of the ablation")
    mix: AblationConfig | None = Field(None, description="export the ablation's mixes for this config "
                                       "(components.export.export_mixes) instead of one dataset")


def check_export(params: ExportParams) -> tuple[Dataset, Dataset | None]:
    """What can be checked before Prefect starts: the datasets exist, and for a mix the grid fits the
    data and passes the ablation's leak checks (one sentence otherwise)."""
    from components.export import ExportError, check_mix_out, plan_export_mixes

    ws = params.root
    ds = open_dataset(ws, params.dataset)
    if params.mix is None:
        if params.synthetic:
            raise ExportError(f"export --synthetic {params.synthetic}: expected --mix with it (a synthetic dataset "
                              f"alone is exported with --dataset {params.synthetic})")
        return ds, None
    if params.format != "nnunet":
        raise ExportError(f"export --mix writes nnU-Net raw datasets: expected --format nnunet (or none), found "
                          f"--format {params.format}")
    check_mix_out(Path(params.out).resolve())
    syn = open_dataset(ws, params.synthetic) if params.synthetic else None
    plan_export_mixes(ws, ds, syn, params.mix)
    return ds, syn


class AblationParams(StageParams):
    name: str = Field("ablation", description="ablation name (MLflow parent run, output folder)")
    real: str = Field(description="real (or phantom) dataset: its fixed test split is the only test set")
    synthetic: str | None = Field(None, description="synthetic dataset (needed for ratios above 0)")
    config: AblationConfig = AblationConfig()
    segmenters: SegmenterNames = Field(
        (DEFAULT_SEGMENTER,), min_length=1, description="segmenter backends (components.backends) crossed with every "
        "mix; with more than one, each configuration is named <segmenter>-<mix>")
    synthesis_metrics: dict[str, float] = Field(
        default_factory=dict, description="scores of the synthetic set (FID, KID, ... with their real-vs-real "
        "floors), logged once on the parent run")


@flow(name="export")
def export_flow(params: ExportParams) -> str:
    ws = params.root
    if params.mix is not None:
        from components.export import export_mixes

        real, syn = check_export(params)
        done = export_mixes(ws, real, syn, params.mix, params.out)
        get_run_logger().info("exported %d ablation mixes of %s + %s to %s (%s)", len(done.datasets), real.name,
                              syn.name if syn is not None else "-", done.out, done.mixes_csv)
        return str(done.out)
    ds = open_dataset(ws, params.dataset)
    out = export_task.with_options(refresh_cache=not Path(params.out).exists())(
        workspace=ws, dataset=params.dataset, manifest_sha256=ds.manifest_digest, fmt=params.format,
        out=str(Path(params.out).resolve()),
    )
    get_run_logger().info("exported %s as %s to %s", params.dataset, params.format, out)
    return out


def check_ablation(params: AblationParams) -> tuple[Dataset, Dataset | None, list[MixPlan]]:
    """Everything that can be checked before anything trains: the datasets exist, the grid fits the
    data, and no configuration's cases or generator touch the test split (AblationError otherwise).
    Plain Python, so the command line runs it before Prefect starts."""
    ws = params.root
    real = open_dataset(ws, params.real)
    syn = open_dataset(ws, params.synthetic) if params.synthetic else None
    mixes = plan_mixes(real, syn, params.config, params.segmenters)
    generator = generator_record(ws, syn) if syn is not None else None
    for m in mixes:
        check_no_leak(m, real, syn, generator)
    return real, syn, mixes


# One configuration at a time by default: nnU-Net already uses every core. Pass another task runner
# (more threads, or prefect-dask's DaskTaskRunner on a cluster) with ablation_flow.with_options.
@flow(name="ablation", task_runner=ThreadPoolTaskRunner(max_workers=1))
def ablation_flow(params: AblationParams) -> dict:
    logger = get_run_logger()
    # The schedule this machine runs (nnU-Net's full one on a GPU unless asked otherwise) is fixed
    # here, so every configuration, cache key and MLflow run records the same one.
    params = params.model_copy(update={"config": params.config.with_schedule()})
    ws = params.root
    real, syn, mixes = check_ablation(params)
    plans = [p.to_dict() for p in mixes]
    logger.info("ablation %s: %d configurations (%s) on %d real training cases, %d test cases", params.name,
                len(plans), ", ".join(p.name for p in mixes), len(mixes[0].real_pool), len(mixes[0].test_ids))
    common = dict(workspace=ws, ablation=params.name, real=real.name, real_sha256=real.manifest_digest,
                  synthetic=syn.name if syn else None, synthetic_sha256=syn.manifest_digest if syn else None,
                  config=params.config)
    # The parent run spans the ablation: open (RUNNING) from before the first configuration until
    # after the summary, FAILED if a configuration failed. A re-run continues the cached parent run
    # and opens a new one only if the store lost it.
    parent = parent_run_task(plans=plans, synthesis_metrics=params.synthesis_metrics, segmenters=params.segmenters,
                             **common)
    if not resume_run(ws, parent):
        parent = parent_run_task.with_options(refresh_cache=True)(
            plans=plans, synthesis_metrics=params.synthesis_metrics, segmenters=params.segmenters, **common)
    try:
        summary = _run_configurations(params, ws, plans, common, parent, real.info.get("kind") == "phantom")
    except BaseException:
        with contextlib.suppress(Exception):  # the error that stopped the ablation is the one to see
            close_parent_run(ws, parent, n_failed=1)
        raise
    summary["parent_status"] = close_parent_run(ws, parent, summary["n_failed"])
    summary["workspace"] = ws
    logger.info("ablation %s: %d configurations ok, %d failed; %s", params.name, summary["n_ok"],
                summary["n_failed"], summary["summary_csv"])
    logger.info("effect of synthetic cases (paired against ratio 0 on the same test cases):\n%s",
                "\n".join(summary["effect_lines"]))
    return summary


def _run_configurations(params: AblationParams, ws: str, plans: list[dict], common: dict, parent: str,
                        phantom: bool) -> dict:
    """Every configuration (failures recorded, never raised), then the summary on the parent run."""
    logger = get_run_logger()
    data = {s: prepare_segmenter_task(workspace=ws, segmenter=s, ablation=params.name,
                                      plans=[p for p in plans if p["segmenter"] == s], real=common["real"],
                                      synthetic=common["synthetic"], config=params.config)
            for s in params.segmenters}
    # A cached configuration whose per-case scores were deleted runs again (the summary reads them).
    futures = [configuration_task.with_options(
        refresh_cache=not (Path(ws) / "ablations" / params.name / p["name"] / "per_case.csv").is_file()).submit(
        plan=p, parent_run_id=parent, data=data[p["segmenter"]], **common) for p in plans]
    results = []
    for plan, fut in zip(plans, futures, strict=True):
        fut.wait()
        if fut.state.is_completed():
            results.append(fut.result())
        else:
            err = str(fut.state.message or "failed")
            logger.warning("configuration %s failed: %s", plan["name"], err)
            results.append({"name": plan["name"], "status": "failed", "params": {
                "segmenter": plan["segmenter"], "synthesizer": plan.get("synthesizer") or "", "ratio": plan["ratio"],
                "seed": plan["seed"],
                "n_real": len(plan["real_ids"]),
                "n_synthetic": len(plan["synthetic_ids"]), "synthetic_only": plan["synthetic_only"]},
                "error": err})
    summary = summary_task(workspace=ws, ablation=params.name, config=params.config, parent_run_id=parent,
                           results=results, phantom=phantom)
    summary["parent_run_id"] = parent
    summary["n_ok"] = sum(r["status"] == "ok" for r in results)
    summary["n_failed"] = len(results) - summary["n_ok"]
    return summary
