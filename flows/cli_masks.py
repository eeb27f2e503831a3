"""Verbs of the mask augmentation stage: augment-masks."""

from __future__ import annotations

import argparse
from pathlib import Path

from flows.cli_common import reads, workspace_arg


def _add_augment_masks(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "augment-masks", help="derive head labels and write plausibility-checked augmented tumour masks",
        description="From the segmentations of dataset SOURCE: derive a head label per case from its four modalities, "
        "then draw augmented masks (left-right flip, whole-head affine, tumour elastic deformation, tumour scaling, "
        "relocation into the same or another same-split head), keep only candidates that pass the plausibility checks "
        "(tumour inside the head, no source label lost, nesting, volume bounds, no new stray fragments, head not "
        "clipped) and write them as a catalogued dataset of kind 'masks' with tumour features per region, "
        "source_features.parquet for the real masks, features.png and montage.png. Each mask keeps its source's split. "
        "Deterministic for a seed; every mask's parameters are stored in the manifest for exact replay.",
    )
    p.add_argument("--source", required=True, help="dataset holding the real masks (e.g. an ingested release or a phantom)")
    p.add_argument("--name", required=True, help="name of the masks dataset to write")
    p.add_argument("--per-case", type=int, default=4, help="augmented masks per source case (default: 4)")
    p.add_argument("--seed", type=int, default=0, help="random seed; each mask's own seed is recorded in the manifest (default: 0)")
    p.add_argument("--max-draws", type=int, default=None,
                   help="candidates drawn per requested mask before it is recorded as quarantined (default: 10)")
    p.add_argument("--splits", default=None,
                   help="comma-separated source splits to augment, e.g. 'train' (default: train,test; a mask always keeps its source's split)")
    p.add_argument("--workers", type=int, default=None, help="parallel workers (default: 2)")
    p.add_argument("--config", default=None,
                   help="YAML file with MaskAugmentConfig fields (transform probabilities and ranges, check bounds), "
                        "the format of every other config (JSON, a subset of YAML, is read too); flags given on the "
                        "command line override it")
    workspace_arg(p)
    reads(p, datasets=("source",))
    p.set_defaults(handler=_run_augment_masks)


def _run_augment_masks(a: argparse.Namespace) -> int:
    import yaml

    from components.errors import InputError
    from components.masks import MaskAugmentConfig
    from flows.masks import AugmentMasksParams, augment_masks_flow

    fields: dict = {}
    if a.config:
        try:
            fields = yaml.safe_load(Path(a.config).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as err:
            raise InputError(f"augment-masks --config {a.config}: cannot read a YAML mapping of MaskAugmentConfig fields ({err})") from err
        if not isinstance(fields, dict):
            raise InputError(f"augment-masks --config {a.config}: expected a YAML mapping of MaskAugmentConfig fields, "
                             f"found a {type(fields).__name__}")
    fields.update(per_case=a.per_case, seed=a.seed)
    if a.max_draws is not None:
        fields["max_draws"] = a.max_draws
    if a.workers is not None:
        fields["workers"] = a.workers
    if a.splits is not None:
        fields["splits"] = tuple(s.strip() for s in a.splits.split(",") if s.strip())
    cfg = MaskAugmentConfig(**fields)
    out = augment_masks_flow(AugmentMasksParams(source=a.source, name=a.name, workspace=a.workspace, config=cfg))
    print(out["report"])
    for key in ("features", "montage"):
        if out.get(key):
            print(f"{key}: {out[key]}")
    return 0 if out["n_ok"] > 0 else 1


def register(sub: argparse._SubParsersAction) -> None:
    _add_augment_masks(sub)
