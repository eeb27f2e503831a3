"""BraTS release layouts: discovery, per-case validation and canonicalisation.

Canonical form (docs/design.md §2-3): ``cases/<case_id>/<case_id>-{t1n,t1c,t2w,t2f,seg}.nii.gz`` in the
``brats2023`` or ``brats2024_post`` label scheme, every file with its source affine and spacing.
Bytes are linked or copied when nothing needs converting; only label remapping (BraTS 2021 ET 4->3,
MSD) and the split of MSD's 4-D images re-encode data.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from pydantic import Field, ValidationInfo, field_validator

from components.config_base import FrozenModel
from components.errors import GliosynthError
from components.io import (
    NIFTI_RE,
    atomic_dir,
    link_or_copy,
    nifti_claimed_and_held_bytes,
    nifti_from_bytes,
    save_like,
    sha256_bytes,
    sha256_file,
    stat_fingerprint,
)
from components.progress import tqdm
from data_catalog import (
    MODALITIES,
    STATUS_OK,
    assign_split,
    dataset_dir,
    label_scheme_names,
    load_label_scheme,
    load_layouts,
    quarantine_row,
    register_dataset,
    remove_stale_cases,
)

log = logging.getLogger(__name__)

AFFINE_TOL_MM = 1e-3
FILE_KEYS = (*MODALITIES, "seg")


class IngestError(GliosynthError, RuntimeError):
    """The source as a whole cannot be ingested (nothing recognisable, mixed layouts, ...)."""


class CaseProblem(Exception):
    """One case is invalid; the message is the manifest's one-sentence reason."""


class IngestConfig(FrozenModel):
    """Settings of one ingestion run (saved in dataset.json)."""

    label_scheme: str = Field("auto", description="source label scheme: auto, brats2021, brats2023, brats2024_post, msd")
    layout: str = Field("auto", description="release layout: auto, brats2021, brats2023, msd_task01")
    test_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="fraction of cases hashed into the test split")
    split_salt: str = "gliosynth"
    workers: int = Field(2, ge=1)

    @field_validator("label_scheme", "layout")
    @classmethod
    def _known(cls, v: str, info: ValidationInfo) -> str:
        # the registries are YAML data (data_catalog/), so the allowed values are read, not listed
        known = ["auto", *(label_scheme_names() if info.field_name == "label_scheme" else load_layouts())]
        if v not in known:
            raise ValueError(f"unknown {info.field_name.replace('_', ' ')} {v!r}: expected one of {known}")
        return v


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


# --------------------------------------------------------------------------- discovery
def _visible(name: str) -> bool:
    # macOS archives carry "._X.nii.gz" resource forks next to the real files (MSD Task01 does).
    return not name.startswith(".")


