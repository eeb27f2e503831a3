"""Tasks for the mask augmentation stage: the masks dataset and its figures."""

from __future__ import annotations

from dataclasses import asdict

import pandas as pd
from prefect import task

from components.masks import SOURCE_FEATURES, MaskAugmentConfig, augment_masks, mask_figures
from data_catalog import open_dataset
from tasks.common import CACHE, IO_RETRIES


@task(name="augment-masks", cache_policy=CACHE, persist_result=True, **IO_RETRIES)
def augment_masks_task(workspace: str, source: str, source_manifest_sha256: str, name: str,
                       config: MaskAugmentConfig) -> dict:
    # source_manifest_sha256 is part of the cache key: a changed source dataset re-runs the stage.
    s = augment_masks(workspace, source, name, config)
    d = asdict(s)
    d["line"] = s.line()
    d["report"] = s.report()
    return d


@task(name="mask-figures", cache_policy=CACHE, persist_result=True, **IO_RETRIES)
def mask_figures_task(workspace: str, name: str, manifest_sha256: str, n_cases: int = 4) -> dict:
    ds = open_dataset(workspace, name)
    real = pd.read_parquet(ds.root / SOURCE_FEATURES)
    return mask_figures(ds, real, n_cases=n_cases)
