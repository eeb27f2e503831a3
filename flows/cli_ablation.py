"""Verbs of the export and ablation stage: export, ablation."""

from __future__ import annotations

import argparse

from flows.cli_common import reads, workspace_arg


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export a dataset as a BraTS 2023-layout release or an nnU-Net v2 raw dataset, or the "
        "ablation's exact mixes (--mix) to train another segmenter on",
        description="Write a catalogued dataset for sharing (--format brats: <case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz "
        "with PROVENANCE.md, manifest.csv and dataset.json) or for nnU-Net (--format nnunet: "
        "Dataset<id>_<name>/imagesTr/<case>_000{0..3}.nii.gz, labelsTr, region-based dataset.json; the test split "
        "goes to imagesTs/labelsTs). Files are linked or copied byte for byte, so affines are preserved. With --mix, "
        "write the configurations `ablation` would train for the same options, without training: OUT becomes an "
        "nnU-Net raw folder with one Dataset<id>_<synthetic>-<config> per configuration (ids from 500; imagesTr/"
        "labelsTr exactly the configuration's real and synthetic cases, imagesTs/labelsTs the real held-out test "
        "split), mixes.csv (every configuration's case ids), mixes.json (config, seeds, plans) and README.md. The "
        "mixes pass the ablation's leak checks first. Score your predictions with evaluate-segmentation --gt "
        "OUT/<dataset>/labelsTs.",
    )
    p.add_argument("--dataset", required=True, help="dataset name in the workspace catalog; with --mix, the real "
                   "dataset whose test split is held out")
    p.add_argument("--format", default=None, choices=["brats", "nnunet"],
                   help="output layout (required without --mix; --mix writes nnunet)")
    p.add_argument("--out", required=True, help="brats: the release folder to write; nnunet: the nnUNet_raw folder "
                   "that receives Dataset<id>_<name>; --mix: a new folder (or an earlier --mix output), replaced whole")
    p.add_argument("--verify", action="store_true", help="nnunet: run nnU-Net's own dataset integrity check after writing")
    mix = p.add_argument_group("ablation mixes (--mix; the options mean what they mean for `ablation`)")
    mix.add_argument("--mix", action="store_true", help="export the ablation's mixes of --dataset and --synthetic")
    mix.add_argument("--synthetic", default=None, help="synthetic dataset of the mixes (needed for ratios above 0)")
    mix.add_argument("--ratios", type=float, nargs="+", default=None,
                     help="synthetic cases per real training case, 0 included (default: 0 0.5 1 2)")
    mix.add_argument("--seeds", type=int, nargs="+", default=None, help="one configuration per ratio and seed (default: 0)")
    mix.add_argument("--synthetic-only", action="store_true", default=None,
                     help="also export synthetic-only configurations")
    mix.add_argument("--real-fraction", type=float, default=None,
                     help="fraction of real training cases kept, one subset drawn with --subset-seed (default: 1)")
    mix.add_argument("--subset-seed", type=int, default=None, help="seed of the real subset (default: 0)")
    mix.add_argument("--high-quality", action="store_true", default=None,
                     help="take synthetic cases by descending quality score")
    workspace_arg(p)
    reads(p, datasets=("dataset", "synthetic"))
    p.set_defaults(handler=_run_export)


MIX_OPTIONS = ("ratios", "seeds", "synthetic_only", "real_fraction", "subset_seed", "high_quality")


def _run_export(a: argparse.Namespace) -> int:
    from components.ablation import AblationConfig
    from components.export import ExportError
    from flows.ablation import ExportParams, check_export, export_flow

    given = {k: (tuple(v) if isinstance(v, list) else v) for k in MIX_OPTIONS if (v := getattr(a, k)) is not None}
    if not a.mix:
        if given or a.synthetic:
            flags = ", ".join("--" + k.replace("_", "-") for k in [*given, *(["synthetic"] if a.synthetic else [])])
            raise ExportError(f"export {flags}: expected --mix with these options (they choose the ablation's mixes)")
        if a.format is None:
            raise ExportError("export --format: missing; expected brats or nnunet (or --mix for the ablation's mixes)")
    params = ExportParams(workspace=a.workspace, dataset=a.dataset, format=a.format or "nnunet", out=a.out,
                          synthetic=a.synthetic, mix=AblationConfig(**given) if a.mix else None)
    real, _ = check_export(params)  # before Prefect starts: datasets, grid and leak checks in one sentence
    out = export_flow(params)
    if not a.mix:
        print(f"exported {a.dataset} ({params.format}) -> {out}")
        if a.verify and params.format == "nnunet":
            from components.export import verify_nnunet_dataset

            verify_nnunet_dataset(out)  # outside the flow: nnU-Net's worker pool and Prefect's signal handlers
            print("nnU-Net dataset integrity check passed")
        return 0
    import json
    from pathlib import Path

    info = json.loads((Path(out) / "mixes.json").read_text(encoding="utf-8"))
    print(f"exported {len(info['datasets'])} ablation mixes of {a.dataset} + {a.synthetic or 'no synthetic set'} "
          f"-> {out} (nnU-Net raw folder; case lists in {Path(out) / 'mixes.csv'})")
    for p in info["plans"]:
        print(f"  {p['name']:<16} {info['datasets'][p['name']]}: {len(p['real_ids'])} real + "
              f"{len(p['synthetic_ids'])} synthetic training cases, {len(p['test_ids'])} test cases")
    if a.verify:
        from components.export import verify_nnunet_dataset

        for folder in info["datasets"].values():
            verify_nnunet_dataset(Path(out) / folder)
        print(f"nnU-Net dataset integrity checks of {len(info['datasets'])} datasets passed")
    first = next(iter(info["datasets"].values()))
    print(f"score predictions: python -m flows evaluate-segmentation --gt {Path(out) / first / 'labelsTs'} "
          f"--pred <predictions> --label-scheme {real.label_scheme.name} --out scores.csv")
    return 0


