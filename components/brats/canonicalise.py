"""One case into the canonical form: remapped labels, MSD's 4-D split, bytes linked or copied, or quarantined."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.brats.common import FILE_KEYS, CaseProblem, CaseSource
from components.brats.validate import (
    LoadedFile,
    check_3d,
    check_labels,
    check_same_grid,
    load_file,
    orientation,
    voxel_spacing,
)
from components.io import (
    atomic_dir,
    link_or_copy,
    save_like,
    sha256_bytes,
    sha256_file,
)
from data_catalog import (
    MODALITIES,
    STATUS_OK,
    load_layouts,
    quarantine_row,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- one case
@dataclass(frozen=True)
class CasePlan:
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


def _write_case(plan: CasePlan, tmp: Path) -> dict[str, Any]:
    """Validate one case and write its canonical files into ``tmp``; return its manifest row."""
    cs = plan.source
    cid = cs.case_id
    row: dict[str, Any] = {}
    loaded: dict[str, LoadedFile] = {}
    if cs.layout == "msd_task01":
        if cs.msd_image is None:
            raise CaseProblem(f"case {cid}: no image file")
        ld = load_file(cid, "image", cs.msd_image)
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
            loaded["seg"] = load_file(cid, "seg", cs.msd_label)
            check_3d(cid, "seg", loaded["seg"])
            check_same_grid(cid, "image", ref, "seg", loaded["seg"])
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
                loaded[key] = load_file(cid, key, cs.files[key][0])
                check_3d(cid, key, loaded[key])
        ref = loaded["t1n"]
        for key in FILE_KEYS[1:]:
            if key in loaded:
                check_same_grid(cid, "t1n", ref, key, loaded[key])
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
        present = check_labels(cid, seg_ld, set(plan.allowed_labels), plan.scheme_desc)
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
        spacing=voxel_spacing(ref_img),
        orientation=orientation(ref_img),
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


def quarantine_plan_row(plan: CasePlan, reason: str) -> dict[str, Any]:
    return quarantine_case(plan.source, reason, plan.split, fingerprint=plan.fingerprint)


def ingest_case(plan: CasePlan) -> tuple[dict[str, Any], bool]:
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
                raise _Quarantined(quarantine_plan_row(plan, str(err))) from err
            except Exception as err:  # never let one case stop the dataset
                log.exception("case %s failed unexpectedly", cid)
                raise _Quarantined(quarantine_plan_row(plan, f"case {cid}: unexpected error {type(err).__name__}: {err}")) from err
            (tmp / "row.json").write_text(json.dumps(row, indent=1), encoding="utf-8")
    except _Quarantined as q:
        return q.row, False
    return row, False


class _Quarantined(Exception):
    """Carries a quarantine row out of the case's temp folder, which is then discarded."""

    def __init__(self, row: dict[str, Any]):
        super().__init__(row.get("reason", ""))
        self.row = row
