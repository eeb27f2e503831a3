"""The whole DAG on a tiny config: every stage runs, and an unchanged re-run is all cache hits."""

from __future__ import annotations

import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from components.tracking import tracking_uri

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "data": {"name": "ph", "phantom": {"cases": 6, "spacing": 8.0, "seed": 0, "test_fraction": 0.34}},
    "masks": {"name": "m", "config": {"per_case": 1, "seed": 0, "splits": ["train"]}},
    "synthesizer": {"name": "s", "profile": "tiny"},
    "synthesis": {"name": "syn", "config": {"sampler": "ddim", "steps": 5, "seed": 0, "montage_cases": 1}},
    "evaluation": {"config": {"max_slices": 6, "msssim_pairs": 2, "kid_subset_size": 4, "kid_subsets": 5}},
    "ablation": {"name": "abl", "config": {"ratios": [0.0, 1.0], "seeds": [0], "schedule": "tiny"}},
    "runner": {"kind": "threads", "max_parallel": 1},
}


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.usefixtures("prefect_harness")
def test_pipeline_end_to_end_then_cached(tmp_path):
    from flows.pipeline import pipeline_flow

    profile = yaml.safe_load((ROOT / "configs" / "synthesizer" / "tiny.yaml").read_text())
    profile["data"]["shape"] = [24, 24, 24]  # the 8 mm phantom's heads need 18 x 22 x 19 voxels; tiny has 16^3
    (tmp_path / "synth.yaml").write_text(yaml.safe_dump(profile))
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({"workspace": str(tmp_path / "ws"), **TINY,
                                   "synthesizer": {**TINY["synthesizer"], "profile": str(tmp_path / "synth.yaml")}}))
    first = pipeline_flow(config_path=str(cfg))
    assert [r["status"] for r in first["ablation_table"]] == ["ok", "ok"]
    client = mlflow.MlflowClient(tracking_uri=tracking_uri(tmp_path / "ws"))
    exp = client.get_experiment_by_name("gliosynth-ablation")
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{first['parent_run_id']}'")
    assert len(children) == 2  # the synthetic set's scores are the parent's, beside the effects
    assert "fid2d_t1c" in client.get_run(first["parent_run_id"]).data.metrics
    t0 = time.perf_counter()
    second = pipeline_flow(config_path=str(cfg))
    # identical results, NaN (e.g. a metric undefined for an empty region) in the same places
    pd.testing.assert_frame_equal(pd.DataFrame(second["ablation_table"]), pd.DataFrame(first["ablation_table"]))
    assert second["parent_run_id"] == first["parent_run_id"]
    print(f"cached re-run: {time.perf_counter() - t0:.1f} s")
