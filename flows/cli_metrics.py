"""Verbs of the metrics stage: evaluate-segmentation, evaluate-synthesis."""

from __future__ import annotations

import argparse
import math

from flows.cli_common import reads, workspace_arg


def _add_evaluate_segmentation(sub: argparse._SubParsersAction) -> None:
    from data_catalog import label_scheme_names

    p = sub.add_parser(
        "evaluate-segmentation", help="score predicted segmentations against ground truth (Dice, HD95, ASSD, BraTS lesion-wise)",
        description="Score every prediction in PRED against its ground truth, per case and region of the label scheme "
        "(WT, TC, ET; plus NETC, SNFH, RC for brats2024_post): Dice, HD95 and ASSD in mm (voxel spacing applied; "
        "DeepMind surface elements as in the official BraTS scoring; both empty -> Dice 1, HD95 0; one empty -> "
        "Dice 0, HD95 374) and BraTS lesion-wise Dice and HD95. Files match by case id: <case_id>.nii.gz (nnU-Net) "
        "or <case_id>-seg.nii.gz. Unmatched, unreadable or mis-shaped files are reported, never fatal. Writes one "
        "CSV row per case and region, a JSON beside it (config, problems, summary), and prints mean and std per region.",
    )
    p.add_argument("--gt", required=True, metavar="DIR_OR_DATASET",
                   help="ground truth: a folder of seg files (searched recursively) or a dataset name in the workspace "
                        "catalog (then only its ok cases with a seg are used)")
    p.add_argument("--pred", required=True, metavar="DIR", help="folder of predicted segmentations")
    p.add_argument("--label-scheme", default=None, choices=label_scheme_names(),
                   help="label scheme of ground truth and predictions; regions come from it (default: the dataset's "
                        "scheme when --gt is a dataset; required for a folder)")
    p.add_argument("--preset", default="brats2023", choices=["brats2023", "brats2024"],
                   help="lesion-wise constants: brats2023 (dilation 3, lesions <= 50 mm^3 dropped, penalty 374) or "
                        "brats2024 (penalty 337, thresholds ET 10 / others 20 mm^3, small predicted lesions removed "
                        "first) (default: brats2023)")
    p.add_argument("--out", required=True, metavar="FILE.csv", help="per-case CSV to write (a .json goes beside it)")
    p.add_argument("--workers", type=int, default=2, help="cases scored in parallel (default: 2)")
    workspace_arg(p)
    reads(p, datasets_or_folders=("gt",), folders=("pred",), workspace=False)
    p.set_defaults(handler=_run_evaluate_segmentation)


def _run_evaluate_segmentation(a: argparse.Namespace) -> int:
    from pathlib import Path

    from components.metrics.segmentation import SegmentationError, SegmentationEvalConfig
    from flows.metrics import SegmentationEvalParams, evaluate_segmentation_flow

    scheme = a.label_scheme
    if scheme is None:
        if Path(a.gt).is_dir():
            raise SegmentationError(f"--gt {a.gt} is a folder: pass --label-scheme (e.g. brats2023)")
        from data_catalog import open_dataset

        scheme = open_dataset(a.workspace, a.gt).info["label_scheme"]
    cfg = SegmentationEvalConfig.from_preset(scheme, a.preset, workers=a.workers)
    out = evaluate_segmentation_flow(
        SegmentationEvalParams(gt=a.gt, pred=a.pred, out=a.out, workspace=a.workspace, config=cfg)
    )
    for pr in out["problems"]:
        print(f"  skipped {Path(pr['file']).name}: {pr['reason']}")
    print(f"{out['n_cases']} cases scored ({a.preset} lesion-wise, scheme {scheme}); per region mean (std):")
    header = f"  {'region':<6} {'n':>4} {'dice':>15} {'hd95 mm':>17} {'assd mm':>17} {'lw_dice':>15} {'lw_hd95':>17}"
    print(header)
    for r in out["summary"]:
        cells = " ".join(
            f"{_fmt(r[f'{c}_mean'], w)} ({_fmt(r[f'{c}_std'], w)})" for c, w in
            (("dice", 3), ("hd95", 2), ("assd", 2), ("lw_dice", 3), ("lw_hd95", 2))
        )
        print(f"  {r['region']:<6} {r['n']:>4} {cells}")
    print(f"per-case scores: {out['csv']}  (config, problems, means: {out['json']})")
    return 0 if out["n_cases"] > 0 else 1


