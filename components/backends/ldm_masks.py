"""The ``ldm`` mask source: new tumour masks (head and tumour labels) sampled from a label-map latent
diffusion model learnt on the source's train split (``components.labelldm.masks``), written with the
``augment`` contract (seg + head files, manifest, features, checks) so every synthesizer reads them.

Its config is ``LdmMasksConfig`` (profile of ``configs/labelldm/``, masks per train case, seed, checks);
a ``MaskAugmentConfig`` is accepted too (its per_case, seed, checks; the train split only).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from pydantic import BaseModel

from components.labelldm.config import LabelLdmError
from data_catalog import dataset_dir, open_dataset

if TYPE_CHECKING:
    from components.labelldm.masks import LdmMasksSummary


class LdmMasks:
    def resolve_config(self, config: BaseModel | Mapping[str, Any] | None) -> BaseModel:
        """``LdmMasksConfig`` from a mapping (a pipeline config's ``masks.also`` entry), or coerced from a
        model (``MaskAugmentConfig``: its per_case, seed and checks); refuses bad settings in one sentence."""
        from components.labelldm.masks import LdmMasksConfig

        if isinstance(config, Mapping):
            from pydantic import ValidationError

            try:
                return LdmMasksConfig.model_validate(dict(config))
            except ValidationError as err:
                bad = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
                raise LabelLdmError(f"mask source ldm: {bad}") from None
        return LdmMasksConfig.coerce(config)

    def make(self, workspace: str | Path, source: str, name: str, config: BaseModel) -> LdmMasksSummary:
        from components.labelldm.masks import make_ldm_masks

        return make_ldm_masks(workspace, source, name, config)

    def outputs(self, workspace: str | Path, name: str) -> list[Path]:
        from components.labelldm.masks import TEST_FEATURES
        from components.masks import SOURCE_FEATURES

        out = dataset_dir(workspace, name)
        return [out / "dataset.json", out / SOURCE_FEATURES, out / TEST_FEATURES]

    def figures(self, workspace: str | Path, name: str, n_cases: int) -> dict[str, Any]:
        from components.masks import SOURCE_FEATURES, mask_figures

        ds = open_dataset(workspace, name)
        return mask_figures(ds, pd.read_parquet(ds.root / SOURCE_FEATURES), n_cases=n_cases)

    def figure_files(self, workspace: str | Path, name: str) -> list[Path]:
        root = dataset_dir(workspace, name)
        return [root / "features.png", root / "montage.png"]

    def dataset_metrics(self, workspace: str | Path, name: str) -> dict[str, float]:
        """What the pipeline logs on MLflow for this masks dataset: ``mask_pass_rate``, ``mask_fid`` and
        ``mask_fid_floor``, ``mask_wdist_<feature>`` and ``mask_wdist_<feature>_floor``, ``mask_realism_n``."""
        from components.labelldm.masks import mask_realism_metrics

        return mask_realism_metrics(workspace, name)