def discover(source: str | os.PathLike, layout: str = "auto") -> tuple[str, list[CaseSource]]:
    """Find every case under ``source`` (searched recursively) and the layout they follow."""
    source = Path(source)
    if not source.exists():
        raise IngestError(f"source {source} does not exist")
    layouts = load_layouts()
    if layout != "auto" and layout not in layouts:
        raise IngestError(f"unknown layout {layout!r}; known: auto, {', '.join(layouts)}")
    folder_layouts = {k: v for k, v in layouts.items() if v["kind"] == "case_folders"}
    patterns = {k: re.compile(v["pattern"]) for k, v in folder_layouts.items()}
    found: dict[str, list[CaseSource]] = {k: [] for k in layouts}
    msd_cfg = layouts["msd_task01"]
    msd_dirs = set(msd_cfg["image_dirs"]) | {msd_cfg["label_dir"]}

    for dirpath, dirnames, filenames in os.walk(source, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if _visible(d))
        here = Path(dirpath)
        names = sorted(n for n in filenames if _visible(n) and NIFTI_RE.search(n))
        if here.name in msd_dirs:
            if here.name in msd_cfg["image_dirs"]:
                label_dir = here.parent / msd_cfg["label_dir"]
                for n in names:
                    lab = label_dir / n
                    found["msd_task01"].append(
                        CaseSource(
                            case_id=NIFTI_RE.sub("", n), layout="msd_task01", folder=here,
                            msd_image=here / n, msd_label=lab if lab.is_file() else None,
                        )
                    )
            continue
        if not names:
            continue
        per_layout: dict[str, dict[str, list[Path]]] = {}
        for n in names:
            for lname, pat in patterns.items():
                m = pat.match(n)
                if m:
                    key = folder_layouts[lname]["keys"][m.group("key")]
                    per_layout.setdefault(lname, {}).setdefault(key, []).append(here / n)
        # A folder belongs to the layout whose modality names it uses (seg alone says nothing).
        scored = {k: sum(1 for key in v if key != "seg") for k, v in per_layout.items()}
        scored = {k: s for k, s in scored.items() if s > 0}
        if not scored:
            if any("seg" in v for v in per_layout.values()):
                lname = next(iter(per_layout))
                found[lname].append(CaseSource(here.name, lname, here, per_layout[lname]))
            continue
        lname = max(scored, key=lambda k: (scored[k], k))
        found[lname].append(CaseSource(here.name, lname, here, per_layout[lname]))

    if layout != "auto":
        cases = found[layout]
        others = {k: len(v) for k, v in found.items() if k != layout and v}
        if others:
            log.warning("ignoring cases in other layouts than %s: %s", layout, others)
        if not cases:
            raise IngestError(f"no case in layout {layout!r} under {source}")
        return layout, cases
    present = {k: len(v) for k, v in found.items() if v}
    if not present:
        raise IngestError(
            f"no recognisable BraTS or MSD case under {source}: expected case folders such as "
            "BraTS-GLI-00000-000/BraTS-GLI-00000-000-t1n.nii.gz (2023+), "
            "BraTS2021_00000/BraTS2021_00000_t1.nii.gz (2021) or imagesTr/BRATS_001.nii.gz (MSD Task01)"
        )
    if len(present) > 1:
        raise IngestError(
            f"{source} mixes release layouts {present}; ingest them separately or pick one with --layout"
        )
    lname = next(iter(present))
    return lname, sorted(found[lname], key=lambda c: (c.case_id, str(c.folder)))


# --------------------------------------------------------------------------- validation
@dataclass
class _Loaded:
    path: Path
    data: bytes
    img: nib.Nifti1Image
    array: np.ndarray


def _check_header_size(case_id: str, key: str, path: Path) -> None:
    """Refuse a file whose header claims more data than the file holds, before reading the data."""
    try:
        claimed, held, what = nifti_claimed_and_held_bytes(path)
    except Exception:  # an unreadable header is reported by the full read below, with its reason
        return
    if claimed > held:
        raise CaseProblem(
            f"case {case_id}: file {path.name} ({key}) is unreadable or truncated: its header claims {what} "
            f"({claimed / 2**20:,.1f} MiB), expected a file that holds that much data, found {held / 2**20:,.1f} MiB")


def _load(case_id: str, key: str, path: Path) -> _Loaded:
    _check_header_size(case_id, key, path)
    try:
        data = path.read_bytes()
        img = nifti_from_bytes(data, path.name)
        arr = np.asanyarray(img.dataobj)
    except Exception as err:  # nibabel/gzip raise many types for broken files
        raise CaseProblem(
            f"case {case_id}: file {path.name} ({key}) is unreadable or truncated: expected a complete NIfTI, "
            f"found {type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no detail'}"
        ) from err
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        n_bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        raise CaseProblem(
            f"case {case_id}: file {path.name} ({key}) holds non-finite values: expected finite intensities, "
            f"found {n_bad} NaN/inf voxels"
        )
    return _Loaded(path, data, img, arr)


def _check_3d(case_id: str, key: str, ld: _Loaded) -> None:
    if ld.array.ndim != 3:
        raise CaseProblem(
            f"case {case_id}: file {ld.path.name} ({key}) is not 3-D: expected shape (X, Y, Z), "
            f"found {ld.array.ndim}-D shape {tuple(ld.array.shape)}"
        )


