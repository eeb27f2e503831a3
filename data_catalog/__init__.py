"""Dataset registry: the workspace contract of docs/design.md §2, label schemes and release layouts.

A dataset lives in ``<workspace>/datasets/<name>/`` as ``dataset.json`` (provenance) +
``manifest.parquet`` (one row per case) + ``cases/<case_id>/`` (NIfTI files). The typed records of
a row and of dataset.json are in ``data_catalog.records`` (re-exported here).
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from components.io import atomic_path, write_json_atomic
from data_catalog.records import (
    CASE_FILE_KEYS,
    KINDS,
    MODALITIES,
    REQUIRED_COLUMNS,
    SPLITS,
    STATUS_OK,
    STATUS_QUARANTINED,
    CaseRecord,
    CatalogError,
    DatasetInfo,
    ManifestRow,
    ParentEntry,
    file_of,
    has_file,
    quarantine_row,
    text_of,
    validate_manifest_rows,
)

__all__ = [
    "CASE_FILE_KEYS", "CATALOG_DIR", "KINDS", "MODALITIES", "REQUIRED_COLUMNS", "SPLITS", "STATUS_OK", "STATUS_QUARANTINED",
    "CaseRecord", "CatalogError", "Dataset", "DatasetInfo", "LabelScheme", "ManifestRow", "ParentEntry",
    "assign_split", "code_version", "dataset_dir", "dataset_parent_entry", "datasets_dir", "file_of", "has_file",
    "label_scheme_names", "list_dataset_names", "list_datasets", "load_label_scheme", "load_layouts", "open_dataset",
    "quarantine_row", "register_dataset", "remove_stale_cases", "text_of", "validate_manifest_rows", "write_manifest",
]

CATALOG_DIR = Path(__file__).resolve().parent


# --------------------------------------------------------------------------- label schemes
@dataclass(frozen=True)
class LabelScheme:
    name: str
    description: str
    canonical: bool
    labels: dict[str, int]
    regions: dict[str, tuple[int, ...]]
    to_canonical: str | None = None
    mapping: dict[int, int] = field(default_factory=dict)
    nnunet_regions: tuple[tuple[str, tuple[int, ...], int], ...] = ()

    @property
    def values(self) -> tuple[int, ...]:
        """Allowed values in a seg file, background included."""
        return (0, *sorted(self.labels.values()))

    def label(self, name: str) -> int:
        try:
            return self.labels[name]
        except KeyError as err:
            raise KeyError(f"label scheme {self.name!r} has no label {name!r}; it has {sorted(self.labels)}") from err

    def conditioning_values(self) -> dict[int, int]:
        """Seg value -> conditioning channel (GliomaGen): 0 background, 1 head, tumour labels + 1."""
        return {v: v + 1 for v in sorted(self.labels.values())}


@functools.cache
def _read_yaml(name: str) -> dict[str, Any]:
    with open(CATALOG_DIR / name, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def label_scheme_names(canonical_only: bool = False) -> list[str]:
    data = _read_yaml("label_schemes.yaml")
    return [k for k, v in data.items() if v.get("canonical") or not canonical_only]


def load_label_scheme(name: str) -> LabelScheme:
    data = _read_yaml("label_schemes.yaml")
    if name not in data:
        raise CatalogError(f"unknown label scheme {name!r}; known: {', '.join(data)}")
    d = data[name]
    tc = d.get("to_canonical") or {}
    return LabelScheme(
        name=name,
        description=d["description"],
        canonical=bool(d.get("canonical")),
        labels={k: int(v) for k, v in d["labels"].items()},
        regions={k: tuple(int(x) for x in v) for k, v in d["regions"].items()},
        to_canonical=tc.get("scheme"),
        mapping={int(k): int(v) for k, v in (tc.get("map") or {}).items()},
        nnunet_regions=tuple((str(n), tuple(int(x) for x in labs), int(out)) for n, labs, out in d.get("nnunet_regions", [])),
    )


def load_layouts() -> dict[str, dict[str, Any]]:
    return dict(_read_yaml("layouts.yaml"))


# --------------------------------------------------------------------------- splits
def assign_split(case_id: str, test_fraction: float, salt: str = "gliosynth") -> str:
    """Deterministic split from a hash of the case id (stable across machines and runs)."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    h = int(hashlib.sha256(f"{salt}:{case_id}".encode()).hexdigest()[:12], 16)
    return "test" if h / float(1 << 48) < test_fraction else "train"


# --------------------------------------------------------------------------- datasets
def code_version() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(CATALOG_DIR.parent), "describe", "--always", "--dirty"],
            capture_output=True, text=True, timeout=5, check=False,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def datasets_dir(workspace: str | Path) -> Path:
    return Path(workspace) / "datasets"


def dataset_dir(workspace: str | Path, name: str) -> Path:
    if not name or "/" in name or name.startswith("."):
        raise CatalogError(f"invalid dataset name {name!r}: use letters, digits, '-' and '_'")
    return datasets_dir(workspace) / name


