"""The ``ldmseg`` segmenter: LDM-seg (``components.segmentation.ldmseg``), a label-map latent diffusion model
with a ControlNet conditioned on the four MRIs, one model per configuration in
``<workspace>/ablations/<ablation>/<configuration>/ldmseg/``, trained in this process on exactly the
configuration's cases. ``AblationConfig.schedule`` (tiny, cpu-demo, full: nnU-Net's names) picks the profile
(configs/labelldm/ tiny, cpu-demo, brats-gpu). Besides the label maps, ``predict`` writes a variance map per
case and a calibration figure over the test cases into the predictions folder (``artifacts`` lists them)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from components.ablation import AblationConfig, MixPlan, mix_case_files, plan_case_files
from components.backends.registry import FittedSegmenter
from components.export import cases_from_dataset
from data_catalog import Dataset

FOLDER = "ldmseg"


def _config(config: AblationConfig, seed: int = 0):  # -> LabelLdmConfig
    from components.segmentation.ldmseg import schedule_config

    return schedule_config(config.with_schedule().schedule, seed)


class LdmsegSegmenter:
    label = "LDM-seg"

    def prepare(self, workspace: str | Path, ablation: str, plans: Sequence[MixPlan], real: Dataset,
                synthetic: Dataset | None, config: AblationConfig) -> dict[str, Any]:
        """The files of every case a configuration trains on, what those files are (manifest digests), and
        the true label maps of the test cases (read only after prediction, for the calibration figure)."""
        files = mix_case_files(plans, real, synthetic)
        tests = {c for p in plans for c in p.test_ids}
        truth = {c.case_id: str(c.files["seg"]) for c in cases_from_dataset(real, ("test",))
                 if c.case_id in tests and "seg" in c.files}
        return {"workspace": str(Path(workspace).resolve()), "ablation": ablation,
                "label_scheme": real.label_scheme.name, "cases": files["cases"],
                "truth": dict(sorted(truth.items())),
                "data": files["data"]}

    def params(self, plan: MixPlan, config: AblationConfig, data: Mapping[str, Any]) -> dict[str, Any]:
        from components.labelldm.training import resolve_device
        from components.segmentation.ldmseg import PROFILES

        cfg = _config(config, plan.seed)
        schedule = config.with_schedule().schedule
        device = resolve_device(cfg.device).type
        s = cfg.segmenter
        if device == "cpu":
            seed = {"seed_reproducible": True, "seed_note": "replay: every draw (cases, flips, noise, timesteps, the "
                    "samples) comes from generators seeded from the seed and runs on the CPU"}
        else:
            seed = {"seed_reproducible": False, "seed_note": "repeat: the draws are seeded, but CUDA kernels are not "
                    "deterministic, so a seed labels an independent repeat"}
        return {"schedule": schedule, "device": device, "ldmseg_profile": PROFILES[schedule],
                "ldmseg_autoencoder_steps": cfg.autoencoder_train.steps,
                "ldmseg_diffusion_steps": cfg.diffusion_train.steps,
                "ldmseg_controlnet_steps": s.controlnet_train.steps, "ldmseg_samples": s.samples,
                "ldmseg_sample_steps": s.sample_steps, "ldmseg_threshold": s.threshold,
                "ldmseg_grid": list(cfg.data.shape), "ldmseg_spacing": list(cfg.data.spacing or ()),
                "ldmseg_latent": [cfg.autoencoder.latent_channels, *cfg.latent_shape], **seed}

    def model_dir(self, plan: MixPlan, data: Mapping[str, Any]) -> Path:
        return Path(data["workspace"]) / "ablations" / data["ablation"] / plan.name / FOLDER

    def fit(self, plan: MixPlan, config: AblationConfig, data: Mapping[str, Any], gpu: str | None) -> FittedSegmenter:
        from components.segmentation.ldmseg import train

        trained = train(self.model_dir(plan, data), plan_case_files(plan, data, "LDM-seg"), data["label_scheme"],
                        _config(config, plan.seed), gpu=gpu, data=data["data"], label=plan.name)
        return FittedSegmenter(model_dir=trained.model_dir, train_keys=trained.train_keys, label=f"LDM-seg {plan.name}",
                               record={"ldmseg_train_keys": list(trained.train_keys),
                                       "ldmseg_train_seconds": round(trained.train_seconds, 2),
                                       "ldmseg_fit_seconds": round(trained.seconds, 2),
                                       "ldmseg_trained_stages": list(trained.trained)})

    def predict(self, model: FittedSegmenter, cases: Mapping[str, Sequence[Path]], out_dir: Path,
                config: AblationConfig, data: Mapping[str, Any], gpu: str | None) -> dict[str, Path]:
        from components.segmentation.ldmseg import predict

        return predict(model.model_dir, cases, out_dir, data["label_scheme"], gpu=gpu, truth=data.get("truth"))

    def artifacts(self, out_dir: Path) -> list[Path]:
        """What ``predict`` wrote besides the label maps (variance maps, calibration): for the run's artifacts."""
        from components.segmentation.ldmseg import prediction_artifacts

        return prediction_artifacts(out_dir)

    def metrics(self, out_dir: Path) -> dict[str, float]:
        """Scores of the prediction folder for the run's metrics (mean variance, variance-vs-error AUC)."""
        from components.segmentation.ldmseg import prediction_metrics

        return prediction_metrics(out_dir)