def _check_same_grid(case_id: str, ref_key: str, ref: _Loaded, key: str, other: _Loaded) -> None:
    if tuple(other.array.shape[:3]) != tuple(ref.array.shape[:3]):
        raise CaseProblem(
            f"case {case_id}: file {other.path.name} ({key}) has shape {tuple(other.array.shape[:3])}, "
            f"expected {tuple(ref.array.shape[:3])} as in {ref.path.name} ({ref_key})"
        )
    diff = float(np.max(np.abs(other.img.affine - ref.img.affine)))
    if diff > AFFINE_TOL_MM:
        raise CaseProblem(
            f"case {case_id}: file {other.path.name} ({key}) has an affine that differs from {ref.path.name} "
            f"({ref_key}) by up to {diff:.4g} mm: expected identical voxel-to-world mappings, "
            f"found spacing {_spacing(other.img)} vs {_spacing(ref.img)}"
        )


def _check_labels(case_id: str, ld: _Loaded, allowed: set[int], scheme_desc: str) -> np.ndarray:
    seg = ld.array
    if not np.issubdtype(seg.dtype, np.integer):
        rounded = np.rint(seg)
        if not np.array_equal(rounded, seg):
            raise CaseProblem(
                f"case {case_id}: file {ld.path.name} (seg) holds non-integer values: expected integer labels, "
                f"found e.g. {float(seg[rounded != seg].flat[0])}"
            )
        seg = rounded
    present = np.unique(seg).astype(np.int64)
    bad = sorted(set(present.tolist()) - allowed)
    if bad:
        raise CaseProblem(
            f"case {case_id}: file {ld.path.name} (seg) holds labels outside {scheme_desc}: expected a subset of "
            f"{sorted(allowed)}, found {present.tolist()}"
        )
    return present


def _spacing(img: nib.Nifti1Image) -> list[float]:
    return [round(float(z), 6) for z in img.header.get_zooms()[:3]]


def _orientation(img: nib.Nifti1Image) -> str:
    return "".join(nib.aff2axcodes(img.affine))


# --------------------------------------------------------------------------- one case
@dataclass(frozen=True)
class _CasePlan:
    """Everything a worker needs for one case (plain data: safe to hand to a thread)."""

    source: CaseSource
    cases_dir: Path
    allowed_labels: frozenset[int]
    scheme_desc: str
    label_map: dict[int, int] | None  # None: identity (bytes copied)
    split: str
    fingerprint: str


def _out_rel(case_id: str, key: str) -> str:
    return f"cases/{case_id}/{case_id}-{key}.nii.gz"


def _is_gzip(data: bytes) -> bool:
    return data[:2] == b"\x1f\x8b"


