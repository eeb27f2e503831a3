"""Tasks for export and the ratio ablation (thin wrappers over components.export / components.ablation)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from prefect import task

from components.ablation import (
    AblationConfig,
    ConfigResult,
    MixPlan,
    dice_vs_ratio_plot,
    run_configuration,
    summary_table,
)
from components.export import export_brats, export_dataset_nnunet
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


@task(name="ablation-parent-run", cache_policy=CACHE, persist_result=True)
def parent_run_task(workspace: str, ablation: str, config: AblationConfig, real: str, real_sha256: str,
                    synthetic: str | None, synthetic_sha256: str | None, plans: list[dict]) -> str:
    from components.tracking import PHANTOM_NOTE, start_run

    ds = open_dataset(workspace, real)
    tags = {"ablation": ablation, "role": "parent"}
    if ds.info.get("kind") == "phantom":
        tags["note"] = PHANTOM_NOTE
    with start_run(workspace, config.experiment, ablation, tags=tags) as run:
        run.log_params({"real_dataset": real, "real_manifest_sha256": real_sha256,
                        "synthetic_dataset": synthetic or "", "synthetic_manifest_sha256": synthetic_sha256 or "",
                        "ratios": list(config.ratios), "seeds": list(config.seeds),
                        "synthetic_only": config.synthetic_only, "real_fraction": config.real_fraction,
                        "high_quality": config.high_quality, "schedule": config.schedule,
                        "preset": config.preset, "n_configurations": len(plans)})
        return run.run_id


@task(name="ablation-configuration", cache_policy=CACHE, persist_result=True, task_run_name="config-{plan[name]}")
def configuration_task(workspace: str, ablation: str, plan: dict, real: str, real_sha256: str,
                       synthetic: str | None, synthetic_sha256: str | None, config: AblationConfig,
                       parent_run_id: str, extra_metrics: dict[str, float]) -> dict:
    real_ds = open_dataset(workspace, real)
    syn_ds = open_dataset(workspace, synthetic) if synthetic else None
    res = run_configuration(workspace, ablation, MixPlan(**{k: tuple(v) if isinstance(v, list) else v
                                                            for k, v in plan.items()}),
                            real_ds, syn_ds, config, parent_run_id, extra_metrics)
    if res.status != "ok":
        raise ConfigurationFailed(f"{res.name}: {res.error}")
    return asdict(res)


@task(name="ablation-summary", cache_policy=CACHE, persist_result=True, **IO_RETRIES)
def summary_task(workspace: str, ablation: str, config: AblationConfig, parent_run_id: str,
                 results: list[dict]) -> dict:
    import mlflow

    from components.tracking import tracking_uri

    out = Path(workspace) / "ablations" / ablation
    out.mkdir(parents=True, exist_ok=True)
    table = summary_table([ConfigResult(**r) for r in results])
    csv = out / "summary.csv"
    table.to_csv(csv, index=False)
    plot = dice_vs_ratio_plot(table, out / "dice_vs_ratio.png", title=ablation)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri(workspace))
    client.log_artifact(parent_run_id, str(csv))
    client.log_artifact(parent_run_id, str(plot))
    return {"summary_csv": str(csv), "plot": str(plot), "table": table.to_dict(orient="records")}
