"""The whole DAG: data (phantom or ingestion) -> masks -> synthesizer -> synthesis -> scores -> export
-> nnU-Net ratio ablation -> MLflow. One typed config file drives it (configs/demo.yaml, brats-gpu.yaml).

Every stage is a sub-flow whose tasks cache on content digests, so an unchanged re-run does almost
no work and a changed stage re-runs itself and what depends on it only.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from prefect import flow, get_run_logger
from pydantic import BaseModel, ConfigDict, Field, model_validator

from components.ablation import AblationConfig
from components.brats import IngestConfig
from components.masks import MaskAugmentConfig
from components.metrics.synthesis import SynthesisEvalConfig
from components.phantom import PhantomConfig
from components.synthesis.config import SynthesizeConfig
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


def _fid_metrics(csv_path: str) -> dict[str, float]:
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

    logger = get_run_logger()
    cfg = load_config(config_path)
    ws = str(Path(workspace or cfg.workspace).resolve())
    d = cfg.data
    if d.phantom is not None:
        data = phantom_flow(PhantomParams(workspace=ws, name=d.name, config=d.phantom))
    else:
        data = ingest_flow(IngestParams(source=d.source, name=d.name, workspace=ws, config=d.ingest))
    masks = augment_masks_flow(AugmentMasksParams(source=d.name, name=cfg.masks.name, workspace=ws,
                                                  config=cfg.masks.config))
    model = train_synthesizer_flow(TrainSynthesizerParams(workspace=ws, dataset=d.name, name=cfg.synthesizer.name,
                                                          profile=cfg.synthesizer.profile,
                                                          steps=cfg.synthesizer.steps, resume="auto"))
    synthetic = synthesize_flow(SynthesizeParams(workspace=ws, model=cfg.synthesizer.name, masks=cfg.masks.name,
                                                 name=cfg.synthesis.name, config=cfg.synthesis.config))
    scores = evaluate_synthesis_flow(SynthesisEvalParams(real=d.name, synthetic=cfg.synthesis.name, workspace=ws,
                                                         config=cfg.evaluation.config))
    exports = {}
    if cfg.export.brats:
        exports["brats"] = export_flow(ExportParams(workspace=ws, dataset=cfg.synthesis.name, format="brats",
                                                    out=str(Path(ws) / "exports" / f"{cfg.synthesis.name}-brats")))
    if cfg.export.nnunet:
        exports["nnunet"] = export_flow(ExportParams(workspace=ws, dataset=cfg.synthesis.name, format="nnunet",
                                                     out=str(Path(ws) / "exports" / "nnunet_raw")))
    runner = make_task_runner(cfg.runner)
    ablation = ablation_flow.with_options(task_runner=runner)(AblationParams(
        workspace=ws, name=cfg.ablation.name, real=d.name, synthetic=cfg.synthesis.name, config=cfg.ablation.config,
        extra_metrics=_fid_metrics(scores["csv"])))
    out = {
        "workspace": ws,
        "montages": [p for p in (data.get("montage"), masks.get("montage"), synthetic.get("montage"),
                                 ablation.get("plot")) if p],
        "synthesis_scores": scores["csv"],
        "model": model.get("line", ""),
        "exports": exports,
        "ablation_summary": ablation["summary_csv"],
        "ablation_table": ablation["table"],
        "parent_run_id": ablation["parent_run_id"],
    }
    logger.info("pipeline done: %s", out["ablation_summary"])
    return out
