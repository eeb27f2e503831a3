"""Verbs of the foundation stage: phantom, ingest, ingest-synthetic, datasets."""

from __future__ import annotations

import argparse

from flows.cli_common import reads, workspace_arg


def _add_phantom(sub: argparse._SubParsersAction) -> None:
    from data_catalog import label_scheme_names

    p = sub.add_parser(
        "phantom", help="make the embedded BraTS-like phantom dataset (offline, from the MNI152 template)",
        description="Build BraTS-like cases from the MNI152 template shipped in nilearn's wheel and write them as a "
        "catalogued dataset of kind 'phantom' with a PNG montage. Deterministic for a seed. For pipeline checks, "
        "not for claims about BraTS.",
    )
    p.add_argument("--name", default="phantom", help="dataset name in the workspace catalog (default: phantom)")
    p.add_argument("--cases", type=int, default=8, help="number of cases to make (default: 8)")
    p.add_argument("--spacing", type=float, default=2.0, help="isotropic voxel size in mm; 1 gives the 240x240x155 BraTS grid (default: 2)")
    p.add_argument("--label-scheme", default="brats2023", choices=label_scheme_names(canonical_only=True),
                   help="brats2023 (1 NCR, 2 ED, 3 ET) or brats2024_post (adds 4 RC, a resection cavity)")
    p.add_argument("--seed", type=int, default=0, help="random seed; recorded per case in the manifest (default: 0)")
    p.add_argument("--test-fraction", type=float, default=0.2, help="fraction of cases hashed into the test split (default: 0.2)")
    p.add_argument("--workers", type=int, default=2, help="parallel workers (default: 2)")
    workspace_arg(p)
    p.set_defaults(handler=_run_phantom)


def _run_phantom(a: argparse.Namespace) -> int:
    from components.phantom import PhantomConfig
    from flows.datasets import PhantomParams, phantom_flow

    cfg = PhantomConfig(cases=a.cases, spacing=a.spacing, label_scheme=a.label_scheme, seed=a.seed,
                        test_fraction=a.test_fraction, workers=a.workers)
    out = phantom_flow(PhantomParams(workspace=a.workspace, name=a.name, config=cfg))
    print(out["line"])
    if out.get("montage"):
        print(f"montage: {out['montage']}")
    return 0


def _add_ingest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ingest", help="validate a BraTS/MSD release and write it as a canonical catalogued dataset",
        description="Detect the release layout under SOURCE (searched recursively: BraTS 2021, BraTS 2023+ "
        "GLI/MEN/MET/SSA/PED, BraTS 2024 post-treatment, MSD Task01 4-D), validate every case and write the "
        "canonical dataset (t1n/t1c/t2w/t2f + seg, labels in brats2023 or brats2024_post, affines kept). Bad "
        "cases are quarantined with a reason, never dropped. Exit status 0 when at least one case is ok.",
    )
    p.add_argument("source", help="folder holding the release (a Task folder, a release folder or any parent)")
    p.add_argument("--name", required=True, help="dataset name in the workspace catalog")
    p.add_argument("--label-scheme", default="auto", choices=["auto", "brats2021", "brats2023", "brats2024_post", "msd"],
                   help="label scheme of the source; auto infers it from the layout (2023 names with label 4 -> brats2024_post)")
    p.add_argument("--layout", default="auto", choices=["auto", "brats2021", "brats2023", "msd_task01"],
                   help="release layout; auto detects it (a source mixing layouts needs this)")
    p.add_argument("--test-fraction", type=float, default=0.2, help="fraction of cases hashed into the test split, fixed at ingestion (default: 0.2)")
    p.add_argument("--workers", type=int, default=2, help="parallel readers (default: 2)")
    workspace_arg(p)
    reads(p, folders=("source",), workspace=False)
    p.set_defaults(handler=_run_ingest)


def _run_ingest(a: argparse.Namespace) -> int:
    from components.brats import IngestConfig
    from flows.datasets import IngestParams, ingest_flow

    cfg = IngestConfig(label_scheme=a.label_scheme, layout=a.layout, test_fraction=a.test_fraction, workers=a.workers)
    out = ingest_flow(IngestParams(source=a.source, name=a.name, workspace=a.workspace, config=cfg))
    for cid, reason in sorted(out["quarantined"].items()):
        print(f"  quarantined {cid}: {reason}")
    print(out["line"])
    if out.get("montage"):
        print(f"montage: {out['montage']}")
    return 0 if out["n_ok"] > 0 else 1


