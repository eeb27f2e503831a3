"""The anatomical prior of an augmented mask: the model's prior moved with the mask's head.

The prior (the training cases' mean healthy tissue, see ``data.healthy_mean_prior``) sits on the
model grid the way every case does: cropped/padded around its head by ``data.fit_case``. An
augmented mask (components.masks.augment) is its host case's head flipped and/or rotated, scaled
and shifted, with the parameters in the masks manifest's ``params``. Its prior is therefore the
prior put on the host's native grid (inverse of the host's fit), moved by the mask's recorded
whole-head transform, and fitted like the mask: one affine pull-back from the mask's model grid to
the prior's, sampled linearly. Tumour-local ops (elastic, scaling, relocation) move no anatomy.
A mask without a whole-head transform keeps the prior as it is (the very same array).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from components.synthesis.config import DataConfig, SynthesisError

if TYPE_CHECKING:
    from components.masks.params import MaskParams

NONE = "none"


def mask_params(row: pd.Series) -> MaskParams | None:
    """The augmentation params of a masks-manifest row, or None for a mask that has none (a real
    mask; a dataset whose ``params`` say how it was made, not how a mask was augmented)."""
    from components.masks.params import MaskParams

    raw = row.get("params")
    if isinstance(raw, MaskParams):
        return raw
    if isinstance(raw, str):
        if not raw.strip():
            return None
        try:
            raw = json.loads(raw)
        except ValueError as err:
            raise SynthesisError(f"mask case {row.get('case_id')}: params are not JSON ({err})") from err
    if not isinstance(raw, Mapping) or "version" not in raw:  # augmentation params carry their version
        return None
    try:
        return MaskParams.parse(raw)
    except ValueError as err:
        raise SynthesisError(f"mask case {row.get('case_id')}: params are not mask-augmentation params "
                             f"({str(err).splitlines()[0]})") from err


def prior_transform_kind(params: MaskParams | Mapping[str, Any] | None) -> str:
    """"none", "flip", "affine" or "affine+flip": the whole-head transforms the prior must follow."""
    from components.masks.augment import head_transform_kind

    return head_transform_kind(params)


def transform_prior(prior: np.ndarray, params: MaskParams | Mapping[str, Any] | None, mask_grid_affine: np.ndarray, mask_affine: np.ndarray,
                    host_grid_affine: np.ndarray, host_affine: np.ndarray) -> np.ndarray:
    """The prior (C, X, Y, Z) for the mask that ``params`` made from its host's head.

    mask_grid_affine / host_grid_affine: model-grid affines of the fitted mask and host
    (``FittedCase.affine``); mask_affine / host_affine: their native (file) affines.
    Returns ``prior`` itself when ``params`` apply no whole-head transform, else a new float32
    array, linear interpolation, -1 (the prior's outside-every-head value) where it maps off the grid.
    """
    from scipy import ndimage as ndi

    from components.masks.augment import head_voxel_map

    vox = head_voxel_map(params)
    if vox is None:
        return prior
    inv = np.linalg.inv
    # mask model voxel -> mm -> mask native voxel -> host native voxel (undo flip/affine) -> mm -> host model voxel
    q = inv(np.asarray(host_grid_affine, float)) @ np.asarray(host_affine, float) @ vox \
        @ inv(np.asarray(mask_affine, float)) @ np.asarray(mask_grid_affine, float)
    p = np.asarray(prior, dtype=np.float32)
    return np.stack([ndi.affine_transform(c, q[:3, :3], q[:3, 3], order=1, mode="constant", cval=-1.0)
                     for c in p]).astype(np.float32)


def host_grid(masks_root: Path, source_features: str, host_case: str, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """(model-grid affine, native affine) of a masks dataset's source case ``host_case``, fitted as
    ``synthesize`` fits a mask (its head file, tumour included, cropped/padded to the model grid)."""
    from components.io import load_nifti
    from components.synthesis.data import fit_case

    table = Path(masks_root) / source_features
    if not table.is_file():
        raise SynthesisError(f"{table} is missing: the prior cannot follow the mask's recorded head transform "
                             f"without its host case {host_case}'s head (re-run augment-masks)")
    rows = pd.read_parquet(table, columns=["case_id", "seg", "head"])
    hit = rows.loc[rows["case_id"] == host_case]
    if hit.empty:
        raise SynthesisError(f"host case {host_case} is not in {table}: the prior cannot follow the mask's head")
    seg, affine, _ = load_nifti(Path(masks_root) / hit.iloc[0]["seg"])
    head, _, _ = load_nifti(Path(masks_root) / hit.iloc[0]["head"])
    seg = np.rint(np.asarray(seg)).astype(np.uint8)
    head = (np.asarray(head) > 0) | (seg > 0)  # as data.load_case reads a mask
    return fit_case(None, seg, head, affine, cfg).affine, np.asarray(affine, dtype=float)