@dataclass
class Dataset:
    """An opened dataset: its folder, its dataset.json and its manifest."""

    root: Path
    info: dict[str, Any]
    manifest: pd.DataFrame

    @property
    def name(self) -> str:
        return self.info["name"]

    @property
    def label_scheme(self) -> LabelScheme:
        return load_label_scheme(self.info["label_scheme"])

    @property
    def dataset_info(self) -> DatasetInfo:
        """dataset.json as its typed record."""
        return DatasetInfo.from_info(self.info, where=str(self.root / "dataset.json"))

    def record(self, case_id: str) -> CaseRecord:
        """One case: its typed manifest row and the folder its files are relative to."""
        row = self.manifest.loc[self.manifest["case_id"] == case_id]
        if row.empty:
            raise CatalogError(f"dataset {self.name!r} has no case {case_id!r}")
        return CaseRecord(dataset=self.name, root=self.root,
                          row=ManifestRow.from_row(row.iloc[0], where=f"dataset {self.name!r}"))

    def records(self, split: str | None = None) -> list[CaseRecord]:
        """The ok cases (of ``split``), as typed records, in manifest order."""
        return [CaseRecord(dataset=self.name, root=self.root, row=ManifestRow.from_row(r, where=f"dataset {self.name!r}"))
                for _, r in self.ok_cases(split).iterrows()]

    def path(self, case_id: str, key: str) -> Path:
        """Absolute path of one case file (`key` is a modality, 'seg' or 'head')."""
        return self.record(case_id).path(key)

    def ok_cases(self, split: str | None = None) -> pd.DataFrame:
        m = self.manifest[self.manifest["status"] == STATUS_OK]
        if split is not None:
            m = m[m["split"] == split]
        return m.reset_index(drop=True)

    @property
    def manifest_digest(self) -> str:
        return hashlib.sha256((self.root / "manifest.parquet").read_bytes()).hexdigest()


def write_manifest(path: Path, manifest: pd.DataFrame) -> None:
    manifest = manifest.sort_values("case_id", kind="stable").reset_index(drop=True)
    with atomic_path(path, suffix=".parquet") as tmp:
        manifest.to_parquet(tmp, index=False)


def register_dataset(
    workspace: str | Path,
    name: str,
    *,
    kind: str,
    label_scheme: str,
    manifest: pd.DataFrame,
    config: dict[str, Any] | None = None,
    parents: list[dict[str, str]] | None = None,
    extra: dict[str, Any] | None = None,
) -> Dataset:
    """Write manifest.parquet then dataset.json (the latter last: its presence marks completion)."""
    if kind not in KINDS:
        raise CatalogError(f"dataset kind must be one of {KINDS}, got {kind!r}")
    scheme = load_label_scheme(label_scheme)
    if not scheme.canonical and kind != "masks":
        raise CatalogError(f"dataset {name!r}: {label_scheme!r} is not a canonical label scheme")
    root = dataset_dir(workspace, name)
    root.mkdir(parents=True, exist_ok=True)
    for col in REQUIRED_COLUMNS:
        if col not in manifest.columns:
            raise CatalogError(f"dataset {name!r}: manifest lacks required column {col!r}")
    validate_manifest_rows(manifest.to_dict("records"), where=f"dataset {name!r}")
    write_manifest(root / "manifest.parquet", manifest)
    ok = manifest[manifest["status"] == STATUS_OK]
    first = ok.iloc[0] if len(ok) else None
    info: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "label_scheme": label_scheme,
        "modalities": list(MODALITIES),
        "shape": list(first["shape"]) if first is not None and "shape" in ok else None,
        "spacing": list(first["spacing"]) if first is not None and "spacing" in ok else None,
        "n_cases": int(len(manifest)),
        "n_ok": int(len(ok)),
        "n_quarantined": int((manifest["status"] == STATUS_QUARANTINED).sum()),
        "parents": parents or [],
        "config": config or {},
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "manifest_sha256": hashlib.sha256((root / "manifest.parquet").read_bytes()).hexdigest(),
    }
    if extra:
        info.update(extra)
    DatasetInfo.from_info(info, where=f"dataset {name!r}")
    write_json_atomic(root / "dataset.json", info)
    return open_dataset(workspace, name)


def open_dataset(workspace: str | Path, name: str) -> Dataset:
    root = dataset_dir(workspace, name)
    info_path = root / "dataset.json"
    if not info_path.is_file():
        known = ", ".join(list_dataset_names(workspace)) or "none"
        raise CatalogError(
            f"no dataset {name!r} in workspace {Path(workspace)} (expected {info_path}); known datasets: {known}"
        )
    info = json.loads(info_path.read_text(encoding="utf-8"))
    manifest = pd.read_parquet(root / "manifest.parquet")
    return Dataset(root=root, info=info, manifest=manifest)


def list_dataset_names(workspace: str | Path) -> list[str]:
    d = datasets_dir(workspace)
    if not d.is_dir():
        return []
    return sorted(p.name for p in d.iterdir() if (p / "dataset.json").is_file())


def list_datasets(workspace: str | Path) -> pd.DataFrame:
    rows = []
    for name in list_dataset_names(workspace):
        info = json.loads((dataset_dir(workspace, name) / "dataset.json").read_text(encoding="utf-8"))
        rows.append({k: info.get(k) for k in ("name", "kind", "label_scheme", "n_ok", "n_quarantined", "created")})
    return pd.DataFrame(rows, columns=["name", "kind", "label_scheme", "n_ok", "n_quarantined", "created"])


def remove_stale_cases(root: Path, keep: set[str]) -> list[str]:
    """Delete case folders (and leftover temp folders) that the new manifest does not list."""
    cases = root / "cases"
    removed = []
    if cases.is_dir():
        for p in cases.iterdir():
            if p.name not in keep:
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
    return removed


def dataset_parent_entry(ds: Dataset) -> dict[str, str]:
    return {"name": ds.name, "manifest_sha256": ds.manifest_digest}
