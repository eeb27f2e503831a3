"""Bring your own synthetic set: ingest cases made by another tool as a catalogued ``synthetic`` dataset.

The cases are found and validated exactly as a real release is (:mod:`components.brats`: four
modalities + seg on one grid, labels in the scheme, readable files whose headers do not lie). Two
things only the user can say are asked for and checked against the real dataset:

* **links** (a CSV): which real case each synthetic case was made from (``case_id,source_case``,
  optionally ``mask_case`` and ``quality_score``). A case linked to a test-split case, to a case
  the real dataset does not have, or not linked at all is quarantined with one sentence;
* **what the generator learnt from**: a file of real case ids, or ``unknown``. It is recorded as
  ``generator_train_cases`` in dataset.json, where the ablation's leak check reads it as it does
  for our own sets (``unknown`` is refused there, as is a generator that saw a test case).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import Field

from components.brats import (
    CasePlan,
    CaseSource,
    IngestError,
    SourceChoices,
    candidate_schemes,
    discover,
    ingest_case,
    quarantine_case,
)
from components.io import stat_fingerprint
from components.progress import tqdm
from data_catalog import (
    STATUS_OK,
    Dataset,
    dataset_dir,
    dataset_parent_entry,
    load_label_scheme,
    open_dataset,
    register_dataset,
    remove_stale_cases,
)

log = logging.getLogger(__name__)

UNKNOWN = "unknown"
LINK_COLUMNS = ("case_id", "source_case")
OPTIONAL_LINK_COLUMNS = ("mask_case", "quality_score")


class ForeignIngestConfig(SourceChoices):
    """How a synthetic set made by another tool is read (saved in its dataset.json)."""

    layout: str = Field("auto", description="layout of the source: auto, brats2021, brats2023, msd_task01")
    label_scheme: str = Field("auto", description="label scheme of the source's seg files; auto: the real dataset's "
                                                  "scheme where the layout allows it, else the layout's own scheme")
    workers: int = Field(2, ge=1, description="parallel readers")


@dataclass(frozen=True)
class GeneratorSpec:
    """What the user said the generator learnt from: case ids of the real dataset, or unknown (None)."""

    train_cases: tuple[str, ...] | None
    source: str  # the file it was read from, or "unknown"
    sha256: str = ""


@dataclass
class ForeignSummary:
    name: str
    real: str
    layout: str
    label_scheme: str
    n_ok: int
    n_quarantined: int
    n_reused: int
    generator: str
    seconds: float
    quarantined: dict[str, str]
    warnings: list[str]

    def line(self) -> str:
        return (f"{self.name}: {self.n_ok} ok, {self.n_quarantined} quarantined ({self.n_reused} unchanged) "
                f"[{self.layout}, {self.label_scheme}, linked to real dataset {self.real}; generator learnt from "
                f"{self.generator}] in {self.seconds:.1f} s")


# --------------------------------------------------------------------------- user inputs
def read_links(path: str | os.PathLike) -> pd.DataFrame:
    """The links table: one row per synthetic case, ``case_id`` and ``source_case`` (its real case),
    optionally ``mask_case`` (the mask it was conditioned on, default the source case) and
    ``quality_score`` (higher is better; what ``--high-quality`` ranks by)."""
    path = Path(path)
    if not path.is_file():
        raise IngestError(f"links file {path} does not exist: expected a CSV with columns case_id,source_case")
    try:
        t = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except Exception as err:  # pandas raises several types for a file that is not CSV
        raise IngestError(f"links file {path} is not readable as CSV: expected columns case_id,source_case, "
                          f"found {type(err).__name__}: {err}") from None
    t.columns = [str(c).strip() for c in t.columns]
    missing = [c for c in LINK_COLUMNS if c not in t.columns]
    if missing:
        raise IngestError(f"links file {path} lacks column(s) {', '.join(missing)}: expected columns case_id,"
                          f"source_case (optional: {', '.join(OPTIONAL_LINK_COLUMNS)}), found {list(t.columns)}")
    unknown = [c for c in t.columns if c not in (*LINK_COLUMNS, *OPTIONAL_LINK_COLUMNS)]
    if unknown:
        raise IngestError(f"links file {path} has unknown column(s) {', '.join(unknown)}: expected case_id, "
                          f"source_case and optionally {', '.join(OPTIONAL_LINK_COLUMNS)}")
    t = t.apply(lambda col: col.str.strip())
    empty = t.index[t["case_id"] == ""].tolist()
    if empty:
        raise IngestError(f"links file {path}, data row {empty[0] + 1}: case_id is empty: expected the synthetic "
                          f"case's folder name")
    dup = sorted(t.loc[t["case_id"].duplicated(), "case_id"].unique())
    if dup:
        raise IngestError(f"links file {path}: case {dup[0]!r} is listed more than once: expected one row per "
                          f"synthetic case ({len(dup)} repeated)")
    if "quality_score" in t:
        for cid, v in zip(t["case_id"], t["quality_score"], strict=True):
            try:
                ok = math.isfinite(float(v))
            except ValueError:
                ok = False
            if not ok:
                raise IngestError(f"links file {path}, case {cid}: quality_score {v!r} is not a number: expected a "
                                  f"finite number (higher is better) for every case, or no quality_score column")
        t["quality_score"] = t["quality_score"].astype(float)
    return t.reset_index(drop=True)


def read_generator_cases(spec: str, real: Dataset) -> GeneratorSpec:
    """``spec`` is ``unknown`` or a text file of real case ids (one a line; ``#`` comments and blank
    lines skipped; a first line ``case_id`` is a CSV header). Every id must be a case of ``real``."""
    if spec.strip().lower() == UNKNOWN:
        return GeneratorSpec(None, UNKNOWN)
    path = Path(spec)
    if not path.is_file():
        raise IngestError(f"--generator-train-cases {spec}: no such file: expected a file of the real case ids the "
                          f"generator learnt from (one a line), or the word `unknown`")
    data = path.read_bytes()
    ids: list[tuple[int, str]] = []
    for n, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        s = line.split("#", 1)[0].strip().strip(",").strip()
        if not s or (not ids and s == "case_id"):
            continue
        ids.append((n, s))
    known = set(real.manifest["case_id"].astype(str))
    for n, cid in ids:
        if cid not in known:
            raise IngestError(
                f"--generator-train-cases {path}, line {n}: case {cid!r} is not a case of real dataset {real.name!r} "
                f"({real.root / 'manifest.parquet'}): expected ids of the real cases the generator learnt from, "
                f"or `unknown` if that is not known")
    seen: list[str] = []
    for _, cid in ids:
        if cid not in seen:
            seen.append(cid)
    return GeneratorSpec(tuple(sorted(seen)), str(path.resolve()), hashlib.sha256(data).hexdigest())


def resolve_label_scheme(layout: str, requested: str, real: Dataset) -> str:
    """The source scheme to validate against; its canonical form must be the real dataset's scheme."""
    target = real.label_scheme.name
    candidates = candidate_schemes(layout, requested)  # IngestError when it does not fit the layout

    def canonical(s: str) -> str:
        sch = load_label_scheme(s)
        return s if sch.canonical else str(sch.to_canonical)

    fitting = [s for s in candidates if canonical(s) == target]
    if not fitting:
        raise IngestError(
            f"label scheme {'/'.join(candidates)} of the {layout} source maps to "
            f"{'/'.join(sorted({canonical(s) for s in candidates}))}, expected the scheme of real dataset "
            f"{real.name!r}, {target!r}: synthetic and real cases share one label scheme (--label-scheme names the "
            f"source's)")
    return target if target in fitting else fitting[0]


