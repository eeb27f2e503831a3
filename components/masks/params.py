"""The parameters of one augmented mask, as drawn by ``sample_mask_params`` and stored in the masks
manifest's ``params`` column (JSON, keys sorted, no spaces): enough to replay the mask exactly from
its source seg and head (and its host's head). ``None`` for a transform that was not applied.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import Field

from components.config_base import FrozenModel

PARAMS_VERSION = 1
Vec3 = tuple[float, float, float]


class ElasticParams(FrozenModel):
    """Cubic B-spline displacement of the tumour: Gaussian control points regenerated from ``seed``."""

    seed: int = Field(..., ge=0)
    magnitude_mm: float = Field(..., ge=0.0, description="std of the control-point displacements in mm")
    control_mm: float = Field(..., gt=0.0, description="control-point spacing in mm")


class TumourParams(FrozenModel):
    """Elastic + per-axis scaling of the tumour about its centre, moved to ``centre_dst_vox``."""

    centre_src_vox: Vec3
    centre_dst_vox: Vec3
    scale: Vec3
    elastic: ElasticParams | None = None


class FlipParams(FrozenModel):
    """Left-right flip of the whole head along voxel ``axis``."""

    axis: int = Field(..., ge=0, le=2)


class AffineParams(FrozenModel):
    """y = c + t + s R (x - c) in mm, R from xyz Euler angles in degrees, about ``centre_vox``."""

    centre_vox: Vec3
    rotation_deg: Vec3
    scale: float = Field(..., gt=0.0)
    translation_mm: Vec3


class MaskParams(FrozenModel):
    """Everything ``apply_mask_params`` needs to make one augmented mask (see components.masks.augment)."""

    version: int = PARAMS_VERSION
    source_case: str
    host_case: str = Field(..., description="whose head the mask uses: the source case's own or another's")
    shape: tuple[int, int, int]
    spacing: Vec3
    tumour: TumourParams | None = None
    flip: FlipParams | None = None
    affine: AffineParams | None = None
    draw: int | None = Field(None, ge=0, description="index of the accepted candidate draw (set by the masks dataset)")

    def to_json(self) -> str:
        """The manifest's form: sorted keys, no spaces; ``draw`` only once it is set."""
        d = self.model_dump(mode="json", exclude={"draw"} if self.draw is None else None)
        return json.dumps(d, sort_keys=True, separators=(",", ":"))

    @classmethod
    def parse(cls, params: MaskParams | Mapping[str, Any] | str) -> MaskParams:
        """The model of ``params`` (a model, a dict as ``json.loads`` gives it, or the JSON text).
        Raises ValueError (pydantic's ValidationError) when they are not mask parameters."""
        if isinstance(params, cls):
            return params
        if isinstance(params, str):
            return cls.model_validate_json(params)
        return cls.model_validate(params)

    @classmethod
    def coerce(cls, params: MaskParams | Mapping[str, Any] | str | None) -> MaskParams | None:
        """As ``parse``, with None for no params (None, an empty dict or blank text: a real mask)."""
        if params is None or (isinstance(params, str) and not params.strip()) or (isinstance(params, Mapping) and not params):
            return None
        return cls.parse(params)
