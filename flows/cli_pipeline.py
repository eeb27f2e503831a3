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


def floor_lines(csv_path: str) -> list[str]:
    """FID and KID per modality beside the real-vs-real floor at the same number of slices."""
    import math

    import pandas as pd

    t = pd.read_csv(csv_path).set_index("metric")
    lines = []
    for name in (m for m in t.index if m.startswith(("fid2d_", "kid_")) and not m.endswith("_floor")):
        v = float(t.loc[name, "value"])
        floor = float(t.loc[f"{name}_floor", "value"]) if f"{name}_floor" in t.index else math.nan
        n = t.loc[name, "n_slices"] if "n_slices" in t.columns else math.nan
        n_txt = f", N={int(n)} slices" if isinstance(n, (int, float)) and math.isfinite(n) else ""
        lines.append(f"{name} {v:.4g} (real-vs-real floor {floor:.4g}{n_txt})")
    return lines


def _run_pipeline(a: argparse.Namespace) -> int:
    import pandas as pd

    from flows.pipeline import pipeline_flow

    out = pipeline_flow(config_path=a.config, workspace=a.workspace)
    for arm in out["arms"]:
        table = pd.DataFrame(arm["table"])
        cols = [c for c in ("config", "status", "ratio", "seed", "n_real", "n_synthetic", "dice_WT", "dice_TC",
                            "dice_ET", "hd95_WT_mm") if c in table]
        print(f"\nablation {arm['ablation']} ({arm['fraction']:.0%} of the real training cases; held-out real test "
              "cases; on the phantom a pipeline check, not a BraTS result):")
        print(table[cols].to_string(index=False))
        print("\neffect of synthetic cases: paired difference to ratio 0 on the same test cases, mean over seeds, "
              "95 % bootstrap interval, Wilcoxon p:")
        print("\n".join(arm["effect_lines"]))
    print("\nsynthetic sets against the real test split (each score beside its real-vs-real floor at the same N):")
    for arm in out["arms"]:
        for line in floor_lines(arm["synthesis_scores"]):
            print(f"  {arm['ablation']}: {line}")
    print("\nwhere to look:")
    for m in out["montages"]:
        print(f"  picture: {m}")
    print(f"  synthesis scores: {out['synthesis_scores']}")
    for arm in out["arms"]:
        print(f"  ablation {arm['ablation']}: {arm['effect_csv']} (effects), {arm['summary_csv']} (configurations)")
    from flows.cli_dashboard import dashboard_hint

    for arm in out["arms"]:
        print("\n".join(f"  {line}" for line in dashboard_hint(out["workspace"], arm["parent_run_id"])))
    return 0 if any(r.get("status") == "ok" for r in out["ablation_table"]) else 1


def register(sub: argparse._SubParsersAction) -> None:
    _add_pipeline(sub)
