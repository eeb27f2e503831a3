"""Export, mixes and the ratio ablation: leak-free, seeded, real nnU-Net and real MLflow."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from components.ablation import AblationConfig, LeakError, MixPlan, check_no_leak, generator_record, plan_mixes
from components.export import export_brats, export_dataset_nnunet, verify_nnunet_dataset
from tests import builders as b


@pytest.fixture(scope="module")
def real_syn(tmp_path_factory):
    ws = tmp_path_factory.mktemp("abl") / "ws"
    real, syn = b.write_real_and_synthetic(ws)
    return ws, real, syn


def test_fixture_has_test_cases_with_synthetic_descendants(real_syn):
    _, real, syn = real_syn
    test_ids = set(real.ok_cases("test")["case_id"])
    assert test_ids and (syn.manifest["source_case"].isin(test_ids)).any()


def test_no_synthetic_case_from_a_test_mask_reaches_training(real_syn):
    ws, real, syn = real_syn
    test_ids = set(real.ok_cases("test")["case_id"])
    src = dict(zip(syn.manifest["case_id"], syn.manifest["source_case"], strict=True))
    gen = generator_record(ws, syn)
    plans = plan_mixes(real, syn, AblationConfig(ratios=(0, 1, 2), seeds=(0, 1), synthetic_only=True))
    for p in plans:
        assert not set(p.real_ids) & test_ids
        assert all(src[c] not in test_ids for c in p.synthetic_ids), p.name
        assert set(p.test_ids) == test_ids
        check_no_leak(p, real, syn, gen)
    # A hand-made plan that smuggles one test-derived case in is refused.
    leaky = next(c for c, s in src.items() if s in test_ids)
    p = plans[1]
    bad = MixPlan(**{**p.to_dict(), "synthetic_ids": (*p.synthetic_ids, leaky)})
    with pytest.raises(LeakError, match=leaky):
        check_no_leak(bad, real, syn, gen)


def test_mixes_are_seeded_and_nested_across_ratios(real_syn):
    _, real, syn = real_syn
    cfg = AblationConfig(ratios=(0, 0.5, 1), seeds=(3,))
    a, b2 = plan_mixes(real, syn, cfg), plan_mixes(real, syn, cfg)
    assert a == b2
    by_ratio = {p.ratio: set(p.synthetic_ids) for p in a}
    assert by_ratio[0.0] == set() and by_ratio[0.5] <= by_ratio[1.0]
    n_real = a[0].n_real
    assert len(by_ratio[1.0]) == n_real
    other = plan_mixes(real, syn, cfg.model_copy(update={"seeds": (4,)}))
    assert [p.synthetic_ids for p in other] != [p.synthetic_ids for p in a] or n_real < 2


def test_high_quality_takes_the_best_scores(real_syn):
    _, real, syn = real_syn
    plans = plan_mixes(real, syn, AblationConfig(ratios=(0, 1), high_quality=True))
    q = syn.manifest.set_index("case_id")["quality_score"]
    chosen = plans[1].synthetic_ids
    assert all(q[c] == q.max() for c in chosen)


def test_export_nnunet_passes_nnunet_integrity_check(real_syn, tmp_path):
    _, real, _ = real_syn
    folder = export_dataset_nnunet(real, tmp_path / "raw")
    verify_nnunet_dataset(folder)  # raises on any problem
    dj = json.loads((folder / "dataset.json").read_text())
    assert dj["labels"]["whole tumor"] == [1, 2, 3] and dj["regions_class_order"] == [2, 1, 3]
    n_train = len(real.ok_cases("train"))
    assert dj["numTraining"] == n_train == len(list((folder / "labelsTr").iterdir()))
    cid = real.ok_cases("train")["case_id"].iloc[0]
    src = nib.load(str(real.path(cid, "t2f")))
    out = nib.load(str(folder / "imagesTr" / f"{cid}_0003.nii.gz"))
    np.testing.assert_array_equal(out.affine, src.affine)


def test_export_brats_layout_with_provenance(real_syn, tmp_path):
    _, _, syn = real_syn
    out = export_brats(syn, tmp_path / "release")
    cid = syn.ok_cases()["case_id"].iloc[0]
    assert sorted(p.name for p in (out / cid).iterdir()) == sorted(
        f"{cid}-{k}.nii.gz" for k in ("t1n", "t1c", "t2w", "t2f", "seg"))
    prov = (out / "PROVENANCE.md").read_text()
    assert "not real patient data" in prov and "synthetic" in prov
    assert len(pd.read_csv(out / "manifest.csv")) == len(syn.manifest)


@pytest.mark.usefixtures("prefect_harness")
def test_ablation_logs_parent_and_children_to_mlflow(real_syn):
    import mlflow

    from components.tracking import tracking_uri
    from flows.ablation import AblationParams, ablation_flow
    from flows.runners import RunnerConfig, make_task_runner

    ws, real, syn = real_syn
    # Configurations fan out through prefect-dask's DaskTaskRunner on a LocalCluster.
    runner = make_task_runner(RunnerConfig(kind="dask", max_parallel=1))
    out = ablation_flow.with_options(task_runner=runner)(AblationParams(
        workspace=str(ws), name="t", real="real", synthetic="syn",
        config=AblationConfig(ratios=(0, 1), schedule="tiny", bootstrap_resamples=200),
        synthesis_metrics={"fid2d_t1n": 1.5, "fid2d_t1n_floor": 1.2}))
    assert out["n_ok"] == 2 and out["n_failed"] == 0
    client = mlflow.MlflowClient(tracking_uri=tracking_uri(ws))
    exp = client.get_experiment_by_name("gliosynth-ablation")
    parent = client.get_run(out["parent_run_id"])
    # The synthetic set's scores describe the whole ablation: logged once, on the parent, with their floor.
    assert parent.data.metrics["fid2d_t1n"] == 1.5 and parent.data.metrics["fid2d_t1n_floor"] == 1.2
    assert "effect_r1_delta_dice_WT" in parent.data.metrics
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{out['parent_run_id']}'")
    assert len(children) == 2
    # The parent run spans the ablation (open before the first configuration, ended after the last)
    # in a model-training experiment, and its description leads with the effect table.
    assert out["parent_status"] == parent.info.status == "FINISHED"
    assert parent.info.start_time <= min(r.info.start_time for r in children)
    assert parent.info.end_time >= max(r.info.end_time for r in children)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "### Effect of synthetic cases" in parent.data.tags["mlflow.note.content"]
    plans = {p.name: p for p in plan_mixes(real, syn, AblationConfig(ratios=(0, 1), schedule="tiny"))}
    for run in children:
        m = run.data.metrics
        for region in ("WT", "TC", "ET"):
            assert 0.0 <= m[f"dice_{region}"] <= 1.0 and m[f"hd95_{region}_mm"] >= 0.0
        assert "fid2d_t1n" not in m
        # GliomaGen's extra scores beside Dice and HD95, and the scoring preset, on every configuration
        assert 0.0 <= m["accuracy"] <= 1.0 and {"f1_NCR", "f1_ED", "f1_ET"} <= set(m)
        assert run.data.params["preset"] == "brats2023"
        assert (ws / "ablations" / "t" / run.data.params["config"] / "extra_scores.csv").is_file()
        assert {"n_real", "n_synthetic", "ratio", "seed", "real_manifest_sha256", "seed_reproducible"} <= set(
            run.data.params)
        plan = plans[run.data.params["config"]]
        assert int(run.data.params["n_real"]) == plan.n_real and int(run.data.params["n_synthetic"]) == plan.n_synthetic
    # One nnU-Net dataset for the whole ablation; no case in it is from (or derived from) the test split
    test_ids = set(real.ok_cases("test")["case_id"])
    folders = list((ws / "nnunet" / "raw").glob("Dataset*_t"))
    assert len(folders) == 1
    c = pd.read_csv(folders[0] / "cases.csv").fillna("")
    assert not (set(c["case_id"]) | set(c["source_case"])) & test_ids
    effect = pd.read_csv(ws / "ablations" / "t" / "effect.csv")
    assert list(effect["ratio"]) == [0.0, 1.0] and {"delta_dice_WT_ci_low", "delta_dice_WT_p"} <= set(effect.columns)
    assert (ws / "ablations" / "t" / "dice_vs_ratio.png").read_bytes()[:4] == b"\x89PNG"
    # The REST API of a running `mlflow server` (127.0.0.1) over the same store lists the children.
    listed = _runs_from_mlflow_server(ws, exp.experiment_id)
    assert {r["info"]["run_id"] for r in listed} >= {r.info.run_id for r in children}


def _runs_from_mlflow_server(ws, experiment_id):
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{ws / 'mlflow' / 'mlflow.db'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        body = json.dumps({"experiment_ids": [experiment_id], "max_results": 100}).encode()
        for _ in range(240):
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/search", data=body,
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=5) as r:
                    return json.loads(r.read())["runs"]
            except OSError:
                time.sleep(0.5)
        raise AssertionError("mlflow server did not answer within 2 minutes")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
