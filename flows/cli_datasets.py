"""Verbs of the foundation stage: phantom, ingest, datasets."""

from __future__ import annotations

import argparse

from flows.cli_common import workspace_arg


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


def _add_datasets(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("datasets", help="list the datasets in the workspace catalog",
                       description="List every catalogued dataset with its kind, label scheme and case counts.")
    workspace_arg(p)
    p.set_defaults(handler=_run_datasets)


def _run_datasets(a: argparse.Namespace) -> int:
    from data_catalog import list_datasets

    df = list_datasets(a.workspace)
    print(df.to_string(index=False) if len(df) else f"no datasets in {a.workspace}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    for add in (_add_phantom, _add_ingest, _add_datasets):
        add(sub)
