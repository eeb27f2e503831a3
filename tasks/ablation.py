"""Tasks for export and the ratio ablation: each calls one function of components.export,
components.ablation, components.ablation_report or the configuration's segmenter (components.backends)."""

from __future__ import annotations

from dataclasses import asdict

from prefect import task

from components.ablation import AblationConfig, MixPlan, generator_record, make_real_subset, run_configuration
from components.ablation_report import open_parent_run, summarize_ablation
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


@task(name="real-subset", cache_policy=CACHE, persist_result=True, **IO_RETRIES)
def real_subset_task(workspace: str, real: str, real_sha256: str, fraction: float, subset_seed: int, name: str) -> str:
    """The data-scarce arm's real dataset (see components.ablation.make_real_subset)."""
    ds = make_real_subset(workspace, open_dataset(workspace, real), fraction, subset_seed, name)
    return ds.manifest_digest


@task(name="ablation-segmenter-data", task_run_name="prepare-{segmenter}", **IO_RETRIES)
def prepare_segmenter_task(workspace: str, segmenter: str, ablation: str, plans: list[dict], real: str,
                           synthetic: str | None, config: AblationConfig) -> dict:
    """What the segmenter's configurations share (nnU-Net: the real cases planned and preprocessed
    once, the synthetic ones added, one fold per configuration).

    Not cached by Prefect: a segmenter checks its own stamps (nnU-Net reuses plans of the same real
    cases) and so also notices a deleted working folder.
    """
    from components.backends import get_segmenter

    real_ds = open_dataset(workspace, real)
    syn_ds = open_dataset(workspace, synthetic) if synthetic else None
    return get_segmenter(segmenter).prepare(workspace, ablation, [MixPlan.from_dict(p) for p in plans], real_ds,
                                            syn_ds, config)


@task(name="ablation-configuration", cache_policy=CACHE, persist_result=True, task_run_name="config-{plan[name]}")
def configuration_task(workspace: str, ablation: str, plan: dict, real: str, real_sha256: str,
                       synthetic: str | None, synthetic_sha256: str | None, config: AblationConfig,
                       parent_run_id: str, data: dict) -> dict:
    real_ds = open_dataset(workspace, real)
    syn_ds = open_dataset(workspace, synthetic) if synthetic else None
    generator = generator_record(workspace, syn_ds) if syn_ds is not None else None
    res = run_configuration(workspace, ablation, MixPlan.from_dict(plan), real_ds, syn_ds, config, parent_run_id,
                            data, generator)
    if res.status != "ok":
        raise ConfigurationFailed(f"{res.name}: {res.error}")
    return asdict(res)


@task(name="ablation-parent-run", cache_policy=CACHE, persist_result=True)
def parent_run_task(workspace: str, ablation: str, config: AblationConfig, real: str, real_sha256: str,
                    synthetic: str | None, synthetic_sha256: str | None, plans: list[dict],
                    synthesis_metrics: dict[str, float] | None = None,
                    segmenters: tuple[str, ...] = ("nnunet",)) -> str:
    """The ablation's MLflow parent run, left RUNNING (components.ablation_report.open_parent_run)."""
    return open_parent_run(workspace, ablation, config, real, real_sha256, synthetic, synthetic_sha256, plans,
                           synthesis_metrics, segmenters)


@task(name="ablation-summary", cache_policy=CACHE, persist_result=True, **IO_RETRIES)
def summary_task(workspace: str, ablation: str, config: AblationConfig, parent_run_id: str,
                 results: list[dict], phantom: bool = False) -> dict:
    """Paired effects, summary files and plot on the parent run (components.ablation_report.summarize_ablation)."""
    return summarize_ablation(workspace, ablation, config, parent_run_id, results, phantom)

