"""Verb: pipeline (the whole DAG from one config file)."""

from __future__ import annotations

import argparse


def _add_pipeline(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help="run the whole DAG from one config file (configs/demo.yaml, configs/brats-gpu.yaml)",
                       description="phantom or ingestion -> mask augmentation -> synthesizer training -> synthesis -> "
                       "synthesis scores -> export -> nnU-Net ratio ablation -> MLflow. Unchanged stages are cache hits.")
    p.add_argument("--config", default="configs/demo.yaml", help="pipeline config YAML (default: configs/demo.yaml)")
    p.add_argument("--workspace", default=None, help="override the config's workspace folder")
    p.set_defaults(handler=_run_pipeline)


def _run_pipeline(a: argparse.Namespace) -> int:
    import pandas as pd

    from flows.pipeline import pipeline_flow

    out = pipeline_flow(config_path=a.config, workspace=a.workspace)
    table = pd.DataFrame(out["ablation_table"])
    cols = [c for c in ("config", "status", "ratio", "n_real", "n_synthetic", "dice_WT", "dice_TC", "dice_ET",
                        "hd95_WT_mm", "hd95_TC_mm", "hd95_ET_mm", "fid2d_t1c") if c in table]
    print("\nablation (held-out real test cases; on the phantom this is a pipeline check, not a BraTS result):")
    print(table[cols].to_string(index=False))
    print("\nwhere to look:")
    for m in out["montages"]:
        print(f"  picture: {m}")
    print(f"  synthesis scores: {out['synthesis_scores']}")
    print(f"  ablation summary: {out['ablation_summary']}")
    print(f"  MLflow comparison: make dashboard WS={out['workspace']}  (then http://127.0.0.1:5000, "
          f"parent run {out['parent_run_id']})")
    return 0 if any(r.get("status") == "ok" for r in out["ablation_table"]) else 1


def register(sub: argparse._SubParsersAction) -> None:
    _add_pipeline(sub)
