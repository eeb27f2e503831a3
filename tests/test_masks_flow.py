"""The augment-masks verb end to end through Prefect's test harness."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from components.io import sha256_file
from components.masks import CHECK_REASONS, CheckConfig, feature_columns
from data_catalog import open_dataset
from flows.__main__ import main
from tests import builders as b
from tests.test_masks_checks import independent_violations

REQUIRED = ["case_id", "status", "reason", "split", "seg", "head", "sha256_seg", "sha256_head", "shape", "spacing",
            "labels", "source_case", "seed", "params"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, prefect_harness):
    ws = tmp_path_factory.mktemp("masks") / "ws"
    b.write_mask_source(ws, "src")
    cfg = ws.parent / "masks.yaml"  # YAML, like every other config
    cfg.write_text("montage_cases: 2\nrelocate:\n  p: 0.7  # relocation more often than the default\n")
    rc = main(["augment-masks", "--workspace", str(ws), "--source", "src", "--name", "m", "--per-case", "3",
               "--seed", "5", "--workers", "1", "--config", str(cfg)])
    return ws, rc


def test_verb_writes_a_masks_dataset_with_the_contract_columns(run, capsys):
    ws, rc = run
    assert rc == 0
    ds = open_dataset(ws, "m")
    assert ds.info["kind"] == "masks" and ds.info["label_scheme"] == "brats2023" and ds.info["modalities"] == []
    assert ds.info["parents"][0]["name"] == "src"
    m = ds.manifest
    missing = [c for c in [*REQUIRED, *feature_columns(["WT", "TC", "ET"])] if c not in m.columns]
    assert not missing
    assert len(m) == 12 and (m["status"] == "ok").sum() >= 10
    ok = m[m["status"] == "ok"]
    for _, r in ok.iterrows():
        assert sha256_file(ds.root / r["seg"]) == r["sha256_seg"] and sha256_file(ds.root / r["head"]) == r["sha256_head"]
        assert r["seg"].endswith(f"{r['case_id']}-seg.nii.gz") and r["head"].endswith(f"{r['case_id']}-head.nii.gz")
    summary = ds.info["augmentation"]
    assert set(summary["pass_rate"]) == set(CHECK_REASONS) and summary["candidates"] >= len(ok)
    assert summary["acceptance_rate"] == pytest.approx(summary["n_ok"] / summary["candidates"])
    for png in ("features.png", "montage.png"):
        assert (ds.root / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_splits_are_inherited_and_never_mixed(run):
    ws, _ = run
    src = open_dataset(ws, "src").manifest.set_index("case_id")["split"]
    m = open_dataset(ws, "m").ok_cases()
    assert (m["split"] == m["source_case"].map(src)).all()
    assert (m["host_case"].map(src) == m["split"]).all()  # relocations borrow heads of the same split only
    assert set(m["split"]) == {"train", "test"}


def test_kept_masks_pass_the_independent_checker_and_replay(run):
    from components.masks import apply_mask_params

    ws, _ = run
    ds = open_dataset(ws, "m")
    cfg = CheckConfig(**ds.info["config"]["checks"])
    real = pd.read_parquet(ds.root / "source_features.parquet").set_index("case_id")
    load = lambda rel: np.asanyarray(nib.load(str(ds.root / rel)).dataobj)  # noqa: E731
    for _, r in ds.ok_cases().iterrows():
        seg, head = load(r["seg"]), load(r["head"]).astype(bool)
        src_seg, src_head = load(real.loc[r["source_case"], "seg"]), load(real.loc[r["source_case"], "head"]).astype(bool)
        host_head = load(real.loc[r["host_case"], "head"]).astype(bool)
        assert independent_violations(seg, head, src_seg, host_head, b.MASK_SPACING, cfg) == set(), r["case_id"]
        s2, h2 = apply_mask_params(src_seg, src_head, json.loads(r["params"]), host_head)
        assert s2.tobytes() == seg.astype(np.uint8).tobytes() and h2.tobytes() == head.tobytes()


def test_source_features_cover_the_real_cases(run):
    ws, _ = run
    ds = open_dataset(ws, "m")
    real = pd.read_parquet(ds.root / "source_features.parquet")
    assert len(real) == 4 and real["volume_mm3_wt"].gt(0).all()
    for _, r in real.iterrows():
        assert (ds.root / r["head"]).is_file() and (ds.root / r["seg"]).is_file()


def test_same_seed_same_bytes_other_seed_other_masks(run):
    """Rebuilt from the config stored in dataset.json, the same seed gives the same files byte for byte."""
    from components.masks import MaskAugmentConfig, augment_masks

    ws, _ = run
    cfg = MaskAugmentConfig(**open_dataset(ws, "m").info["config"])
    assert cfg.seed == 5 and cfg.relocate.p == 0.7
    augment_masks(ws, "src", "m2", cfg, progress=False)
    augment_masks(ws, "src", "m3", cfg.model_copy(update={"seed": 6, "per_case": 1}), progress=False)
    key = ["case_id", "status", "sha256_seg", "sha256_head", "params"]
    a, b2, c = (open_dataset(ws, n).manifest[key] for n in ("m", "m2", "m3"))
    pd.testing.assert_frame_equal(a, b2)
    assert not set(a["sha256_seg"]) & set(c["sha256_seg"])


def test_rerun_with_unchanged_inputs_is_a_cache_hit(run):
    from components.masks import MaskAugmentConfig
    from flows.masks import AugmentMasksParams, augment_masks_flow

    ws, _ = run
    ds = open_dataset(ws, "m")
    params = AugmentMasksParams(source="src", name="m", workspace=str(ws), config=MaskAugmentConfig(**ds.info["config"]))
    again = augment_masks_flow(params)
    # a cache hit returns the stored summary (same timing inside it) and rewrites nothing
    assert again["seconds"] == ds.info["augmentation"]["seconds"]
    assert open_dataset(ws, "m").manifest_digest == ds.manifest_digest
