"""What every part of ingestion shares: the error, the config and a discovered case."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field, ValidationInfo, field_validator

from components.config_base import FrozenModel
from components.errors import GliosynthError
from data_catalog import (
    MODALITIES,
    label_scheme_names,
    load_layouts,
)

AFFINE_TOL_MM = 1e-3
FILE_KEYS = (*MODALITIES, "seg")


class IngestError(GliosynthError, RuntimeError):
    """The source as a whole cannot be ingested (nothing recognisable, mixed layouts, ...)."""


class CaseProblem(Exception):
    """One case is invalid; the message is the manifest's one-sentence reason."""


class SourceChoices(FrozenModel):
    """The label scheme and layout of a source, checked against the registries (shared by every ingester)."""

    label_scheme: str = "auto"
    layout: str = "auto"

    @field_validator("label_scheme", "layout")
    @classmethod
    def _known(cls, v: str, info: ValidationInfo) -> str:
        # the registries are YAML data (data_catalog/), so the allowed values are read, not listed
        known = ["auto", *(label_scheme_names() if info.field_name == "label_scheme" else load_layouts())]
        if v not in known:
            raise ValueError(f"unknown {info.field_name.replace('_', ' ')} {v!r}: expected one of {known}")
        return v


class IngestConfig(SourceChoices):
    """Settings of one ingestion run (saved in dataset.json)."""

    label_scheme: str = Field("auto", description="source label scheme: auto, brats2021, brats2023, brats2024_post, msd")
    layout: str = Field("auto", description="release layout: auto, brats2021, brats2023, msd_task01")
    test_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="fraction of cases hashed into the test split")
    split_salt: str = "gliosynth"
    workers: int = Field(2, ge=1)



@dataclass
class CaseSource:
    """Where one case's files are in the source tree."""

    case_id: str
    layout: str
    folder: Path
    files: dict[str, list[Path]] = field(default_factory=dict)  # canonical key -> candidate files
    msd_image: Path | None = None
    msd_label: Path | None = None

    def all_files(self) -> list[Path]:
        if self.msd_image is not None:
            return [p for p in (self.msd_image, self.msd_label) if p is not None]
        return sorted(p for ps in self.files.values() for p in ps)
