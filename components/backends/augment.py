"""The ``augment`` mask source: seeded, checked augmentations of a dataset's own segmentations
(``components.masks``), with head labels, tumour features and figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel

from components.masks import SOURCE_FEATURES, AugmentSummary, MaskAugmentConfig, augment_masks, mask_figures
from data_catalog import dataset_dir, open_dataset


class AugmentMasks:
    def make(self, workspace: str | Path, source: str, name: str, config: BaseModel) -> AugmentSummary:
        cfg = config if isinstance(config, MaskAugmentConfig) else MaskAugmentConfig.model_validate(config.model_dump())
        return augment_masks(workspace, source, name, cfg)

    def outputs(self, workspace: str | Path, name: str) -> list[Path]:
        out = dataset_dir(workspace, name)
        return [out / "dataset.json", out / SOURCE_FEATURES]

    def figures(self, workspace: str | Path, name: str, n_cases: int) -> dict[str, Any]:
        ds = open_dataset(workspace, name)
        return mask_figures(ds, pd.read_parquet(ds.root / SOURCE_FEATURES), n_cases=n_cases)

    def figure_files(self, workspace: str | Path, name: str) -> list[Path]:
        root = dataset_dir(workspace, name)
        return [root / "features.png", root / "montage.png"]
