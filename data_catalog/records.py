"""Typed records of the workspace contract: one manifest row, one case of an opened dataset, one dataset.json.

The files stay what they are (``manifest.parquet``, and ``manifest.csv`` in an export, one row per
case; ``dataset.json``); these models say what their columns and keys hold, refuse a bad row in one
sentence that names the column, and give one accessor for a case's files (``file_of`` /
``has_file``: a file column holds a relative path, or "" / nothing when the case has no such file).

Writers build rows as dicts, in the column order they have always had (a manifest's columns follow
its first row's keys); ``register_dataset`` checks every row with :class:`ManifestRow` before it
writes the manifest. A manifest may carry more columns than those named here (the masks dataset's
tumour features, a tool's own columns): they are kept as they are.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from components.errors import GliosynthError

MODALITIES: tuple[str, ...] = ("t1n", "t1c", "t2w", "t2f")
CASE_FILE_KEYS: tuple[str, ...] = (*MODALITIES, "seg", "head")  # every file column a manifest may have
Kind = Literal["real", "phantom", "masks", "synthetic", "mix"]
KINDS: tuple[str, ...] = get_args(Kind)
STATUS_OK = "ok"
STATUS_QUARANTINED = "quarantined"
SPLITS = ("train", "test")
REQUIRED_COLUMNS = ("case_id", "status", "reason", "split")


class CatalogError(GliosynthError, RuntimeError):
    """A dataset is missing or does not follow the workspace contract."""


# --------------------------------------------------------------------------- values
def plain(value: Any) -> Any:
    """A manifest cell as plain Python: numpy scalars and arrays unwrapped, NaN / NA / None as None."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def text_of(row: Mapping[str, Any] | ManifestRow | Any, key: str) -> str | None:
    """The text in column ``key`` of a manifest row (a dict, a pandas row or a ManifestRow), or None
    when it has none (no such column, "", NaN, None)."""
    v = getattr(row, key, None) if isinstance(row, BaseModel) else row.get(key)
    return v if isinstance(v, str) and v else None


def file_of(row: Mapping[str, Any] | ManifestRow | Any, key: str) -> str | None:
    """The relative path in file column ``key`` (a modality, 'seg' or 'head') of a manifest row, or
    None when the case has no such file."""
    return text_of(row, key)


def has_file(row: Mapping[str, Any] | ManifestRow | Any, key: str) -> bool:
    """Whether a manifest row names a file in column ``key`` (see ``file_of``)."""
    return file_of(row, key) is not None


# --------------------------------------------------------------------------- manifest rows
class ManifestRow(BaseModel):
    """One row of a dataset's manifest: the four required columns, then every column a writer of
    this code base may add (None: the dataset has no such column or the case no such value)."""

    model_config = ConfigDict(extra="allow")

    case_id: str = Field(..., min_length=1, description="the case's folder name under cases/")
    status: Literal["ok", "quarantined"]
    reason: str = Field(..., description="why a quarantined case is kept out, in one sentence; '' when ok")
    split: Literal["train", "test", ""] = Field(..., description="'' only for a quarantined case without a split")
    # files, relative to the dataset folder ('' or None: the case has no such file), and their digests
    t1n: str | None = None
    t1c: str | None = None
    t2w: str | None = None
    t2f: str | None = None
    seg: str | None = None
    head: str | None = None
    sha256_t1n: str | None = None
    sha256_t1c: str | None = None
    sha256_t2w: str | None = None
    sha256_t2f: str | None = None
    sha256_seg: str | None = None
    sha256_head: str | None = None
    # the grid and the labels
    has_seg: bool | None = None
    shape: tuple[int, int, int] | None = None
    spacing: tuple[float, float, float] | None = None
    orientation: str | None = None
    labels: list[int] | None = None
    source_labels: list[int] | None = None
    # where the case comes from
    source_path: str | None = None
    source_case: str | None = Field(None, description="the real case it was derived from (masks, synthetic)")
    mask_case: str | None = Field(None, description="the mask it was conditioned on (synthetic)")
    host_case: str | None = Field(None, description="whose head an augmented mask uses (masks)")
    seed: int | None = None
    draws: int | None = Field(None, ge=0, description="candidate draws spent on an augmented mask (masks)")
    params: str | None = Field(None, description="JSON of how the case was made (phantom, masks, synthetic)")
    model_digest: str | None = None
    quality_score: float | None = None
    fingerprint: str | None = None

    @field_validator("reason")
    @classmethod
    def _reason_for_quarantine(cls, v: str, info: ValidationInfo) -> str:
        if info.data.get("status") == STATUS_QUARANTINED and not v.strip():
            raise ValueError("a quarantined case needs its one-sentence reason")
        return v

    @classmethod
    def from_row(cls, row: Mapping[str, Any] | Any, where: str = "") -> ManifestRow:
        """Validate one row (a dict or a pandas row). Raises CatalogError with one sentence naming
        the column; ``where`` (e.g. "dataset 'x'") starts it."""
        data = {str(k): plain(v) for k, v in (row.items() if hasattr(row, "items") else dict(row).items())}
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise CatalogError(_row_error(err, data, where)) from None

    def path_of(self, key: str) -> str | None:
        """The relative path of file ``key`` (a modality, 'seg' or 'head'), or None."""
        return file_of(self, key)

    def has_file(self, key: str) -> bool:
        return self.path_of(key) is not None

    @property
    def is_ok(self) -> bool:
        return self.status == STATUS_OK

    def to_row(self) -> dict[str, Any]:
        """The row as plain values, the columns it was given only (declared columns first, then the others)."""
        return self.model_dump(mode="json", exclude_unset=True)