@dataclass(frozen=True)
class ForeignInputs:
    """Everything read and checked before a single case is touched (the command line runs this first)."""

    source: Path
    real: Dataset
    links: pd.DataFrame
    generator: GeneratorSpec
    layout: str
    cases: list[CaseSource]
    source_scheme: str


def check_inputs(source: str | os.PathLike, workspace: str | os.PathLike, name: str, real: str,
                 links: str | os.PathLike, generator_train_cases: str,
                 config: ForeignIngestConfig | None = None) -> ForeignInputs:
    """Open the real dataset, read the links and the generator record, find the source's cases.
    Raises IngestError (or CatalogError for a missing dataset) with one sentence."""
    cfg = config or ForeignIngestConfig()
    if name == real:
        raise IngestError(f"--name {name!r} is the real dataset itself: choose another name for the synthetic set")
    real_ds = open_dataset(workspace, real)
    if real_ds.info.get("kind") not in ("real", "phantom"):
        raise IngestError(f"--real {real!r} is a dataset of kind {real_ds.info.get('kind')!r} "
                          f"({real_ds.root / 'dataset.json'}): expected a real (or phantom) dataset with a test split")
    out = dataset_dir(workspace, name)
    if (out / "dataset.json").is_file():
        existing = open_dataset(workspace, name)
        if not existing.info.get("foreign"):
            raise IngestError(f"dataset {name!r} already exists as a {existing.info.get('kind')} dataset "
                              f"({out / 'dataset.json'}) not ingested by ingest-synthetic: choose another --name")
    table = read_links(links)
    gen = read_generator_cases(generator_train_cases, real_ds)
    layout, cases = discover(source, cfg.layout)
    scheme = resolve_label_scheme(layout, cfg.label_scheme, real_ds)
    return ForeignInputs(Path(source).resolve(), real_ds, table, gen, layout, cases, scheme)


