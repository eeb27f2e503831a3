"""Flow of the mask augmentation stage: head labels, augmented masks, checks, features, figures."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from pydantic import BaseModel, ConfigDict

from components.masks import SOURCE_FEATURES, MaskAugmentConfig
from data_catalog import dataset_dir, open_dataset
from tasks.common import run_cached
from tasks.masks import augment_masks_task, mask_figures_task


class AugmentMasksParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    source: str
    name: str
    workspace: str = "workspace"
    config: MaskAugmentConfig = MaskAugmentConfig()


@flow(name="augment-masks")
def augment_masks_flow(params: AugmentMasksParams) -> dict:
    logger = get_run_logger()
    ws = str(Path(params.workspace).resolve())
    src = open_dataset(ws, params.source)
    out = dataset_dir(ws, params.name)
    summary = run_cached(
        augment_masks_task, [out / "dataset.json", out / SOURCE_FEATURES], workspace=ws, source=params.source,
        source_manifest_sha256=src.manifest_digest, name=params.name, config=params.config,
    )
    ds = open_dataset(ws, params.name)
    figures = run_cached(
        mask_figures_task, [ds.root / "features.png", ds.root / "montage.png"], workspace=ws, name=params.name,
        manifest_sha256=ds.manifest_digest, n_cases=params.config.montage_cases,
    )
    summary.update(figures)
    logger.info(summary["line"])
    return summary
