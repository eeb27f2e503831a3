"""The whole DAG: data (phantom or ingestion) -> masks -> synthesizer(s) -> synthesis -> scores -> export
-> ratio ablation (nnU-Net or other segmenters) -> MLflow. One typed config file drives it
(configs/demo.yaml, configs/compare.yaml crossing synthesizers and segmenters, brats-gpu.yaml).

Every stage is a sub-flow whose tasks cache on content digests, so an unchanged re-run does almost
no work and a changed stage re-runs itself and what depends on it only.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from components.backends import get_mask_source, get_synthesizer
from data_catalog import open_dataset
from flows.pipeline_config import (  # noqa: F401 - the config's names, re-exported for callers of this module
    AblationStage,
    ConfigError,
    DataStage,
    PipelineConfig,
    check_arms,
    load_config,
)
from flows.runners import make_task_runner
from tasks.common import run_cached


def _synthesis_metrics(csv_path: str) -> dict[str, float]:
    """The synthetic set's scores (and their real-vs-real floors) for the ablation's parent run."""
    from components.metrics import flat_metrics

    return {k: v for k, v in flat_metrics(csv_path).items() if k.startswith(("fid2d_", "kid_", "fd_rand3d_",
                                                                             "msssim_"))}


@flow(name="pipeline")
def pipeline_flow(config_path: str = "configs/demo.yaml", workspace: str | None = None) -> dict:
    from flows.ablation import AblationParams, ExportParams, ablation_flow, export_flow
    from flows.datasets import IngestParams, PhantomParams, ingest_flow, phantom_flow
    from flows.masks import AugmentMasksParams, augment_masks_flow
    from flows.metrics import SynthesisEvalParams, evaluate_synthesis_flow
    from flows.synthesis import SynthesizeParams, TrainSynthesizerParams, synthesize_flow, train_synthesizer_flow
    from tasks.ablation import real_subset_task
    from tasks.masks import combine_masks_task
    from tasks.synthesis import combine_synthetic_task

    logger = get_run_logger()
    cfg = load_config(config_path)
    ws = str(Path(workspace or cfg.workspace).resolve())
    d = cfg.data
    if d.phantom is not None:
        data = phantom_flow(PhantomParams(workspace=ws, name=d.name, config=d.phantom))
    else:
        data = ingest_flow(IngestParams(source=d.source, name=d.name, workspace=ws, config=d.ingest))
    check_arms(cfg, open_dataset(ws, d.name))  # before masks, generators and synthesis: the grid fits the data
    arms = []
    for fraction in cfg.ablation.real_fractions:
        sfx = cfg.ablation.arm_suffix(fraction)
        real_name = d.name
        if fraction < 1.0:
            real_name = f"{d.name}{sfx}"
            run_cached(real_subset_task, [Path(ws) / "datasets" / real_name / "dataset.json"], workspace=ws,
                       real=d.name, real_sha256=open_dataset(ws, d.name).manifest_digest, fraction=fraction,
                       subset_seed=cfg.ablation.config.subset_seed, name=real_name)
            logger.info("data-scarce arm %s: %s keeps %.0f %% of the real training cases, with its own masks, "
                        "generator and synthetic set", sfx, real_name, 100 * fraction)
        mask_parts, mask_metrics = {}, {}
        for src, src_cfg in cfg.masks.sources:
            part = cfg.masks.name + sfx if not cfg.masks.also else f"{cfg.masks.name}-{src}{sfx}"
            settings = {"source_config": src_cfg} if isinstance(src_cfg, dict) else {"config": src_cfg}
            made = augment_masks_flow(AugmentMasksParams(source=real_name, name=part, workspace=ws, backend=src,
                                                         **settings))
            if not mask_parts:  # the primary source's summary and figures lead
                masks = made
            mask_parts[src] = part
            own = getattr(get_mask_source(src), "dataset_metrics", None)  # e.g. ldm: pass rate, realism vs floors
            if own is not None:
                mask_metrics.update({f"masks_{src}_{k}": v for k, v in own(ws, part).items()})
        if cfg.masks.also:  # one masks dataset holding every source's masks: every synthesizer draws from all
            run_cached(combine_masks_task, [Path(ws) / "datasets" / (cfg.masks.name + sfx) / "dataset.json"],
                       workspace=ws, name=cfg.masks.name + sfx, parts=mask_parts,
                       digests={s: open_dataset(ws, n).manifest_digest for s, n in mask_parts.items()})
            logger.info("%s: the masks of %s together", cfg.masks.name + sfx, ", ".join(mask_parts))
        models, parts, all_scores = {}, {}, {}
        for gen in cfg.generators:
            models[gen.arm] = train_synthesizer_flow(TrainSynthesizerParams(
                workspace=ws, dataset=real_name, name=gen.name + sfx, backend=gen.backend, profile=gen.profile,
                steps=gen.steps, resume="auto"))
            parts[gen.arm] = cfg.synthetic_name(gen, sfx)
            synthetic = synthesize_flow(SynthesizeParams(workspace=ws, model=gen.name + sfx, masks=cfg.masks.name + sfx,
                                                         name=parts[gen.arm], backend=gen.backend,
                                                         config=cfg.synthesis.config))
            all_scores[gen.arm] = evaluate_synthesis_flow(SynthesisEvalParams(
                real=real_name, synthetic=parts[gen.arm], workspace=ws, config=cfg.evaluation.config))
        model, scores = next(iter(models.values())), next(iter(all_scores.values()))
        synthetic_name = cfg.synthesis.name + sfx
        if len(parts) > 1:  # one dataset holding every synthesizer's cases: the ablation crosses them
            run_cached(combine_synthetic_task, [Path(ws) / "datasets" / synthetic_name / "dataset.json"], workspace=ws,
                       name=synthetic_name, parts=parts,
                       digests={a: open_dataset(ws, n).manifest_digest for a, n in parts.items()})
            logger.info("%s: the synthetic cases of %s, crossed in one ablation", synthetic_name, ", ".join(parts))
        by_arm = {arm: _synthesis_metrics(sc["csv"]) for arm, sc in all_scores.items()}
        own_scores = {}
        for gen in cfg.generators:  # a backend's own scores of its set (sbldm: controllability, mask pass rate)
            own = getattr(get_synthesizer(gen.backend), "dataset_metrics", None)
            if own is not None:
                own_scores[gen.arm] = own(ws, parts[gen.arm])
                by_arm[gen.arm].update(own_scores[gen.arm])
        synthesis_metrics = {f"{arm}_{k}" if len(parts) > 1 else k: v for arm, m in by_arm.items() for k, v in m.items()}
        synthesis_metrics.update(mask_metrics)
        if fraction == max(cfg.ablation.real_fractions):  # the arm with the most real data is the one shared
            exports = {}
            if cfg.export.brats:
                exports["brats"] = export_flow(ExportParams(
                    workspace=ws, dataset=synthetic_name, format="brats",
                    out=str(Path(ws) / "exports" / f"{cfg.synthesis.name}{sfx}-brats")))
            if cfg.export.nnunet:
                exports["nnunet"] = export_flow(ExportParams(workspace=ws, dataset=synthetic_name,
                                                             format="nnunet",
                                                             out=str(Path(ws) / "exports" / "nnunet_raw")))
            first = {"masks": masks, "synthetic": synthetic, "scores": scores, "model": model, "models": models,
                     "exports": exports}
        ablation = ablation_flow.with_options(task_runner=make_task_runner(cfg.runner))(AblationParams(
            workspace=ws, name=cfg.ablation.name + sfx, real=real_name, synthetic=synthetic_name,
            config=cfg.ablation.config, segmenters=cfg.ablation.segmenters, synthesis_metrics=synthesis_metrics))
        arms.append({"fraction": fraction, "real": real_name, "ablation": cfg.ablation.name + sfx,
                     "synthesis_scores": scores["csv"],
                     "synthesis_scores_by_synthesizer": {a: sc["csv"] for a, sc in all_scores.items()},
                     "synthesizer_own_scores": own_scores, "mask_scores": mask_metrics,
                     "summary_csv": ablation["summary_csv"],
                     "effect_csv": ablation["effect_csv"], "effect_lines": ablation["effect_lines"],
                     "plot": ablation["plot"], "parent_run_id": ablation["parent_run_id"], "table": ablation["table"]})
    main = arms[0]
    out = {
        "workspace": ws,
        "montages": [p for p in (data.get("montage"), first["masks"].get("montage"),
                                 *(m.get("montage") for m in first["models"].values()),  # e.g. sbldm's size sweep
                                 first["synthetic"].get("montage"), *(a["plot"] for a in arms)) if p],
        "synthesis_scores": first["scores"]["csv"],
        "model": first["model"].get("line", ""),
        "exports": first["exports"],
        "ablation_summary": main["summary_csv"],
        "ablation_table": main["table"],
        "parent_run_id": main["parent_run_id"],
        "arms": arms,
    }
    logger.info("pipeline done: %s", out["ablation_summary"])
    return out