def _add_ingest_synthetic(sub: argparse._SubParsersAction) -> None:
    from data_catalog import label_scheme_names, load_layouts

    p = sub.add_parser(
        "ingest-synthetic", help="bring your own synthetic set: validate cases made by another tool and catalogue them "
        "for the ablation",
        description="Validate the synthetic cases under SOURCE as `ingest` validates a release (case folders in the "
        "BraTS 2021 or 2023 naming, or MSD Task01; four modalities + seg on one grid, labels in the scheme) and "
        "write them as a catalogued synthetic dataset linked to the real dataset REAL. LINKS is a CSV with one row "
        "per case: case_id (the case folder's name), source_case (the real case it was made from); optional "
        "mask_case and quality_score (higher is better, used by `ablation --high-quality`). A case linked to a "
        "test-split case, to a case REAL does not have, or not linked is quarantined with its reason, as is an "
        "invalid case. The generator's training cases are recorded for the ablation's leak check. Exit status 0 "
        "when at least one case is ok.",
    )
    p.add_argument("source", help="folder holding the synthetic cases (searched recursively)")
    p.add_argument("--name", required=True, help="name of the synthetic dataset in the workspace catalog")
    p.add_argument("--real", required=True, help="the real dataset the cases derive from (its test split is held out)")
    p.add_argument("--links", required=True, metavar="LINKS.csv",
                   help="CSV with columns case_id,source_case (optional: mask_case, quality_score)")
    p.add_argument("--generator-train-cases", required=True, metavar="FILE|unknown",
                   help="what the generator learnt from: a text file of case ids of REAL, one a line ('#' comments; "
                        "an empty file: it learnt from no real case), or the word `unknown` (recorded; the ablation "
                        "then refuses the set for ratios above 0)")
    p.add_argument("--layout", default="auto", choices=["auto", *load_layouts()],
                   help="layout of SOURCE; auto detects it")
    p.add_argument("--label-scheme", default="auto", choices=["auto", *label_scheme_names()],
                   help="label scheme of the seg files (mapped to REAL's scheme, which it must map to); auto: REAL's "
                        "scheme where the layout allows it, else the layout's own (brats2021 -> brats2023)")
    p.add_argument("--workers", type=int, default=2, help="parallel readers (default: 2)")
    workspace_arg(p)
    reads(p, datasets=("real",), folders=("source",))
    p.set_defaults(handler=_run_ingest_synthetic)


def _run_ingest_synthetic(a: argparse.Namespace) -> int:
    from pathlib import Path

    from components.foreign import UNKNOWN, ForeignIngestConfig, check_inputs
    from flows.datasets import IngestSyntheticParams, ingest_synthetic_flow

    cfg = ForeignIngestConfig(layout=a.layout, label_scheme=a.label_scheme, workers=a.workers)
    gen = a.generator_train_cases
    gen = UNKNOWN if gen.strip().lower() == UNKNOWN else str(Path(gen).resolve())
    check_inputs(a.source, a.workspace, a.name, a.real, a.links, gen, cfg)  # one sentence before Prefect starts
    out = ingest_synthetic_flow(IngestSyntheticParams(
        source=a.source, name=a.name, real=a.real, links=a.links, generator_train_cases=gen, workspace=a.workspace,
        config=cfg))
    for cid, reason in sorted(out["quarantined"].items()):
        print(f"  quarantined {cid}: {reason}")
    for w in out["warnings"]:
        print(f"  warning: {w}")
    print(out["line"])
    if out.get("montage"):
        print(f"montage: {out['montage']}")
    return 0 if out["n_ok"] > 0 else 1


def _add_datasets(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("datasets", help="list the datasets in the workspace catalog",
                       description="List every catalogued dataset with its kind, label scheme and case counts.")
    workspace_arg(p)
    reads(p)
    p.set_defaults(handler=_run_datasets)


def _run_datasets(a: argparse.Namespace) -> int:
    from data_catalog import list_datasets

    df = list_datasets(a.workspace)
    print(df.to_string(index=False) if len(df) else f"no datasets in {a.workspace}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    for add in (_add_phantom, _add_ingest, _add_ingest_synthetic, _add_datasets):
        add(sub)
