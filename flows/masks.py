"""Flow of the mask stage: a masks dataset from a labelled one (``augment``: head labels, augmented
masks, checks, features), then its figures. The mask source is a name in ``components.backends``."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from pydantic import Field

from components.backends import DEFAULT_MASK_SOURCE, MaskSourceName, get_mask_source
from components.masks import MaskAugmentConfig
from data_catalog import open_dataset
from flows.params import StageParams
from tasks.common import run_cached
from tasks.masks import augment_masks_task, mask_figures_task


class AugmentMasksParams(StageParams):
    source: str = Field(description="dataset holding the real masks (an ingested release or a phantom)")
    name: str = Field(description="name of the masks dataset to write")
    backend: MaskSourceName = Field(DEFAULT_MASK_SOURCE, description="mask source backend (components.backends "
                                    "registry; augment: seeded, checked augmentations of the source's own masks)")
    config: MaskAugmentConfig | dict[str, Any] = Field(
        MaskAugmentConfig(), union_mode="left_to_right", description="the source's settings (augment: "
        "MaskAugmentConfig; another source: its own, read by the backend's resolve_config)")


@flow(name="augment-masks")
def augment_masks_flow(params: AugmentMasksParams) -> dict:
    logger, ws = get_run_logger(), params.root
    masks = get_mask_source(params.backend)
    resolve = getattr(masks, "resolve_config", None)
    config = resolve(params.config) if resolve is not None else params.config
    src = open_dataset(ws, params.source)
    summary = run_cached(
        augment_masks_task, masks.outputs(ws, params.name), workspace=ws, backend=params.backend,
        source=params.source, source_manifest_sha256=src.manifest_digest, name=params.name, config=config,
    )
    ds = open_dataset(ws, params.name)
    figures = run_cached(
        mask_figures_task, masks.figure_files(ws, params.name), workspace=ws, backend=params.backend,
        name=params.name, manifest_sha256=ds.manifest_digest, n_cases=getattr(config, "montage_cases", 4),
    )
    summary.update(figures)
    logger.info(summary["line"])
    return summary
