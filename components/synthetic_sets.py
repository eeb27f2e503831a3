"""Several synthetic datasets as one, so that one ablation crosses synthesizers.

``combine_synthetic`` links the cases of each part (one synthetic dataset per synthesizer, all made
from the same real dataset) into one dataset whose ``synthesizer`` column says which part a case
comes from. Case ids get the part's label as a prefix (``ldm-<case>``): two synthesizers fed the
same masks write the same ids. The ablation then plans every ratio once per synthesizer
(``components.ablation.plan_mixes``), and every segmenter reads one dataset as before.

The combined dataset's generator record is the union of the parts' (all must come from the same
real dataset), so the ablation's leak check covers every generator.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from components.errors import InputError
from data_catalog import (
    MODALITIES,
    STATUS_OK,
    Dataset,
    dataset_dir,
    dataset_parent_entry,
    file_of,
    open_dataset,
    register_dataset,
    remove_stale_cases,
)

SYNTHESIZER_COLUMN = "synthesizer"
FILE_KEYS = (*MODALITIES, "seg", "head")


class CombineError(InputError):
    """Synthetic datasets that cannot be crossed in one ablation."""


def _label_ok(label: str) -> bool:
    return bool(label) and label.replace("-", "").replace("_", "").isalnum()


def combine_synthetic(workspace: str | Path, name: str, parts: Mapping[str, str]) -> Dataset:
    """Register dataset ``name`` holding every case of each synthetic dataset in ``parts``
    (``{label: dataset}``, e.g. ``{"ddpm": "synthetic-ddpm", "ldm": "synthetic-ldm"}``), files
    hard-linked (or copied) byte for byte."""
    from components.ablation import generator_record
    from components.io import link_or_copy

    if len(parts) < 2:
        raise CombineError(f"combining synthetic datasets into {name!r}: expected at least two parts, found "
                           f"{dict(parts)}")
    bad = [label for label in parts if not _label_ok(label)]
    if bad:
        raise CombineError(f"combining synthetic datasets into {name!r}: labels {bad} must be letters, digits, '-' "
                           f"and '_'")
    if name in parts.values():
        raise CombineError(f"combining synthetic datasets into {name!r}: expected a new name, found it among the parts "
                           f"{dict(parts)}")
    datasets = {label: open_dataset(workspace, ds) for label, ds in parts.items()}
    schemes = {label: ds.label_scheme.name for label, ds in datasets.items()}
    if len(set(schemes.values())) > 1:
        raise CombineError(f"combining synthetic datasets into {name!r}: expected one label scheme, found {schemes}")
    records = {}
    for label, ds in datasets.items():
        rec = generator_record(workspace, ds)
        if rec is None:
            raise CombineError(f"synthetic dataset {ds.name!r} ({ds.root / 'dataset.json'}): expected the real cases "
                               f"its generator learnt from (generator_train_cases), found none")
        records[label] = rec
    sources = {label: rec.dataset for label, rec in records.items()}
    if len(set(sources.values())) > 1:
        raise CombineError(f"combining synthetic datasets into {name!r}: their generators learnt from different real "
                           f"datasets {sources}; one ablation scores on one real dataset's test split")
    root = dataset_dir(workspace, name)
    rows: list[dict[str, Any]] = []
    placed: dict[str, set[str]] = {}  # case id -> the file names its folder holds now
    for label, ds in datasets.items():
        for _, r in ds.manifest.iterrows():
            row = r.to_dict()
            cid = f"{label}-{r['case_id']}"
            row.update(case_id=cid, **{SYNTHESIZER_COLUMN: label, "part_case": str(r["case_id"])})
            placed[cid] = set()
            for key in FILE_KEYS:
                rel = file_of(r, key)
                if rel is None:
                    continue
                src = ds.root / rel
                if not src.is_file():
                    if r["status"] == STATUS_OK:
                        raise CombineError(f"synthetic dataset {ds.name!r} ({ds.root / 'manifest.parquet'}): case "
                                           f"{r['case_id']} lists {key} file {src}; expected it to exist, found none")
                    row[key] = row[f"sha256_{key}"] = ""  # a quarantined case keeps its row and reason, not the file
                    continue
                new_rel = f"cases/{cid}/{Path(rel).name}"
                link_or_copy(src, root / new_rel)
                row[key] = new_rel
                placed[cid].add(Path(rel).name)
            rows.append(row)
    manifest = pd.DataFrame(rows)
    first = next(iter(records.values()))
    combined = register_dataset(
        workspace, name, kind="synthetic", label_scheme=next(iter(schemes.values())), manifest=manifest,
        config={"parts": dict(parts)}, parents=[dataset_parent_entry(ds) for ds in datasets.values()],
        extra={"synthesizers": list(parts), "parts": {label: {"dataset": ds.name, "model": ds.info.get("model"),
                                                              "manifest_sha256": ds.manifest_digest}
                                                      for label, ds in datasets.items()},
               "generator_dataset": first.dataset,
               "generator_train_cases": sorted({c for rec in records.values() for c in rec.train_cases}),
               "note": f"the cases of {', '.join(f'{ds.name} ({label})' for label, ds in datasets.items())}, one "
                       f"ablation crossing their synthesizers"},
    )
    # Only now that the new manifest is in place: what an earlier combination left and this one does not list.
    remove_stale_cases(root, set(manifest["case_id"]))
    for cid, names in placed.items():
        folder = root / "cases" / cid
        for p in folder.iterdir() if folder.is_dir() else ():
            if p.name in names:
                continue
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
    return combined