# --------------------------------------------------------------------------- ingestion
def _link_problem(cid: str, link: pd.Series | None, links_path: Path, real: Dataset,
                  rstatus: dict[str, str], rsplit: dict[str, str]) -> str | None:
    """Why a case cannot be linked to a train-split real case, or None."""
    where = f"{real.root / 'manifest.parquet'}"
    if cid in rstatus:
        return (f"case {cid}: its id is also a case of real dataset {real.name!r} ({where}): expected synthetic case "
                f"ids distinct from the real ones (one id per case in every mix); rename the folder and its row in "
                f"{links_path.name}")
    if link is None:
        return (f"case {cid}: no row in links file {links_path.name}: expected a row `{cid},<source_case>` naming "
                f"the real case it was made from")
    src = str(link["source_case"])
    if not src:
        return (f"case {cid}: links file {links_path.name} gives no source_case: expected the id of the real case "
                f"of dataset {real.name!r} it was made from")
    if src not in rstatus:
        return (f"case {cid}: links file {links_path.name} links it to {src!r}, which is not a case of real dataset "
                f"{real.name!r} ({where}): expected a train-split case of that dataset")
    if rstatus[src] != STATUS_OK:
        return (f"case {cid}: links file {links_path.name} links it to real case {src!r}, which is quarantined in "
                f"dataset {real.name!r} ({where}): expected an ok train-split case")
    if rsplit.get(src) != "train":
        return (f"case {cid}: links file {links_path.name} links it to real case {src!r}, which is in the "
                f"{rsplit.get(src)!r} split of dataset {real.name!r} ({where}): expected a train-split source; a case "
                f"derived from a held-out case would leak it into training, so it is refused")
    return None


