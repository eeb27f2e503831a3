"""The whole DAG: data (phantom or ingestion) -> masks -> synthesizer -> synthesis -> scores -> export
-> nnU-Net ratio ablation -> MLflow. One typed config file drives it (configs/demo.yaml, brats-gpu.yaml).

Every stage is a sub-flow whose tasks cache on content digests, so an unchanged re-run does almost
no work and a changed stage re-runs itself and what depends on it only.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from prefect import flow, get_run_logger
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from components.ablation import AblationConfig
from components.brats import IngestConfig
from components.masks import MaskAugmentConfig
from components.metrics.synthesis import SynthesisEvalConfig
from components.phantom import PhantomConfig
from components.synthesis.config import SynthesizeConfig
from data_catalog import open_dataset
from flows.runners import RunnerConfig, make_task_runner


class DataStage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = "phantom"
    phantom: PhantomConfig | None = None
    source: str | None = Field(None, description="a BraTS/MSD release folder to ingest (instead of the phantom)")
    ingest: IngestConfig = IngestConfig()

    @model_validator(mode="after")
    def _one_source(self) -> DataStage:
        if (self.phantom is None) == (self.source is None):
            raise ValueError("data: give exactly one of `phantom` (embedded default) or `source` (a release folder)")
        return self


class MasksStage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = "masks"
    config: MaskAugmentConfig = MaskAugmentConfig(splits=("train",))


class SynthesizerStage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = "synthesizer"
    profile: str = "cpu-demo"
    steps: int | None = None


class SynthesisStage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = "synthetic"
    config: SynthesizeConfig = SynthesizeConfig()


class EvaluationStage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    config: SynthesisEvalConfig = SynthesisEvalConfig()


class AblationStage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = "ablation"
    config: AblationConfig = AblationConfig()
    real_fractions: tuple[float, ...] = Field(
        (1.0,), min_length=1, description="one arm per fraction of the real training cases; an arm below 1 (the "
        "data-scarce case) gets its own real subset, masks, generator, synthetic set and ablation, so no generator "
        "learns from real cases its configurations do not train on")

    @field_validator("real_fractions")
    @classmethod
    def _fractions(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        bad = [f for f in v if not 0.0 < f <= 1.0]
        if bad or len(set(v)) != len(v):
            raise ValueError(f"real_fractions must be distinct numbers in (0, 1]; got {list(v)}")
        return v

    @model_validator(mode="after")
    def _subset_by_arms(self) -> AblationStage:
        if self.config.real_fraction != 1.0:
            raise ValueError("ablation.config.real_fraction: in a pipeline the data-scarce case is an arm with its "
                             "own generator; set ablation.real_fractions (e.g. [1.0, 0.3]) and leave real_fraction 1")
        return self

    def arm_suffix(self, fraction: float) -> str:
        return "" if fraction == 1.0 else "-f" + f"{fraction:g}".replace(".", "p")


class ExportStage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    brats: bool = True
    nnunet: bool = True


class PipelineConfig(BaseModel):
    """The whole DAG's settings (one YAML file)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    workspace: str = "workspace"
    data: DataStage
    masks: MasksStage = MasksStage()
    synthesizer: SynthesizerStage = SynthesizerStage()
    synthesis: SynthesisStage = SynthesisStage()
    evaluation: EvaluationStage = EvaluationStage()
    export: ExportStage = ExportStage()
    ablation: AblationStage = AblationStage()
    runner: RunnerConfig = RunnerConfig()


def load_config(path: str | Path) -> PipelineConfig:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"pipeline config {path} does not exist (see configs/demo.yaml)")
    with open(path, encoding="utf-8") as fh:
        return PipelineConfig.model_validate(yaml.safe_load(fh) or {})


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

    logger = get_run_logger()
    cfg = load_config(config_path)
    ws = str(Path(workspace or cfg.workspace).resolve())
    d = cfg.data
    if d.phantom is not None:
        data = phantom_flow(PhantomParams(workspace=ws, name=d.name, config=d.phantom))
    else:
        data = ingest_flow(IngestParams(source=d.source, name=d.name, workspace=ws, config=d.ingest))
    arms = []
    for fraction in cfg.ablation.real_fractions:
        sfx = cfg.ablation.arm_suffix(fraction)
        real_name = d.name
        if fraction < 1.0:
            real_name = f"{d.name}{sfx}"
            real_subset_task(workspace=ws, real=d.name, real_sha256=open_dataset(ws, d.name).manifest_digest,
                             fraction=fraction, subset_seed=cfg.ablation.config.subset_seed, name=real_name)
            logger.info("data-scarce arm %s: %s keeps %.0f %% of the real training cases, with its own masks, "
                        "generator and synthetic set", sfx, real_name, 100 * fraction)
        masks = augment_masks_flow(AugmentMasksParams(source=real_name, name=cfg.masks.name + sfx, workspace=ws,
                                                      config=cfg.masks.config))
        model = train_synthesizer_flow(TrainSynthesizerParams(
            workspace=ws, dataset=real_name, name=cfg.synthesizer.name + sfx, profile=cfg.synthesizer.profile,
            steps=cfg.synthesizer.steps, resume="auto"))
        synthetic = synthesize_flow(SynthesizeParams(workspace=ws, model=cfg.synthesizer.name + sfx,
                                                     masks=cfg.masks.name + sfx, name=cfg.synthesis.name + sfx,
                                                     config=cfg.synthesis.config))
        scores = evaluate_synthesis_flow(SynthesisEvalParams(real=real_name, synthetic=cfg.synthesis.name + sfx,
                                                             workspace=ws, config=cfg.evaluation.config))
        if fraction == cfg.ablation.real_fractions[0]:
            exports = {}
            if cfg.export.brats:
                exports["brats"] = export_flow(ExportParams(
                    workspace=ws, dataset=cfg.synthesis.name, format="brats",
                    out=str(Path(ws) / "exports" / f"{cfg.synthesis.name}-brats")))
            if cfg.export.nnunet:
                exports["nnunet"] = export_flow(ExportParams(workspace=ws, dataset=cfg.synthesis.name, format="nnunet",
                                                             out=str(Path(ws) / "exports" / "nnunet_raw")))
            first = {"masks": masks, "synthetic": synthetic, "scores": scores, "model": model, "exports": exports}
        ablation = ablation_flow.with_options(task_runner=make_task_runner(cfg.runner))(AblationParams(
            workspace=ws, name=cfg.ablation.name + sfx, real=real_name, synthetic=cfg.synthesis.name + sfx,
            config=cfg.ablation.config, synthesis_metrics=_synthesis_metrics(scores["csv"])))
        arms.append({"fraction": fraction, "real": real_name, "ablation": cfg.ablation.name + sfx,
                     "synthesis_scores": scores["csv"], "summary_csv": ablation["summary_csv"],
                     "effect_csv": ablation["effect_csv"], "effect_lines": ablation["effect_lines"],
                     "plot": ablation["plot"], "parent_run_id": ablation["parent_run_id"], "table": ablation["table"]})
    main = arms[0]
    out = {
        "workspace": ws,
        "montages": [p for p in (data.get("montage"), first["masks"].get("montage"), first["synthetic"].get("montage"),
                                 *(a["plot"] for a in arms)) if p],
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
