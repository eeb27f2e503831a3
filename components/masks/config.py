"""Typed settings of the mask augmentation stage (saved in the masks dataset's dataset.json)."""

from __future__ import annotations

from pydantic import Field, model_validator

from components.config_base import FrozenModel


def _check_range(name: str, r: tuple[float, float], lo: float | None = None) -> None:
    if r[0] > r[1]:
        raise ValueError(f"{name}: range must be (low, high) with low <= high, got {r}")
    if lo is not None and r[0] < lo:
        raise ValueError(f"{name}: values must be >= {lo}, got {r}")


class FlipConfig(FrozenModel):
    """Left-right flip of the whole head (the voxel axis closest to the scanner's x axis)."""

    p: float = Field(0.5, ge=0.0, le=1.0, description="probability of a left-right flip")


class AffineConfig(FrozenModel):
    """Rigid-plus-scale transform of the whole head (head and tumour together) about the head centre."""

    p: float = Field(0.7, ge=0.0, le=1.0, description="probability of an affine transform")
    rotation_deg: float = Field(10.0, ge=0.0, le=45.0, description="max |angle| per axis in degrees")
    scale: tuple[float, float] = Field((0.92, 1.08), description="isotropic scale range")
    translation_mm: float = Field(6.0, ge=0.0, description="max |shift| per axis in mm")

    @model_validator(mode="after")
    def _ranges(self) -> AffineConfig:
        _check_range("affine.scale", self.scale, lo=0.1)
        return self


class ElasticConfig(FrozenModel):
    """Smooth random displacement of the tumour only (cubic B-spline on a control lattice)."""

    p: float = Field(0.6, ge=0.0, le=1.0, description="probability of an elastic deformation of the tumour")
    magnitude_mm: tuple[float, float] = Field((1.0, 4.0), description="std of control-point displacements in mm")
    control_mm: tuple[float, float] = Field((10.0, 20.0), description="control-point spacing in mm")

    @model_validator(mode="after")
    def _ranges(self) -> ElasticConfig:
        _check_range("elastic.magnitude_mm", self.magnitude_mm, lo=0.0)
        _check_range("elastic.control_mm", self.control_mm, lo=1.0)
        return self


class TumourScaleConfig(FrozenModel):
    """Scaling of the tumour about its centre of mass (head unchanged)."""

    p: float = Field(0.6, ge=0.0, le=1.0, description="probability of scaling the tumour")
    scale: tuple[float, float] = Field((0.7, 1.4), description="linear scale range")
    anisotropy: float = Field(0.15, ge=0.0, lt=1.0, description="per-axis factor drawn in [1-a, 1+a] on top of the scale")

    @model_validator(mode="after")
    def _ranges(self) -> TumourScaleConfig:
        _check_range("tumour_scale.scale", self.scale, lo=0.05)
        return self


class RelocateConfig(FrozenModel):
    """Move the tumour to another position inside a brain: its own head or another case's (same split)."""

    p: float = Field(0.5, ge=0.0, le=1.0, description="probability of relocating the tumour")
    p_other_case: float = Field(0.5, ge=0.0, le=1.0,
                                description="given a relocation, probability that the host head is another case's")
    depth_frac: float = Field(0.5, ge=0.0, le=3.0,
                              description="candidate centres lie at least depth_frac x the tumour's equivalent-sphere radius "
                                          "inside the host head (distance to the head surface in mm)")


class CheckConfig(FrozenModel):
    """Plausibility checks applied to every candidate mask (see components.masks.checks)."""

    volume_mm3_wt: tuple[float, float] = Field((500.0, 500_000.0), description="absolute whole-tumour volume bounds in mm^3")
    volume_ratio: tuple[float, float] = Field((0.3, 3.0),
                                              description="bounds on volume(augmented)/volume(source), per region present in the source")
    min_fragment_mm3: float = Field(20.0, ge=0.0, description="a connected component of a region smaller than this is a stray fragment")
    nesting_tolerance: float = Field(0.15, ge=0.0, le=1.0,
                                     description="allowed increase of the exposure of an inner region outside its outer region")

    @model_validator(mode="after")
    def _ranges(self) -> CheckConfig:
        _check_range("checks.volume_mm3_wt", self.volume_mm3_wt, lo=0.0)
        _check_range("checks.volume_ratio", self.volume_ratio, lo=0.0)
        return self


class MaskAugmentConfig(FrozenModel):
    """Settings of one masks dataset: how many masks, which transforms, which checks."""

    per_case: int = Field(4, ge=1, le=10_000, description="augmented masks requested per source case")
    seed: int = Field(0, ge=0)
    max_draws: int = Field(10, ge=1, le=1000, description="candidates drawn per requested mask before it is recorded as failed")
    splits: tuple[str, ...] = Field(("train", "test"), description="source splits to augment; each mask keeps its source's split")
    workers: int = Field(2, ge=1, le=64)
    closing_mm: float = Field(4.0, ge=0.0, description="closing radius of the head label in mm")
    host_cache: int = Field(16, ge=1, description="host heads (with depth maps) kept in memory for relocations")
    montage_cases: int = Field(4, ge=1, le=16)
    flip: FlipConfig = FlipConfig()
    affine: AffineConfig = AffineConfig()
    elastic: ElasticConfig = ElasticConfig()
    tumour_scale: TumourScaleConfig = TumourScaleConfig()
    relocate: RelocateConfig = RelocateConfig()
    checks: CheckConfig = CheckConfig()

    @model_validator(mode="after")
    def _splits(self) -> MaskAugmentConfig:
        bad = [s for s in self.splits if s not in ("train", "test")]
        if bad or not self.splits:
            raise ValueError(f"splits must be a non-empty subset of ('train', 'test'), got {self.splits}")
        return self