def ingest_synthetic(
    source: str | os.PathLike, workspace: str | os.PathLike, name: str, real: str, links: str | os.PathLike,
    generator_train_cases: str, config: ForeignIngestConfig | None = None, progress: bool | None = None,
) -> ForeignSummary:
    """Validate the cases under ``source`` and write them as the synthetic dataset ``name``, each linked
    to its source case of the real dataset ``real``, with the generator's training cases recorded."""
    cfg = config or ForeignIngestConfig()
    t0 = time.perf_counter()
    inp = check_inputs(source, workspace, name, real, links, generator_train_cases, cfg)
    real_ds = inp.real
    links_path = Path(links).resolve()
    scheme = load_label_scheme(inp.source_scheme)
    label_map = None if scheme.canonical else scheme.mapping
    root = dataset_dir(workspace, name)
    rstatus = dict(zip(real_ds.manifest["case_id"].astype(str), real_ds.manifest["status"].astype(str), strict=True))
    rsplit = dict(zip(real_ds.manifest["case_id"].astype(str), real_ds.manifest["split"].astype(str), strict=True))
    link_rows = {str(r["case_id"]): r for _, r in inp.links.iterrows()}

    rows: list[dict[str, Any]] = []
    plans: list[CasePlan] = []
    seen: dict[str, Path] = {}
    for cs in inp.cases:
        link = link_rows.get(cs.case_id)
        src = str(link["source_case"]) if link is not None else ""
        if cs.case_id in seen:
            rows.append(quarantine_case(cs, f"case {cs.case_id}: folder {cs.folder} repeats a case id already found "
                                            f"at {seen[cs.case_id]}: expected unique case ids, kept the first",
                                        rsplit.get(src, "")))
            continue
        seen[cs.case_id] = cs.folder
        problem = _link_problem(cs.case_id, link, links_path, real_ds, rstatus, rsplit)
        if problem is not None:
            rows.append(quarantine_case(cs, problem, rsplit.get(src, "")))
            continue
        plans.append(CasePlan(
            source=cs, cases_dir=root / "cases", allowed_labels=frozenset(scheme.values),
            scheme_desc=f"scheme {scheme.name}", label_map=label_map, split="train",
            fingerprint=stat_fingerprint(cs.all_files()) + f":{sorted((label_map or {}).items())}",
        ))
    found = {cs.case_id for cs in inp.cases}
    for cid in sorted(set(link_rows) - found):
        rows.append(quarantine_case(
            CaseSource(cid, inp.layout, inp.source / cid), f"case {cid}: listed in links file {links_path.name} but "
            f"no case folder {cid} with {inp.layout} files was found under {inp.source}: expected its four modalities "
            f"and seg there", rsplit.get(str(link_rows[cid]["source_case"]), "")))

    reused = 0
    with ThreadPoolExecutor(max_workers=cfg.workers) as pool:
        for row, was_reused in tqdm(pool.map(ingest_case, plans), total=len(plans), desc=f"ingest-synthetic {name}",
                                    unit="case", disable=(not progress) if progress is not None else None):
            row = dict(row)
            row.pop("fingerprint", None)
            if row["status"] == STATUS_OK and not row.get("has_seg"):
                cs = next(p.source for p in plans if p.source.case_id == row["case_id"])
                found_files = ", ".join(sorted(p.name for p in cs.all_files()))
                row = quarantine_case(cs, f"case {cs.case_id}: no seg file in {cs.folder}: expected a segmentation "
                                          f"beside the four modalities (synthetic cases are training pairs), found "
                                          f"{found_files}", "train")
            reused += was_reused
            rows.append(row)

    manifest = pd.DataFrame(rows)
    for col in ("source_labels",):
        if col not in manifest:
            manifest[col] = [[] for _ in range(len(manifest))]
    src_col, mask_col, q_col = [], [], []
    for cid in manifest["case_id"]:
        link = link_rows.get(cid)
        src = str(link["source_case"]) if link is not None else ""
        src_col.append(src)
        mask = str(link["mask_case"]) if link is not None and "mask_case" in link and link["mask_case"] else src
        mask_col.append(mask)
        q_col.append(float(link["quality_score"]) if link is not None and "quality_score" in link else math.nan)
    manifest["source_case"] = src_col
    manifest["mask_case"] = mask_col
    if "quality_score" in inp.links:
        manifest["quality_score"] = pd.array(q_col, dtype=float)
    manifest["seed"] = pd.array([pd.NA] * len(manifest), dtype="Int64")  # the other tool's seeds are not known
    manifest["params"] = ""
    ok = manifest["status"] == STATUS_OK
    for cid, reason in zip(manifest.loc[~ok, "case_id"], manifest.loc[~ok, "reason"], strict=True):
        log.warning("quarantined %s: %s", cid, reason)
    if not ok.any():
        raise IngestError(f"no valid synthetic case in {inp.source}: all {len(manifest)} cases were quarantined; "
                          f"first reason: {manifest['reason'].iloc[0] if len(manifest) else 'none'}")
    remove_stale_cases(root, set(manifest.loc[ok, "case_id"]))

    gen = inp.generator
    warnings = []
    if gen.train_cases is None:
        warnings.append(f"{name}: the generator's training cases are `unknown`: the ablation refuses this set for "
                        f"ratios above 0 (a generator trained on test cases would leak them)")
    else:
        seen_test = sorted(c for c in gen.train_cases if rsplit.get(c) == "test")
        if seen_test:
            warnings.append(f"{name}: the generator learnt from {len(seen_test)} test-split case(s) of {real} "
                            f"(e.g. {seen_test[:3]}): the ablation refuses this set")
    for w in warnings:
        log.warning("%s", w)
    info_links = {"file": str(links_path), "sha256": hashlib.sha256(links_path.read_bytes()).hexdigest()}
    register_dataset(
        workspace, name, kind="synthetic", label_scheme=real_ds.label_scheme.name, manifest=manifest,
        config={**cfg.model_dump(), "generator_train_cases": generator_train_cases},
        parents=[dataset_parent_entry(real_ds)],
        extra={
            "foreign": True,
            "source": str(inp.source),
            "source_layout": inp.layout,
            "source_label_scheme": inp.source_scheme,
            "label_mapping": {str(k): v for k, v in (label_map or {}).items()},
            "links": info_links,
            "real_dataset": real_ds.name,
            # what the ablation's leak check reads (None: unknown, refused there)
            "generator_dataset": real_ds.name,
            "generator_train_cases": list(gen.train_cases) if gen.train_cases is not None else None,
            "generator_train_cases_source": {"file": gen.source, "sha256": gen.sha256},
            "note": "Synthetic cases made by another tool, ingested with ingest-synthetic; source_case links each "
                    "to the real case it was made from (from the links file).",
        },
    )
    q = manifest[~ok]
    return ForeignSummary(
        name=name, real=real_ds.name, layout=inp.layout, label_scheme=real_ds.label_scheme.name, n_ok=int(ok.sum()),
        n_quarantined=int((~ok).sum()), n_reused=reused,
        generator=UNKNOWN if gen.train_cases is None else f"{len(gen.train_cases)} real cases",
        seconds=time.perf_counter() - t0, quarantined=dict(zip(q["case_id"], q["reason"], strict=True)),
        warnings=warnings,
    )
