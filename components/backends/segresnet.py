"""The ``segresnet`` segmenter: MONAI SegResNet as the model-zoo bundle ``brats_mri_segmentation`` trains
it (``components.segmentation.segresnet``), one model per configuration in
``<workspace>/ablations/<ablation>/<configuration>/segresnet/``, trained in this process on exactly the
configuration's cases. ``AblationConfig.schedule`` (tiny, cpu-demo, full: the same names as nnU-Net's)
says how long it trains."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from components.ablation import AblationConfig, MixPlan, mix_case_files, plan_case_files
from components.backends.registry import FittedSegmenter
from components.segmentation.segresnet import CHANNELS, SCHEDULES, SegresnetSchedule
from data_catalog import Dataset, load_label_scheme

FOLDER = "segresnet"


def _schedule(config: AblationConfig) -> SegresnetSchedule:
    return SCHEDULES[config.with_schedule().schedule]


class SegresnetSegmenter:
    label = "SegResNet"

    def prepare(self, workspace: str | Path, ablation: str, plans: Sequence[MixPlan], real: Dataset,
                synthetic: Dataset | None, config: AblationConfig) -> dict[str, Any]:
        """The files of every case a configuration trains on (real ids from ``real``, synthetic ids from
        ``synthetic``), and what those files are (manifest digests): nothing is copied or preprocessed."""
        files = mix_case_files(plans, real, synthetic)
        return {"workspace": str(Path(workspace).resolve()), "ablation": ablation,
                "label_scheme": real.label_scheme.name, "cases": files["cases"],
                "data": files["data"]}

    def params(self, plan: MixPlan, config: AblationConfig, data: Mapping[str, Any]) -> dict[str, Any]:
        from components.segmentation.segresnet import resolve_device

        schedule = _schedule(config)
        per_epoch, total = schedule.iterations(len(plan.train_ids))
        scheme = load_label_scheme(data["label_scheme"])
        device = resolve_device(schedule).type
        if device == "cpu":  # what runs, not what the schedule asks for: ``auto`` without a GPU is the CPU
            seed = {"seed_reproducible": True, "seed_note": "replay: every random draw of an iteration is seeded "
                    "from (seed, iteration) and runs on the CPU, so the same seed gives the same model"}
        else:
            seed = {"seed_reproducible": False, "seed_note": "repeat: the draws are seeded, but CUDA kernels (cuDNN, "
                    "mixed precision) are not deterministic, so a seed labels an independent repeat"}
        return {"schedule": config.with_schedule().schedule, "device": device,
                "segresnet_epochs": schedule.epochs, "segresnet_iterations_per_epoch": per_epoch,
                "segresnet_iterations": total, "segresnet_batch_size": schedule.batch_size,
                "segresnet_lr": schedule.lr, "segresnet_init_filters": schedule.init_filters,
                "segresnet_crop": list(schedule.crop), "segresnet_roi": list(schedule.roi),
                "segresnet_overlap": schedule.overlap, "segresnet_channels": ",".join(CHANNELS),
                "segresnet_regions": ",".join(r[0] for r in scheme.nnunet_regions),
                "segresnet_amp": schedule.amp and device == "cuda", **seed}

    def model_dir(self, plan: MixPlan, data: Mapping[str, Any]) -> Path:
        return Path(data["workspace"]) / "ablations" / data["ablation"] / plan.name / FOLDER

    def fit(self, plan: MixPlan, config: AblationConfig, data: Mapping[str, Any], gpu: str | None) -> FittedSegmenter:
        from components.segmentation.segresnet import train

        trained = train(self.model_dir(plan, data), plan_case_files(plan, data, "SegResNet"), data["label_scheme"],
                        _schedule(config), seed=plan.seed, gpu=gpu, data=data["data"], label=plan.name)
        return FittedSegmenter(model_dir=trained.model_dir, train_keys=trained.train_keys,
                               label=f"SegResNet {plan.name}",
                               record={"segresnet_train_keys": list(trained.train_keys),
                                       "segresnet_iterations": trained.iterations,
                                       "segresnet_start_iteration": trained.start_iteration,
                                       "segresnet_train_seconds": round(trained.train_seconds, 2),
                                       "segresnet_sampled": trained.sampled})

    def predict(self, model: FittedSegmenter, cases: Mapping[str, Sequence[Path]], out_dir: Path,
                config: AblationConfig, data: Mapping[str, Any], gpu: str | None) -> dict[str, Path]:
        from components.segmentation.segresnet import predict

        return predict(model.model_dir, cases, out_dir, data["label_scheme"], _schedule(config), gpu=gpu)
