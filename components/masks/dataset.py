"""The masks dataset: head labels + features of the source cases, augmented masks, checks tallied.

Layout written under ``<workspace>/datasets/<name>/`` (kind ``masks``, label scheme of the source):

- ``cases/<mask_id>/<mask_id>-seg.nii.gz`` and ``-head.nii.gz``: augmented masks only.
- ``source/<case_id>/<case_id>-seg.nii.gz`` (the source seg, hard-linked or copied) and
  ``<case_id>-head.nii.gz``: the real masks with their derived head label.
- ``source_features.parquet``: one row per source case (paths as above, split, features).
- ``manifest.parquet`` / ``dataset.json``: the catalog contract; dataset.json's ``augmentation``
  holds the acceptance summary (candidates, rejections and pass rate per reason, coverage).

Splits: every mask inherits its source case's split, and a relocation only borrows the head of a
case of the same split, so no anatomy or tumour of a test case ever reaches a train mask.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
import time
from collections import Counter, OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from components.errors import InputError
from components.io import atomic_dir, atomic_path, link_or_copy, sha256_file, write_case_volumes
from components.masks.augment import MaskCase, apply_mask_params, lr_axis_from_affine, sample_mask_params
from components.masks.checks import CHECK_REASONS, MaskReference, check_mask, mask_reference
from components.masks.config import MaskAugmentConfig
from components.masks.features import feature_columns, mask_features
from components.masks.head import derive_head_mask
from components.progress import tqdm
from components.seeds import derive_seed
from data_catalog import (
    MODALITIES,
    STATUS_OK,
    Dataset,
    dataset_dir,
    dataset_parent_entry,
    file_of,
    has_file,
    open_dataset,
    quarantine_row,
    register_dataset,
    remove_stale_cases,
)

log = logging.getLogger(__name__)

SOURCE_DIR = "source"
# A failed mask's columns after case_id, split, source_case and seed, in the order the masks manifest
# has always had them (a manifest's columns follow its first row; manifest.csv's columns are a contract).
_FAILED_COLUMNS = ("status", "seg", "head", "sha256_seg", "sha256_head", "host_case", "draws", "params", "labels",
                   "reason")
SOURCE_FEATURES = "source_features.parquet"
# Features whose spread the summary compares between real and augmented masks.
COVERAGE_FEATURES = ("volume_mm3_wt", "sphericity_wt", "centroid_x_mm_wt", "centroid_y_mm_wt", "centroid_z_mm_wt",
                     "bbox_x_mm_wt", "volume_mm3_tc", "volume_mm3_et")


@dataclass
class AugmentSummary:
    name: str
    source: str
    n_sources: int
    n_requested: int
    n_ok: int
    n_failed: int
    candidates: int
    rejections: dict[str, int]
    pass_rate: dict[str, float]
    acceptance_rate: float
    coverage: dict[str, float]
    seconds: float
    path: str
    splits: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        return (f"{self.name}: {self.n_ok}/{self.n_requested} masks from {self.n_sources} {self.source} cases, "
                f"{self.candidates} candidates, acceptance {self.acceptance_rate:.1%}, {self.seconds:.1f} s -> {self.path}")

    def report(self) -> str:
        """Multi-line text: acceptance and pass rate per check reason, coverage ratios."""
        lines = [self.line(), f"  candidates drawn: {self.candidates}, accepted: {self.n_ok} "
                              f"({self.acceptance_rate:.1%}), requests with no plausible draw: {self.n_failed}"]
        for r in CHECK_REASONS:
            lines.append(f"  {r:<20} rejected {self.rejections.get(r, 0):>4}  pass rate {self.pass_rate.get(r, 1.0):.1%}")
        if self.coverage:
            lines.append("  coverage (augmented range / real range): "
                         + ", ".join(f"{k} {v:.2f}" for k, v in self.coverage.items()))
        return "\n".join(lines)


def mask_seed(seed: int, case_id: str, k: int) -> int:
    """Seed of the k-th mask of a case: independent of case order and of other cases."""
    key = int(hashlib.sha256(case_id.encode()).hexdigest()[:8], 16)
    return derive_seed(seed, key, k)  # the case id enters as its sha256 prefix, not as derive_seed's CRC-32


def mask_id(case_id: str, k: int) -> str:
    return f"{case_id}-aug{k:03d}"


def _load(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), img.affine.copy(), tuple(float(z) for z in img.header.get_zooms()[:3])


def _write_case(folder: Path, cid: str, arrays: dict[str, np.ndarray], affine: np.ndarray,
                links: dict[str, Path] | None = None) -> dict[str, str]:
    """Write ``<cid>-<key>.nii.gz`` files into ``folder/<cid>`` atomically (temp folder + rename)."""
    with atomic_dir(folder / cid) as tmp:
        out = write_case_volumes(tmp, cid, {k: (a, np.uint8) for k, a in arrays.items()}, affine)
        for key, src in (links or {}).items():
            f = tmp / f"{cid}-{key}.nii.gz"
            link_or_copy(src, f)
            out[key] = f.name
            out[f"sha256_{key}"] = sha256_file(f)
    return out


class _CaseStore:
    """Source masks (seg + head) by case id, loaded from ``source/`` on demand, LRU-bounded."""

    def __init__(self, root: Path, rows: pd.DataFrame, size: int):
        self.root = root
        self.rows = rows.set_index("case_id")
        self.size = size
        self._cache: OrderedDict[str, MaskCase] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, cid: str) -> MaskCase:
        with self._lock:
            if cid in self._cache:
                self._cache.move_to_end(cid)
                return self._cache[cid]
        r = self.rows.loc[cid]
        seg, affine, spacing = _load(self.root / r["seg"])
        head = _load(self.root / r["head"])[0].astype(bool)
        case = MaskCase(cid, str(r["split"]), seg.astype(np.uint8), head, spacing, lr_axis_from_affine(affine))
        with self._lock:
            self._cache[cid] = case
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
        return case

    def affine(self, cid: str) -> np.ndarray:
        return nib.load(str(self.root / self.rows.loc[cid, "seg"])).affine


def _source_case(src: Dataset, row: pd.Series, root: Path, regions: dict, config: MaskAugmentConfig) -> dict[str, Any]:
    """Derive and write the head of one source case next to (a link of) its seg; return its features row."""
    cid = row["case_id"]
    seg_path = src.path(cid, "seg")
    seg, affine, spacing = _load(seg_path)
    seg = np.asarray(seg)
    if seg.ndim != 3 or np.any(seg < 0) or seg.max() > 127:
        raise ValueError(f"source {src.name}, case {cid}: {seg_path} should be a 3-D label map with values 0-127, "
                         f"found shape {seg.shape} and values {np.unique(seg)[:8]}")
    seg = seg.astype(np.uint8)
    head_rel = file_of(row, "head")
    if head_rel is not None:
        head = _load(src.root / head_rel)[0].astype(bool) | (seg > 0)
    else:
        mods = [m for m in MODALITIES if has_file(row, m)]
        if not mods:
            raise ValueError(f"source {src.name}, case {cid}: no modality image and no head file to derive the head "
                             f"label from; expected columns {list(MODALITIES)} or 'head' in its manifest")
        images = np.stack([np.asarray(_load(src.path(cid, m))[0], dtype=np.float32) for m in mods])
        head = derive_head_mask(images, seg, spacing=spacing, closing_mm=config.closing_mm)
    written = _write_case(root / SOURCE_DIR, cid, {"head": head.astype(np.uint8)}, affine, links={"seg": seg_path})
    out = {
        "case_id": cid, "split": str(row["split"]),
        "seg": f"{SOURCE_DIR}/{cid}/{written['seg']}", "head": f"{SOURCE_DIR}/{cid}/{written['head']}",
        "sha256_seg": written["sha256_seg"], "sha256_head": written["sha256_head"],
        "shape": [int(s) for s in seg.shape], "spacing": [float(s) for s in spacing],
        "labels": [int(v) for v in np.unique(seg)], "head_volume_mm3": float(head.sum()) * float(np.prod(spacing)),
    }
    out.update(mask_features(seg, regions, spacing))
    return out


@dataclass
class _Tally:
    candidates: int = 0
    rejections: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, reasons: list[str]) -> None:
        with self.lock:
            self.candidates += 1
            self.rejections.update(reasons)


def _augment_case(
    cid: str, store: _CaseStore, hosts: list[str], root: Path, regions: dict, config: MaskAugmentConfig, tally: _Tally,
    bar: Any,
) -> list[dict[str, Any]]:
    case = store(cid)
    affine = store.affine(cid)
    refs: dict[str, MaskReference] = {}
    rows = []
    for k in range(config.per_case):
        mid = mask_id(cid, k)
        seed = mask_seed(config.seed, cid, k)
        rng = np.random.default_rng(seed)
        local: Counter = Counter()
        row: dict[str, Any] = {"case_id": mid, "split": case.split, "source_case": cid, "seed": seed}
        for draw in range(config.max_draws):
            params = sample_mask_params(rng, case, config, hosts, store).model_copy(update={"draw": draw})
            host = params.host_case
            host_head = store(host).head if host != cid else None
            seg, head = apply_mask_params(case.seg, case.head, params, host_head)
            if host not in refs:
                refs[host] = mask_reference(case.seg, store(host).head if host_head is not None else case.head,
                                            regions, case.spacing, config.checks)
            reasons = check_mask(seg, head, refs[host], config.checks)
            tally.add(reasons)
            if reasons:
                local.update(reasons)
                continue
            written = _write_case(root / "cases", mid, {"seg": seg, "head": head.astype(np.uint8)}, affine)
            row.update(
                status=STATUS_OK, reason="", seg=f"cases/{mid}/{written['seg']}", head=f"cases/{mid}/{written['head']}",
                sha256_seg=written["sha256_seg"], sha256_head=written["sha256_head"], host_case=host, draws=draw + 1,
                params=params.to_json(), labels=[int(v) for v in np.flatnonzero(np.bincount(seg.ravel()))],
            )
            row.update(mask_features(seg, regions, case.spacing))
            break
        else:
            counts = ", ".join(f"{r} {n}" for r, n in local.most_common())
            failed = quarantine_row(
                mid, f"mask {k} of source case {cid}: none of {config.max_draws} candidate draws passed the "
                     f"plausibility checks (rejections: {counts}); raise --max-draws or widen the check bounds",
                case.split, file_keys=("seg", "head"), host_case="", draws=config.max_draws, params="", labels=[])
            row.update((c, failed[c]) for c in _FAILED_COLUMNS)
        row.update(shape=[int(s) for s in case.seg.shape], spacing=[float(s) for s in case.spacing])
        rows.append(row)
        bar.update(1)
    return rows


def coverage(real: pd.DataFrame, aug: pd.DataFrame, features: tuple[str, ...] = COVERAGE_FEATURES) -> dict[str, float]:
    """Range of each feature over augmented masks divided by its range over the real masks."""
    out = {}
    for f in features:
        if f in real and f in aug:
            r, a = real[f].dropna(), aug[f].dropna()
            span = float(r.max() - r.min()) if len(r) else 0.0
            if len(a) and span > 0:
                out[f] = float(a.max() - a.min()) / span
    return out


def augment_masks(
    workspace: str | Path, source: str, name: str, config: MaskAugmentConfig | None = None, progress: bool | None = None,
) -> AugmentSummary:
    """Write the masks dataset ``name`` from the segs of dataset ``source`` (see the module docstring).

    progress: None shows a bar only on a terminal (tqdm's auto mode).
    """
    cfg = config or MaskAugmentConfig()
    t0 = time.perf_counter()
    if name == source:
        raise InputError(f"the masks dataset needs its own name; --name {name!r} is the source dataset")
    src = open_dataset(workspace, source)
    scheme = src.label_scheme
    regions = {k: tuple(v) for k, v in scheme.regions.items()}
    ok = src.ok_cases()
    has_seg = pd.Series([has_file(r, "seg") for r in ok.to_dict("records")], index=ok.index, dtype=bool)
    rows = ok[has_seg & ok["split"].isin(cfg.splits)].reset_index(drop=True)
    if rows.empty:
        raise InputError(f"dataset {source!r} has no ok case with a seg in splits {list(cfg.splits)}; "
                         "masks are augmented from segmentations (ingest a release with labels, or make a phantom)")
    root = dataset_dir(workspace, name)
    root.mkdir(parents=True, exist_ok=True)
    disable = (not progress) if progress is not None else None
    with ThreadPoolExecutor(max_workers=cfg.workers) as pool:
        src_rows = list(tqdm(pool.map(lambda r: _source_case(src, r[1], root, regions, cfg), rows.iterrows()),
                             total=len(rows), desc=f"heads {source}", unit="case", disable=disable))
    src_df = pd.DataFrame(src_rows)
    _remove_stale(root / SOURCE_DIR, set(src_df["case_id"]))
    with atomic_path(root / SOURCE_FEATURES, suffix=".parquet") as tmp:
        src_df.to_parquet(tmp, index=False)

    store = _CaseStore(root, src_df, cfg.host_cache)
    grid = {r["case_id"]: (tuple(r["shape"]), tuple(r["spacing"])) for r in src_rows}
    hosts = {
        cid: [h for h in src_df["case_id"] if h != cid and grid[h] == grid[cid]
              and src_df.loc[src_df["case_id"] == h, "split"].iloc[0] == split]
        for cid, split in zip(src_df["case_id"], src_df["split"], strict=True)
    }
    tally = _Tally()
    n_req = len(src_df) * cfg.per_case
    with tqdm(total=n_req, desc=f"masks {name}", unit="mask", disable=disable) as bar, \
            ThreadPoolExecutor(max_workers=cfg.workers) as pool:
        parts = list(pool.map(lambda cid: _augment_case(cid, store, hosts[cid], root, regions, cfg, tally, bar),
                              src_df["case_id"]))
    manifest = pd.DataFrame([r for part in parts for r in part])
    manifest["seed"] = manifest["seed"].astype("int64")
    for col in feature_columns(list(regions)):
        if col not in manifest:
            manifest[col] = np.nan
    remove_stale_cases(root, set(manifest.loc[manifest["status"] == STATUS_OK, "case_id"]))
    n_ok = int((manifest["status"] == STATUS_OK).sum())
    cand = max(tally.candidates, 1)
    aug_ok = manifest[manifest["status"] == STATUS_OK]
    summary = AugmentSummary(
        name=name, source=source, n_sources=len(src_df), n_requested=n_req, n_ok=n_ok, n_failed=n_req - n_ok,
        candidates=tally.candidates, rejections={r: int(tally.rejections.get(r, 0)) for r in CHECK_REASONS},
        pass_rate={r: 1.0 - tally.rejections.get(r, 0) / cand for r in CHECK_REASONS},
        acceptance_rate=n_ok / cand, coverage=coverage(src_df, aug_ok), seconds=0.0, path=str(root),
        splits={str(k): int(v) for k, v in aug_ok["split"].value_counts().items()},
    )
    summary.seconds = time.perf_counter() - t0
    register_dataset(
        workspace, name, kind="masks", label_scheme=src.info["label_scheme"], manifest=manifest,
        config=cfg.model_dump(mode="json"), parents=[dataset_parent_entry(src)],
        extra={
            "modalities": [], "source": source, "augmentation": asdict(summary),
            "source_features": SOURCE_FEATURES,
            "feature_naming": "<feature>_<region lower case>; see components/masks/features.py",
            "check_reasons": list(CHECK_REASONS),
        },
    )
    log.info(summary.line())
    return summary


def _remove_stale(folder: Path, keep: set[str]) -> None:
    if folder.is_dir():
        for p in folder.iterdir():
            if p.name not in keep:
                shutil.rmtree(p, ignore_errors=True)
