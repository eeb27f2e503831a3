"""The ``nnunet`` segmenter: nnU-Net v2 (``components.segmentation.nnunet``), one nnU-Net dataset per
ablation with the real cases planned once (``components.ablation.prepare_nnunet``) and one fold of
``splits_final.json`` per configuration, listing exactly its cases. ``AblationConfig.schedule``
says how long it trains."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from components.ablation import AblationConfig, MixPlan, NnunetData, prepare_nnunet, seed_params
from components.backends.registry import FittedSegmenter
from components.segmentation.nnunet import SCHEDULES, NnunetSchedule
from data_catalog import Dataset


def _schedule(config: AblationConfig) -> NnunetSchedule:
    return SCHEDULES[config.with_schedule().schedule]


class NnunetSegmenter:
    label = "nnU-Net"

    def prepare(self, workspace: str | Path, ablation: str, plans: Sequence[MixPlan], real: Dataset,
                synthetic: Dataset | None, config: AblationConfig) -> dict[str, Any]:
        return asdict(prepare_nnunet(workspace, ablation, list(plans), real, synthetic, _schedule(config)))

    def params(self, plan: MixPlan, config: AblationConfig, data: Mapping[str, Any]) -> dict[str, Any]:
        from components.segmentation.nnunet import resolve_device

        schedule = _schedule(config)
        return {"schedule": config.with_schedule().schedule, "nnunet_configuration": schedule.configuration,
                "nnunet_dataset_id": data["dataset_id"], "nnunet_fold": data["folds"][plan.name],
                "device": str(resolve_device(schedule.device)), **seed_params(schedule)}

    def fit(self, plan: MixPlan, config: AblationConfig, data: Mapping[str, Any], gpu: str | None) -> FittedSegmenter:
        from components.segmentation.nnunet import train

        nn = NnunetData(**data)
        fold = nn.folds[plan.name]
        trained = train(nn.root, nn.dataset_id, _schedule(config), fold=fold, seed=plan.seed, gpu=gpu)
        return FittedSegmenter(model_dir=trained.model_dir, train_keys=trained.train_keys,
                               label=f"nnU-Net fold {fold}",
                               record={"nnunet_fold": fold, "nnunet_train_keys": list(trained.train_keys)})

    def predict(self, model: FittedSegmenter, cases: Mapping[str, Sequence[Path]], out_dir: Path,
                config: AblationConfig, data: Mapping[str, Any], gpu: str | None) -> dict[str, Path]:
        from components.segmentation.nnunet import predict

        return predict(model.model_dir, {k: list(v) for k, v in cases.items()}, out_dir, _schedule(config),
                       fold=model.record["nnunet_fold"], gpu=gpu)
