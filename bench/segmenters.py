"""SegResNet (brats_mri_segmentation recipe) against nnU-Net: training and inference time at the same
schedule length, same cases, in one run.

    .venv/bin/python bench/segmenters.py [--iterations 250] [--schedule cpu-demo] [--workspace DIR]

Data: the 4 mm phantom of the demo (10 cases: 7 train, 3 test; 60 x 60 x 39 voxels), made in
``--workspace`` (a fresh temporary folder by default, so nothing is a cache hit). Both segmenters
train on the 7 real training cases for ``--iterations`` optimiser steps with seed 0 and predict the
3 test cases:
- nnU-Net: the ``--schedule`` (cpu-demo: its 2d configuration, batch 12 of 48 x 40 patches) with
  ``epochs x iterations_per_epoch`` set to ``--iterations``; its plan + preprocess step is timed
  apart; each step runs in its own process, as in the ablation.
- SegResNet: the ``--schedule`` (cpu-demo: batch 2 of 32^3 crops) with the same epochs and
  iterations per epoch, in this process.
Not the same work per iteration (2-D patches against 3-D crops, different batch sizes): the table
says so, and gives Dice on the test cases so the time buys something comparable. Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.ablation import (  # noqa: E402
    AblationConfig,
    held_out_cases,
    plan_mixes,
    prepare_nnunet,
    segmentation_metric_means,
)
from components.export import cases_from_dataset  # noqa: E402
from components.metrics.segmentation import SegmentationEvalConfig, evaluate_pairs  # noqa: E402
from components.phantom import PhantomConfig, make_phantom  # noqa: E402
from components.segmentation import nnunet, segresnet  # noqa: E402
from data_catalog import MODALITIES, open_dataset  # noqa: E402


def _dice(tests, preds, scheme: str) -> dict[str, float]:
    report = evaluate_pairs([(c.case_id, preds[c.case_id], c.files["seg"]) for c in tests],
                            SegmentationEvalConfig.from_preset(scheme), progress=False)
    m = segmentation_metric_means(report.table)
    return {r: round(m[f"dice_{r}"], 3) for r in ("WT", "TC", "ET") if f"dice_{r}" in m}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=250, help="optimiser steps of each segmenter (default 250)")
    ap.add_argument("--schedule", default="cpu-demo", choices=sorted(segresnet.SCHEDULES))
    ap.add_argument("--workspace", default=None, help="default: a fresh temporary folder")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    ws = Path(args.workspace or tempfile.mkdtemp(prefix="bench-segmenters-"))
    if not (ws / "datasets" / "phantom" / "dataset.json").is_file():
        make_phantom(ws, "phantom", PhantomConfig(cases=10, spacing=4.0, seed=0, test_fraction=0.3), progress=False)
    real = open_dataset(ws, "phantom")
    scheme = real.label_scheme.name
    cfg = AblationConfig(ratios=(0.0,), seeds=(args.seed,), schedule=args.schedule)
    plan = plan_mixes(real, None, cfg, ("nnunet",))[0]
    tests = held_out_cases(plan, real)
    test_files = {c.case_id: [c.files[m] for m in MODALITIES] for c in tests}

    # the same length for both: nnU-Net's iterations per epoch, epochs to fill --iterations
    nn_base = nnunet.SCHEDULES[args.schedule]
    per_epoch = min(nn_base.iterations_per_epoch, args.iterations)
    epochs = max(1, args.iterations // per_epoch)
    nn_sched = nn_base.model_copy(update={"epochs": epochs, "iterations_per_epoch": per_epoch})
    sr_sched = segresnet.SCHEDULES[args.schedule].model_copy(
        update={"epochs": epochs, "iterations_per_epoch": per_epoch, "checkpoint_every": epochs * per_epoch})
    n_it = epochs * per_epoch
    rows = []

    t0 = time.perf_counter()
    nn_data = prepare_nnunet(ws, "bench", [plan], real, None, nn_sched)
    t_plan = time.perf_counter() - t0
    t0 = time.perf_counter()
    fold = nnunet.train(nn_data.root, nn_data.dataset_id, nn_sched, fold=nn_data.folds[plan.name], seed=args.seed)
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    preds = nnunet.predict(fold.model_dir, test_files, ws / "bench" / "nnunet-pred", nn_sched, fold=fold.fold)
    t_pred = time.perf_counter() - t0
    rows.append({"segmenter": "nnU-Net", "work": f"{nn_sched.configuration}, nnU-Net's planned batch and patch",
                 "iterations": n_it, "prepare_s": round(t_plan, 1), "train_s": round(t_train, 1),
                 "s_per_iteration": round(t_train / n_it, 3), "predict_s": round(t_pred, 1),
                 "predict_s_per_case": round(t_pred / len(tests), 2), "dice": _dice(tests, preds, scheme)})

    model_dir = ws / "bench" / "segresnet"
    t0 = time.perf_counter()
    # exactly the plan's training cases, as nnU-Net's fold; a clean folder, so the time is a training's, not a cache hit
    cases = {c.case_id: {k: str(v) for k, v in c.files.items()} for c in cases_from_dataset(real, ("train",))
             if c.case_id in plan.train_ids}
    shutil.rmtree(model_dir, ignore_errors=True)
    trained = segresnet.train(model_dir, cases, scheme, sr_sched, seed=args.seed, label="bench")
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    preds = segresnet.predict(model_dir, test_files, ws / "bench" / "segresnet-pred", scheme, sr_sched)
    t_pred = time.perf_counter() - t0
    rows.append({"segmenter": "SegResNet", "work": f"3-D, batch {sr_sched.batch_size} of "
                 f"{'x'.join(map(str, sr_sched.crop))} crops", "iterations": trained.iterations, "prepare_s": 0.0,
                 "train_s": round(t_train, 1), "s_per_iteration": round(t_train / trained.iterations, 3),
                 "predict_s": round(t_pred, 1), "predict_s_per_case": round(t_pred / len(tests), 2),
                 "dice": _dice(tests, preds, scheme)})

    peak = {"self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "children_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}
    print(f"\n{len(cases)} training cases, {len(tests)} test cases of the 4 mm phantom; schedule {args.schedule}, "
          f"{n_it} iterations each, seed {args.seed}")
    print(f"{'segmenter':<10} {'prepare s':>9} {'train s':>8} {'s/it':>6} {'predict s/case':>14}  "
          f"{'Dice WT/TC/ET':<20} work per iteration")
    for r in rows:
        d = r["dice"]
        print(f"{r['segmenter']:<10} {r['prepare_s']:>9.1f} {r['train_s']:>8.1f} {r['s_per_iteration']:>6.3f} "
              f"{r['predict_s_per_case']:>14.2f}  {d.get('WT', 0):.3f}/{d.get('TC', 0):.3f}/{d.get('ET', 0):.3f}"
              f"{'':<5} {r['work']}")
    print(f"peak RSS: this process (SegResNet) {peak['self_mb']:.0f} MB, nnU-Net's step processes "
          f"{peak['children_mb']:.0f} MB")
    out = {"schedule": args.schedule, "iterations": n_it, "rows": rows, "peak_rss_mb": peak, "workspace": str(ws)}
    print(json.dumps(out))
    return out


if __name__ == "__main__":  # nnU-Net's spawn pools re-import the main module: keep this guard
    main()
