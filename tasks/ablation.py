"""Tasks for export and the ratio ablation (thin wrappers over components.export / components.ablation)."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from prefect import task

from components.ablation import (
    AblationConfig,
    ConfigResult,
    MixPlan,
    NnunetData,
    dice_vs_ratio_plot,
    effect_metrics,
    generator_record,
    make_real_subset,
    per_case_table,
    prepare_nnunet,
    run_configuration,
    summary_table,
)
from components.export import export_brats, export_dataset_nnunet
from components.io import atomic_path
from data_catalog import open_dataset
from tasks.common import CACHE, IO_RETRIES


class ConfigurationFailed(RuntimeError):
    """Raised so Prefect marks (and never caches) a failed configuration."""


@task(name="export", cache_policy=CACHE, persist_result=True, **IO_RETRIES)
def export_task(workspace: str, dataset: str, manifest_sha256: str, fmt: str, out: str) -> str:
    ds = open_dataset(workspace, dataset)
    if fmt == "brats":
        return str(export_brats(ds, out))
    return str(export_dataset_nnunet(ds, out))


@task(name="real-subset", cache_policy=CACHE, persist_result=True, **IO_RETRIES)
def real_subset_task(workspace: str, real: str, real_sha256: str, fraction: float, subset_seed: int, name: str) -> str:
    """The data-scarce arm's real dataset (see components.ablation.make_real_subset)."""
    ds = make_real_subset(workspace, open_dataset(workspace, real), fraction, subset_seed, name)
    return ds.manifest_digest


@task(name="ablation-parent-run", cache_policy=CACHE, persist_result=True)
def parent_run_task(workspace: str, ablation: str, config: AblationConfig, real: str, real_sha256: str,
                    synthetic: str | None, synthetic_sha256: str | None, plans: list[dict],
                    synthesis_metrics: dict[str, float] | None = None) -> str:
    """The ablation's MLflow parent run, with what describes the whole ablation: its grid, the data,
    and the synthetic set's scores (logged once here, never copied onto every configuration)."""
    from components.ablation import seed_params
    from components.segmentation.nnunet import SCHEDULES
    from components.tracking import PHANTOM_NOTE, finite_metrics, start_run

    ds = open_dataset(workspace, real)
    tags = {"ablation": ablation, "role": "parent"}
    if ds.info.get("kind") == "phantom":
        tags["note"] = PHANTOM_NOTE
    with start_run(workspace, config.experiment, ablation, tags=tags) as run:
        run.log_params({"real_dataset": real, "real_manifest_sha256": real_sha256,
                        "synthetic_dataset": synthetic or "", "synthetic_manifest_sha256": synthetic_sha256 or "",
                        "ratios": list(config.ratios), "seeds": list(config.seeds),
                        "synthetic_only": config.synthetic_only, "real_fraction": config.real_fraction,
                        "subset_seed": config.subset_seed, "high_quality": config.high_quality,
                        "schedule": config.with_schedule().schedule, "preset": config.preset, "n_configurations": len(plans),
                        **seed_params(SCHEDULES[config.with_schedule().schedule])})
        if synthesis_metrics:
            run.log_metrics(finite_metrics(synthesis_metrics))
        return run.run_id


@task(name="ablation-nnunet-data", **IO_RETRIES)
def prepare_nnunet_task(workspace: str, ablation: str, plans: list[dict], real: str, synthetic: str | None,
                        config: AblationConfig) -> dict:
    """Plan and preprocess the real cases once, add the synthetic ones, one fold per configuration.

    Not cached by Prefect: it checks its own stamps (plans of the same real cases are reused) and
    so also notices a deleted nnU-Net folder.
    """
    from components.segmentation.nnunet import SCHEDULES

    real_ds = open_dataset(workspace, real)
    syn_ds = open_dataset(workspace, synthetic) if synthetic else None
    data = prepare_nnunet(workspace, ablation, [MixPlan.from_dict(p) for p in plans], real_ds, syn_ds,
                          SCHEDULES[config.with_schedule().schedule])
    return asdict(data)


@task(name="ablation-configuration", cache_policy=CACHE, persist_result=True, task_run_name="config-{plan[name]}")
def configuration_task(workspace: str, ablation: str, plan: dict, real: str, real_sha256: str,
                       synthetic: str | None, synthetic_sha256: str | None, config: AblationConfig,
                       parent_run_id: str, data: dict) -> dict:
    real_ds = open_dataset(workspace, real)
    syn_ds = open_dataset(workspace, synthetic) if synthetic else None
    generator = generator_record(workspace, syn_ds) if syn_ds is not None else None
    res = run_configuration(workspace, ablation, MixPlan.from_dict(plan), real_ds, syn_ds, config, parent_run_id,
                            NnunetData(**data), generator)
    if res.status != "ok":
        raise ConfigurationFailed(f"{res.name}: {res.error}")
    return asdict(res)


@task(name="ablation-summary", cache_policy=CACHE, persist_result=True, **IO_RETRIES)
def summary_task(workspace: str, ablation: str, config: AblationConfig, parent_run_id: str,
                 results: list[dict], phantom: bool = False) -> dict:
    """Paired effects against ratio 0, the summary and effect CSVs and the plot, logged on the parent run."""
    import mlflow

    from components.metrics.paired import effect_lines, paired_effects
    from components.tracking import PHANTOM_NOTE, tracking_uri

    out = Path(workspace) / "ablations" / ablation
    out.mkdir(parents=True, exist_ok=True)
    configs = [ConfigResult(**r) for r in results]
    per_case = per_case_table(configs)
    effects = paired_effects(per_case, seed=min(config.seeds), n_resamples=config.bootstrap_resamples)
    table = summary_table(configs, effects)
    files = {"summary_csv": out / "summary.csv", "effect_csv": out / "effect.csv", "per_case_csv": out / "per_case.csv"}
    for key, frame in (("summary_csv", table), ("effect_csv", effects), ("per_case_csv", per_case)):
        with atomic_path(files[key], suffix=".csv") as tmp:
            frame.to_csv(tmp, index=False)
    title = ablation + (f" ({PHANTOM_NOTE})" if phantom else "")
    plot = dice_vs_ratio_plot(effects, out / "dice_vs_ratio.png", title=title)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri(workspace))
    for path in (*files.values(), plot):
        client.log_artifact(parent_run_id, str(path))
    metrics = effect_metrics(effects)
    if metrics:
        now = int(time.time() * 1000)
        client.log_batch(parent_run_id, metrics=[mlflow.entities.Metric(k, v, now, 0) for k, v in metrics.items()])
    return {**{k: str(v) for k, v in files.items()}, "plot": str(plot), "table": table.to_dict(orient="records"),
            "effects": effects.to_dict(orient="records"), "effect_lines": effect_lines(effects)}