def _add_ablation(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ablation", help="train nnU-Net on real+synthetic mixes over ratios; score on held-out real cases; log to MLflow",
        description="For every ratio (and seed) build a mix of the real dataset's train split and synthetic cases "
        "(only those derived from train-split masks: checked), train nnU-Net through its Python API, predict the "
        "real test split and score it (Dice, HD95 mm, ASSD, lesion-wise). One MLflow parent run, one child run per "
        "configuration; a summary CSV and a Dice-vs-ratio plot. A failed configuration is recorded and the others go on.",
    )
    p.add_argument("--real", required=True, help="real (or phantom) dataset: its fixed test split is the only test set")
    p.add_argument("--synthetic", default=None, help="synthetic dataset (needed for ratios above 0)")
    p.add_argument("--name", default="ablation", help="ablation name (MLflow parent run, output folder)")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0],
                   help="synthetic cases per real training case, 0 included (the real-only baseline every effect "
                   "is paired against; default: 0 0.5 1 2)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="one configuration per ratio and seed (default: 0)")
    p.add_argument("--synthetic-only", action="store_true", help="also train on synthetic cases only (no real case)")
    p.add_argument("--real-fraction", type=float, default=1.0, help="fraction of real training cases to keep (the "
                   "data-scarce case; one subset for every seed; default: 1). The synthetic set's generator must have "
                   "learnt from that subset only: the pipeline's `ablation.real_fractions` trains one per subset")
    p.add_argument("--subset-seed", type=int, default=0, help="seed of the real subset (default: 0)")
    p.add_argument("--high-quality", action="store_true", help="take synthetic cases by descending quality score")
    p.add_argument("--schedule", default=None, choices=["tiny", "cpu-demo", "full"],
                   help="nnU-Net schedule: tiny (tests), cpu-demo (2d, 5 epochs x 50 iterations, CPU) or full "
                   "(nnU-Net's 3d_fullres default, GPU) (default: full where a CUDA GPU is visible, else cpu-demo)")
    p.add_argument("--preset", default="brats2023", choices=["brats2023", "brats2024"], help="lesion-wise preset")
    p.add_argument("--experiment", default="gliosynth-ablation", help="MLflow experiment name")
    p.add_argument("--task-runner", default="threads", choices=["threads", "dask"],
                   help="how configurations fan out: threads here, or Dask (prefect-dask) (default: threads)")
    p.add_argument("--max-parallel", type=int, default=1,
                   help="configurations at once (threads or local Dask workers; default 1: nnU-Net uses every core)")
    p.add_argument("--dask-address", default=None, help="scheduler address of an existing Dask cluster")
    workspace_arg(p)
    reads(p, datasets=("real", "synthetic"))
    p.set_defaults(handler=_run_ablation)


def _run_ablation(a: argparse.Namespace) -> int:
    from components.ablation import AblationConfig
    from flows.ablation import AblationParams, ablation_flow, check_ablation
    from flows.runners import RunnerConfig, make_task_runner

    cfg = AblationConfig(ratios=tuple(a.ratios), seeds=tuple(a.seeds), synthetic_only=a.synthetic_only,
                         real_fraction=a.real_fraction, subset_seed=a.subset_seed, high_quality=a.high_quality,
                         preset=a.preset, experiment=a.experiment, **({"schedule": a.schedule} if a.schedule else {}))
    runner_cfg = RunnerConfig(kind=a.task_runner, max_parallel=a.max_parallel, dask_address=a.dask_address)
    params = AblationParams(workspace=a.workspace, name=a.name, real=a.real, synthetic=a.synthetic, config=cfg)
    check_ablation(params)  # before Prefect starts: a grid the data cannot fill fails in one sentence
    runner = make_task_runner(runner_cfg)
    out = ablation_flow.with_options(task_runner=runner)(params)
    print_ablation_result(out)
    return 0 if out["n_ok"] > 0 else 1


def print_ablation_result(out: dict) -> None:
    """The effect table first (what the ablation answers), then where everything else is."""
    import pandas as pd

    table = pd.DataFrame(out["table"])
    cols = [c for c in ("config", "status", "ratio", "seed", "n_real", "n_synthetic", "dice_WT", "dice_TC",
                        "dice_ET") if c in table]
    print("configurations:")
    print(table[cols].to_string(index=False))
    print("\neffect of synthetic cases: paired difference to ratio 0 on the same test cases, mean over seeds, "
          "95 % bootstrap interval, Wilcoxon p:")
    print("\n".join(out["effect_lines"]))
    print(f"\neffect table: {out['effect_csv']}\nsummary: {out['summary_csv']}\nplot: {out['plot']}")
    if out.get("workspace"):
        from flows.cli_dashboard import dashboard_hint

        print("\n".join(dashboard_hint(out["workspace"], out["parent_run_id"])))
    else:
        print(f"MLflow parent run: {out['parent_run_id']} (make dashboard)")


def register(sub: argparse._SubParsersAction) -> None:
    for add in (_add_export, _add_ablation):
        add(sub)