def _remap(seg: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    lut = np.zeros(max(mapping) + 1, dtype=np.uint8)
    for src, dst in mapping.items():
        lut[src] = dst
    return lut[np.rint(seg).astype(np.int64)]


def _write_case(plan: _CasePlan, tmp: Path) -> dict[str, Any]:
    """Validate one case and write its canonical files into ``tmp``; return its manifest row."""
    cs = plan.source
    cid = cs.case_id
    row: dict[str, Any] = {}
    loaded: dict[str, _Loaded] = {}
    if cs.layout == "msd_task01":
        if cs.msd_image is None:
            raise CaseProblem(f"case {cid}: no image file")
        ld = _load(cid, "image", cs.msd_image)
        channels = load_layouts()["msd_task01"]["channels"]
        if ld.array.ndim != 4 or ld.array.shape[3] != len(channels):
            raise CaseProblem(
                f"case {cid}: file {cs.msd_image.name} (image) is not a 4-channel 4-D volume: expected shape "
                f"(X, Y, Z, {len(channels)}) with channels {channels}, found shape {tuple(ld.array.shape)}"
            )
        for c, key in enumerate(channels):
            save_like(tmp / f"{cid}-{key}.nii.gz", np.ascontiguousarray(ld.array[..., c]), ld.img)
        ref = ld
        if cs.msd_label is not None:
            loaded["seg"] = _load(cid, "seg", cs.msd_label)
            _check_3d(cid, "seg", loaded["seg"])
            _check_same_grid(cid, "image", ref, "seg", loaded["seg"])
        ref_img = ref.img
    else:
        missing = [k for k in MODALITIES if not cs.files.get(k)]
        if missing:
            found = sorted(p.name for p in cs.all_files()) or ["no NIfTI file"]
            raise CaseProblem(
                f"case {cid}: modality file(s) {', '.join(missing)} missing in {cs.folder}: expected all of "
                f"{', '.join(MODALITIES)}, found {', '.join(found)}"
            )
        dup = {k: [p.name for p in v] for k, v in cs.files.items() if len(v) > 1}
        if dup:
            raise CaseProblem(f"case {cid}: more than one file for {dup}: expected exactly one file per modality")
        for key in FILE_KEYS:
            if cs.files.get(key):
                loaded[key] = _load(cid, key, cs.files[key][0])
                _check_3d(cid, key, loaded[key])
        ref = loaded["t1n"]
        for key in FILE_KEYS[1:]:
            if key in loaded:
                _check_same_grid(cid, "t1n", ref, key, loaded[key])
        for key in MODALITIES:
            dest = tmp / f"{cid}-{key}.nii.gz"
            if _is_gzip(loaded[key].data):
                link_or_copy(loaded[key].path, dest)
            else:
                save_like(dest, loaded[key].array, loaded[key].img)
        ref_img = ref.img

    has_seg = "seg" in loaded
    labels: list[int] = []
    source_labels: list[int] = []
    if has_seg:
        seg_ld = loaded["seg"]
        present = _check_labels(cid, seg_ld, set(plan.allowed_labels), plan.scheme_desc)
        source_labels = present.tolist()
        dest = tmp / f"{cid}-seg.nii.gz"
        if plan.label_map is None:
            labels = source_labels
            if _is_gzip(seg_ld.data):
                link_or_copy(seg_ld.path, dest)
            else:
                save_like(dest, np.rint(seg_ld.array), seg_ld.img, dtype=np.uint8)
        else:
            mapped = _remap(seg_ld.array, plan.label_map)
            labels = sorted({plan.label_map[v] for v in source_labels})
            save_like(dest, mapped, seg_ld.img, dtype=np.uint8)

    for key in FILE_KEYS:
        f = tmp / f"{cid}-{key}.nii.gz"
        if f.exists():
            row[key] = _out_rel(cid, key)
            # Linked files keep the source digest; re-encoded ones are hashed as written.
            src = loaded.get(key)
            same = src is not None and _is_gzip(src.data) and (key != "seg" or plan.label_map is None)
            row[f"sha256_{key}"] = sha256_bytes(src.data) if same else sha256_file(f)
        else:
            row[key] = ""
            row[f"sha256_{key}"] = ""
    row.update(
        case_id=cid,
        status=STATUS_OK,
        reason="",
        split=plan.split,
        has_seg=has_seg,
        shape=[int(s) for s in ref_img.shape[:3]],
        spacing=_spacing(ref_img),
        orientation=_orientation(ref_img),
        labels=[int(v) for v in labels],
        source_labels=[int(v) for v in source_labels],
        source_path=str(cs.folder if cs.msd_image is None else cs.msd_image),
        fingerprint=plan.fingerprint,
    )
    return row


def quarantine_case(cs: CaseSource, reason: str, split: str, **fields: Any) -> dict[str, Any]:
    """The manifest row of a source case that is not ingested (``fields``: more columns, last)."""
    return quarantine_row(
        cs.case_id, reason, split, file_keys=FILE_KEYS, has_seg=False, shape=None, spacing=None, orientation="",
        labels=[], source_labels=[], source_path=str(cs.folder if cs.msd_image is None else cs.msd_image), **fields,
    )


def _quarantine_row(plan: _CasePlan, reason: str) -> dict[str, Any]:
    return quarantine_case(plan.source, reason, plan.split, fingerprint=plan.fingerprint)


def ingest_case(plan: _CasePlan) -> tuple[dict[str, Any], bool]:
    """Ingest one case atomically. Returns (manifest row, reused-from-previous-run)."""
    cid = plan.source.case_id
    final = plan.cases_dir / cid
    row_file = final / "row.json"
    if row_file.is_file():
        try:
            prev = json.loads(row_file.read_text(encoding="utf-8"))
            if prev.get("fingerprint") == plan.fingerprint and prev.get("split") == plan.split:
                return prev, True
        except (OSError, ValueError):
            pass
    # Only the case's own reading and validation quarantine it; a failure to write the workspace
    # (full disk, permissions) propagates, so the task's I/O retry sees it and nothing is cached.
    try:
        with atomic_dir(final) as tmp:
            try:
                row = _write_case(plan, tmp)
            except CaseProblem as err:
                raise _Quarantined(_quarantine_row(plan, str(err))) from err
            except Exception as err:  # never let one case stop the dataset
                log.exception("case %s failed unexpectedly", cid)
                raise _Quarantined(_quarantine_row(plan, f"case {cid}: unexpected error {type(err).__name__}: {err}")) from err
            (tmp / "row.json").write_text(json.dumps(row, indent=1), encoding="utf-8")
    except _Quarantined as q:
        return q.row, False
    return row, False


class _Quarantined(Exception):
    """Carries a quarantine row out of the case's temp folder, which is then discarded."""

    def __init__(self, row: dict[str, Any]):
        super().__init__(row.get("reason", ""))
        self.row = row


# --------------------------------------------------------------------------- whole dataset
@dataclass
class IngestSummary:
    name: str
    layout: str
    source_label_scheme: str
    label_scheme: str
    n_ok: int
    n_quarantined: int
    n_without_seg: int
    n_reused: int
    seconds: float
    quarantined: dict[str, str]

    def line(self) -> str:
        return (
            f"{self.name}: {self.n_ok} ok, {self.n_quarantined} quarantined "
            f"({self.n_without_seg} without seg, {self.n_reused} unchanged) "
            f"[{self.layout}, {self.source_label_scheme} -> {self.label_scheme}] in {self.seconds:.1f} s"
        )


def _candidate_schemes(layout: str, requested: str) -> list[str]:
    allowed = load_layouts()[layout]["label_schemes"]
    if requested == "auto":
        return list(allowed)
    if requested not in allowed:
        raise IngestError(
            f"label scheme {requested!r} does not fit layout {layout!r}; this layout uses {', '.join(allowed)}"
        )
    return [requested]


def source_fingerprint(source: str | os.PathLike) -> str:
    """Stat digest of every NIfTI under ``source``: the cache key of an ingestion."""
    source = Path(source)
    files = [
        Path(d) / n
        for d, _, ns in os.walk(source, followlinks=True)
        for n in ns
        if NIFTI_RE.search(n)
    ]
    return stat_fingerprint(files, root=source)


def _parent_of_source(source: Path) -> dict[str, Any] | None:
    """If SOURCE is (inside) a catalogued dataset, return its dataset.json (provenance)."""
    for p in (source, *source.parents):
        f = p / "dataset.json"
        if f.is_file():
            try:
                return json.loads(f.read_text(encoding="utf-8"))
            except ValueError:
                return None
    return None


def ingest(
    source: str | os.PathLike,
    workspace: str | os.PathLike,
    name: str,
    config: IngestConfig | None = None,
    progress: bool | None = None,
) -> IngestSummary:
    """Ingest a BraTS/MSD release tree into the canonical dataset ``name``."""
    cfg = config or IngestConfig()
    t0 = time.perf_counter()
    source = Path(source).resolve()
    layout, cases = discover(source, cfg.layout)
    schemes = _candidate_schemes(layout, cfg.label_scheme)
    allowed: set[int] = set()
    for s in schemes:
        allowed |= set(load_label_scheme(s).values)
    scheme_desc = f"scheme {'/'.join(schemes)}"
    src_scheme = load_label_scheme(schemes[0])
    label_map = None if src_scheme.canonical else src_scheme.mapping
    root = dataset_dir(workspace, name)
    cases_dir = root / "cases"
    plans = [
        _CasePlan(
            source=cs,
            cases_dir=cases_dir,
            allowed_labels=frozenset(allowed),
            scheme_desc=scheme_desc,
            label_map=label_map,
            split=assign_split(cs.case_id, cfg.test_fraction, cfg.split_salt),
            fingerprint=stat_fingerprint(cs.all_files()) + f":{sorted((label_map or {}).items())}",
        )
        for cs in cases
    ]
    seen: dict[str, Path] = {}
    unique_plans = []
    dup_rows = []
    for p in plans:
        if p.source.case_id in seen:
            dup_rows.append(
                _quarantine_row(
                    p,
                    f"case {p.source.case_id}: folder {p.source.folder} repeats a case id already found at "
                    f"{seen[p.source.case_id]}: expected unique case ids, kept the first",
                )
            )
            continue
        seen[p.source.case_id] = p.source.folder
        unique_plans.append(p)

    rows: list[dict[str, Any]] = []
    reused = 0
    with ThreadPoolExecutor(max_workers=cfg.workers) as pool:
        for row, was_reused in tqdm(
            pool.map(ingest_case, unique_plans), total=len(unique_plans), desc=f"ingest {name}",
            unit="case", disable=(not progress) if progress is not None else None,
        ):
            rows.append(row)
            reused += was_reused
    rows.extend(dup_rows)
    manifest = pd.DataFrame(rows)
    manifest = manifest.drop(columns=["fingerprint"])
    manifest["source_case"] = ""
    manifest["seed"] = pd.array([pd.NA] * len(manifest), dtype="Int64")
    manifest["params"] = ""

    ok = manifest["status"] == STATUS_OK
    if len(schemes) == 1:
        final_scheme = schemes[0] if src_scheme.canonical else src_scheme.to_canonical
    else:
        # brats2023 layout with `auto`: label 4 (RC) only exists in the post-treatment scheme.
        has_rc = manifest.loc[ok, "labels"].map(lambda v: 4 in list(v)).any()
        final_scheme = "brats2024_post" if has_rc else "brats2023"
        log.info("auto label scheme for %s: %s", name, final_scheme)
    if not ok.any():
        raise IngestError(
            f"no valid case in {source}: all {len(manifest)} found cases were quarantined; first reason: "
            f"{manifest['reason'].iloc[0] if len(manifest) else 'none'}"
        )
    remove_stale_cases(root, set(manifest.loc[ok, "case_id"]))
    parent = _parent_of_source(source)
    kind = "phantom" if parent and parent.get("kind") == "phantom" else "real"
    register_dataset(
        workspace, name, kind=kind, label_scheme=final_scheme, manifest=manifest,
        config=cfg.model_dump(),
        parents=[{"name": parent["name"], "manifest_sha256": parent.get("manifest_sha256", "")}] if parent else [],
        extra={
            "source": str(source),
            "source_layout": layout,
            "source_label_scheme": schemes[0] if len(schemes) == 1 else final_scheme,
            "label_mapping": {str(k): v for k, v in (label_map or {}).items()},
            "test_fraction": cfg.test_fraction,
            "split_salt": cfg.split_salt,
        },
    )
    q = manifest[~ok]
    summary = IngestSummary(
        name=name, layout=layout,
        source_label_scheme=schemes[0] if len(schemes) == 1 else final_scheme,
        label_scheme=final_scheme, n_ok=int(ok.sum()), n_quarantined=int((~ok).sum()),
        n_without_seg=int((ok & ~manifest["has_seg"].astype(bool)).sum()), n_reused=reused,
        seconds=time.perf_counter() - t0, quarantined=dict(zip(q["case_id"], q["reason"], strict=True)),
    )
    for cid, reason in summary.quarantined.items():
        log.warning("quarantined %s: %s", cid, reason)
    return summary

