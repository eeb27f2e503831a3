"""A whole release into a catalogued dataset: every case in parallel, a manifest, the split fixed by case id."""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from components.brats.canonicalise import CasePlan, ingest_case, quarantine_plan_row
from components.brats.common import IngestConfig, IngestError
from components.brats.discover import discover
from components.io import (
    NIFTI_RE,
    stat_fingerprint,
)
from components.progress import tqdm
from data_catalog import (
    STATUS_OK,
    assign_split,
    dataset_dir,
    load_label_scheme,
    load_layouts,
    register_dataset,
    remove_stale_cases,
)

log = logging.getLogger(__name__)


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


def candidate_schemes(layout: str, requested: str) -> list[str]:
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
    schemes = candidate_schemes(layout, cfg.label_scheme)
    allowed: set[int] = set()
    for s in schemes:
        allowed |= set(load_label_scheme(s).values)
    scheme_desc = f"scheme {'/'.join(schemes)}"
    src_scheme = load_label_scheme(schemes[0])
    label_map = None if src_scheme.canonical else src_scheme.mapping
    root = dataset_dir(workspace, name)
    cases_dir = root / "cases"
    plans = [
        CasePlan(
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
                quarantine_plan_row(
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
