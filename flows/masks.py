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
    config: MaskAugmentConfig = MaskAugmentConfig()
    source_config: dict[str, Any] | None = Field(None, description="settings of a mask source that has its own "
                                                  "(ldm: profile, per_case, seed, ...), read by its resolve_config "
                                                  "in place of config")


@flow(name="augment-masks")
def augment_masks_flow(params: AugmentMasksParams) -> dict:
    logger, ws = get_run_logger(), params.root
    masks = get_mask_source(params.backend)
    resolve = getattr(masks, "resolve_config", None)
    given = params.source_config if params.source_config is not None else params.config
    config = resolve(given) if resolve is not None else params.config
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