def _fmt(x: float, digits: int) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _add_evaluate_synthesis(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate-synthesis", help="score a synthetic dataset against a real one (FID/KID 2.5-D, FD-rand3D, MS-SSIM, PSNR/SSIM)",
        description="Per modality: FID and KID on brain slices of the three planes (standard FID Inception-v3, "
        "percentile-normalised, slices capped and subsampled with the seed), a Frechet distance on a fixed-seed random "
        "3-D network (internal score), MS-SSIM 3-D fidelity (synthetic vs the real case whose mask it used, when the "
        "masks are identical) and diversity (random synthetic pairs; same mask with different seeds) beside the "
        "real-vs-real value, and PSNR/SSIM inside the brain for paired cases. The real side is the real dataset's "
        "test split by default (the held-out cases). FID, KID and FD depend on the sample size: each comes with a "
        "real-vs-real floor (<metric>_floor: real cases outside the split against the same real cases, at the "
        "synthetic set's exact N of slices or volumes), NaN when the split leaves too few real cases outside it. "
        "Every value is written with its extractor and sample counts (JSON + CSV).",
    )
    p.add_argument("--real", required=True, metavar="NAME", help="real (or phantom) dataset name in the workspace catalog")
    p.add_argument("--synthetic", required=True, metavar="NAME", help="synthetic dataset name in the workspace catalog")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="report path, .json or .csv (both are written) (default: <workspace>/metrics/synthesis_<synthetic>_vs_<real>.json)")
    p.add_argument("--modalities", default="t1n,t1c,t2w,t2f", help="comma-separated modalities to score (default: all four)")
    p.add_argument("--max-slices", type=int, default=36,
                   help="2-D slices per modality and dataset for FID/KID, a third per plane; about 0.1 s each on "
                        "2 CPU cores, raise it on a GPU (default: 36)")
    p.add_argument("--max-cases", type=int, default=None, help="cap on cases per dataset, sampled with the seed (default: all)")
    p.add_argument("--real-split", default="test", choices=["test", "train", "all"],
                   help="split of the real dataset to score against; the floors use the real cases outside it "
                        "(default: test, the held-out cases)")
    p.add_argument("--msssim-pairs", type=int, default=8, help="random pairs per MS-SSIM diversity / real-real estimate (default: 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of all sampling (slices, pairs, KID subsets) (default: 0)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads while scoring; 1 is about twice as fast when other jobs keep the cores busy "
                        "(default: torch's setting)")
    workspace_arg(p)
    reads(p, datasets=("real", "synthetic"))
    p.set_defaults(handler=_run_evaluate_synthesis)


def _run_evaluate_synthesis(a: argparse.Namespace) -> int:
    from components.metrics.synthesis import SynthesisEvalConfig
    from flows.metrics import SynthesisEvalParams, evaluate_synthesis_flow

    mods = tuple(m.strip() for m in a.modalities.split(",") if m.strip())
    cfg = SynthesisEvalConfig(modalities=mods, max_slices=a.max_slices, max_cases=a.max_cases, real_split=a.real_split,
                              msssim_pairs=a.msssim_pairs, seed=a.seed, device=a.device, threads=a.threads)
    out = evaluate_synthesis_flow(
        SynthesisEvalParams(real=a.real, synthetic=a.synthetic, out=a.out, workspace=a.workspace, config=cfg)
    )
    print(f"{a.synthetic} vs {a.real} (split {out['info']['real_split']}, {out['info']['n_real_cases']} cases): "
          "metric, value (std) [n_real / n_synthetic] extractor")
    for r in out["rows"]:
        std = "" if r["std"] is None or math.isnan(r["std"]) else f" ({r['std']:.4g})"
        value = "nan" if math.isnan(r["value"]) else f"{r['value']:.4g}"
        n_other = f"{r.get('n_slices') or r.get('n_volumes')} real ref" if r["metric"].endswith("_floor") else r["n_synthetic"]
        print(f"  {r['metric']:<32} {value}{std} [{r['n_real']} / {n_other}] {r['extractor']}")
    print(f"report: {out['json']} and {out['csv']} ({out['info']['seconds']:.1f} s)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    for add in (_add_evaluate_segmentation, _add_evaluate_synthesis):
        add(sub)