def _row_error(err: ValidationError, data: Mapping[str, Any], where: str) -> str:
    e = err.errors()[0]
    col = str(e["loc"][0]) if e["loc"] else "?"
    cid = data.get("case_id")
    who = f"case {cid!r}" if isinstance(cid, str) and cid else "a row without a case_id"
    found = "is missing" if col not in data else f"holds {data[col]!r}"
    msg = e["msg"].removeprefix("Value error, ")
    if len(e["loc"]) > 1:  # an element of a list or tuple column
        msg = f"item {'.'.join(str(x) for x in e['loc'][1:])}: {msg[:1].lower()}{msg[1:]}"
    return f"{where + ', ' if where else ''}{who}: manifest column {col!r} {found}: {msg[:1].lower()}{msg[1:]}"


def validate_manifest_rows(rows: Iterable[Mapping[str, Any]], where: str = "") -> None:
    """Check every row (raises CatalogError on the first bad one)."""
    for row in rows:
        ManifestRow.from_row(row, where)


def quarantine_row(case_id: str, reason: str, split: str, *, file_keys: Iterable[str] = (), **fields: Any) -> dict[str, Any]:
    """The manifest row of a case kept out of a dataset, with the one sentence that says why.

    Columns in this order (a manifest's columns follow its first row): the file column of every
    key in ``file_keys`` then their ``sha256_`` columns, all empty; case_id, status, reason, split;
    then ``fields`` in the order given. Refused (CatalogError) when it is not a valid row.
    """
    keys = tuple(file_keys)
    row: dict[str, Any] = {k: "" for k in keys}
    row.update({f"sha256_{k}": "" for k in keys})
    row.update(case_id=case_id, status=STATUS_QUARANTINED, reason=reason, split=split)
    row.update(fields)
    ManifestRow.from_row(row)
    return row


class CaseRecord(BaseModel):
    """One case of an opened dataset: its manifest row and the folder its files are relative to."""

    model_config = ConfigDict(frozen=True)

    dataset: str
    root: Path
    row: ManifestRow

    @property
    def case_id(self) -> str:
        return self.row.case_id

    def path_of(self, key: str) -> Path | None:
        """Absolute path of file ``key`` (a modality, 'seg' or 'head'), or None when the case has none."""
        rel = self.row.path_of(key)
        return None if rel is None else self.root / rel

    def has_file(self, key: str) -> bool:
        return self.row.has_file(key)

    def path(self, key: str) -> Path:
        """As ``path_of``, refusing (CatalogError) a file the case does not have."""
        p = self.path_of(key)
        if p is None:
            raise CatalogError(f"dataset {self.dataset!r}, case {self.case_id!r} has no {key!r} file")
        return p


# --------------------------------------------------------------------------- dataset.json
class ParentEntry(BaseModel):
    """A dataset this one was made from, and the digest of its manifest at the time."""

    model_config = ConfigDict(extra="allow")

    name: str
    manifest_sha256: str = ""


class DatasetInfo(BaseModel):
    """``dataset.json``: provenance of a dataset. The keys every dataset has are named here; a
    kind's own keys (``source``, ``model``, ``augmentation``, ...) are kept as they are."""

    model_config = ConfigDict(extra="allow")

    name: str
    kind: Kind
    label_scheme: str
    modalities: list[str]
    shape: list[int] | None
    spacing: list[float] | None
    n_cases: int = Field(..., ge=0)
    n_ok: int = Field(..., ge=0)
    n_quarantined: int = Field(..., ge=0)
    parents: list[ParentEntry]
    config: dict[str, Any]
    created: str
    code_version: str
    manifest_sha256: str

    @classmethod
    def from_info(cls, info: Mapping[str, Any], where: str = "") -> DatasetInfo:
        """Validate a dataset.json dict; CatalogError with one sentence naming the key."""
        data = plain(dict(info))
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            e = err.errors()[0]
            key = ".".join(str(x) for x in e["loc"]) or "?"
            found = "is missing" if e["type"] == "missing" else f"holds {e.get('input')!r}"
            raise CatalogError(f"{where + ': ' if where else ''}dataset.json key {key!r} {found}: {e['msg']}") from None
