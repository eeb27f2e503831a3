"""components/export.py on a tiny catalogued dataset: the BraTS 2023-layout release and the nnU-Net raw dataset.

(`export --mix` is covered by tests/test_bring_your_own.py.)
"""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from components.export import (
    ExportCase,
    ExportError,
    cases_from_dataset,
    export_brats,
    export_dataset_nnunet,
    export_nnunet,
    next_dataset_id,
    nnunet_dataset_json,
    reserve_dataset_ids,
)
from data_catalog import MODALITIES, load_label_scheme, open_dataset, register_dataset
from tests import builders as b

QUARANTINED = "BraTS-TST-00099-000"
KEYS = (*MODALITIES, "seg")


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    """Five ok cases (BraTS-TST-00002-000 in the test split, the others in train) and one quarantined case
    whose files exist."""
    ws = tmp_path_factory.mktemp("export") / "ws"
    root = b.write_catalog_dataset(ws, "tiny", n_cases=5, kind="phantom", test_every=3)
    m = open_dataset(ws, "tiny").manifest
    # A quarantined case with files on disk: the export must skip it by its status, not by a missing file.
    first = m.iloc[0].to_dict()
    row = {**first, "case_id": QUARANTINED, "status": "quarantined", "reason": "its t2f header claims too much."}
    for k in KEYS:
        dest = root / "cases" / QUARANTINED / f"{QUARANTINED}-{k}.nii.gz"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / first[k], dest)
        row[k] = f"cases/{QUARANTINED}/{dest.name}"
    register_dataset(ws, "tiny", kind="phantom", label_scheme="brats2023",
                     manifest=pd.concat([m, pd.DataFrame([row])], ignore_index=True))
    d = open_dataset(ws, "tiny")
    assert d.info["n_quarantined"] == 1 and d.info["n_ok"] == 5
    assert set(d.ok_cases("test")["case_id"]) == {"BraTS-TST-00002-000"}
    return d


def same_image(a, b_) -> None:
    ia, ib = nib.load(str(a)), nib.load(str(b_))
    assert ia.get_data_dtype() == ib.get_data_dtype()
    np.testing.assert_array_equal(np.asanyarray(ia.dataobj), np.asanyarray(ib.dataobj))
    np.testing.assert_array_equal(ia.affine, ib.affine)


# --------------------------------------------------------------------------- BraTS 2023 layout
def test_brats_release_has_the_2023_layout_with_the_catalogs_exact_files(ds, tmp_path):
    out = export_brats(ds, tmp_path / "release")
    ok = list(ds.ok_cases()["case_id"])
    assert sorted(p.name for p in out.iterdir()) == sorted([*ok, "PROVENANCE.md", "dataset.json", "manifest.csv"])
    for cid in ok:
        assert sorted(p.name for p in (out / cid).iterdir()) == sorted(f"{cid}-{k}.nii.gz" for k in KEYS)
        for k in KEYS:
            exported = out / cid / f"{cid}-{k}.nii.gz"
            assert exported.read_bytes() == ds.path(cid, k).read_bytes(), (cid, k)
    # the catalog's anisotropic grid, unchanged
    img = nib.load(str(out / ok[0] / f"{ok[0]}-t2f.nii.gz"))
    np.testing.assert_array_equal(img.affine, b.affine(b.TISSUE_SPACING))
    assert img.header.get_zooms()[:3] == pytest.approx(b.TISSUE_SPACING)
    assert not [p for p in tmp_path.iterdir() if p.name != "release"]  # no staging folder left beside it


def test_brats_release_leaves_quarantined_cases_out_but_lists_them(ds, tmp_path):
    out = export_brats(ds, tmp_path / "release")
    assert not (out / QUARANTINED).exists()
    assert not list(out.rglob(f"{QUARANTINED}*"))
    manifest = pd.read_csv(out / "manifest.csv")
    assert len(manifest) == len(ds.manifest) == 6
    assert manifest.set_index("case_id").loc[QUARANTINED, "status"] == "quarantined"
    assert json.loads((out / "dataset.json").read_text()) == ds.info
    prov = (out / "PROVENANCE.md").read_text()
    assert prov.startswith("# tiny\n")
    assert "Cases: 5 ok, 1 quarantined (listed in manifest.csv)." in prov
    assert "Kind: **phantom**" in prov and "not real patient data" in prov
    assert "BraTS 2023" in prov and "1 NCR, 2 ED, 3 ET" in prov


def test_brats_release_of_real_data_carries_no_synthetic_disclaimer(tmp_path):
    b.write_catalog_dataset(tmp_path / "ws", "realish", n_cases=2, kind="real")
    prov = (export_brats(open_dataset(tmp_path / "ws", "realish"), tmp_path / "rel") / "PROVENANCE.md").read_text()
    assert "Kind: **real**" in prov and "Cases: 2 ok." in prov
    assert "not real patient data" not in prov


def test_brats_release_of_masks_exports_seg_and_head_only(tmp_path):
    b.write_catalog_dataset(tmp_path / "ws", "masks", n_cases=2, kind="masks")
    masks = open_dataset(tmp_path / "ws", "masks")
    out = export_brats(masks, tmp_path / "rel")
    for cid in masks.ok_cases()["case_id"]:
        assert sorted(p.name for p in (out / cid).iterdir()) == [f"{cid}-head.nii.gz", f"{cid}-seg.nii.gz"]
        assert (out / cid / f"{cid}-head.nii.gz").read_bytes() == masks.path(cid, "head").read_bytes()


def test_exporting_again_replaces_the_release_as_a_whole(ds, tmp_path):
    out = tmp_path / "release"
    export_brats(ds, out)
    (out / "stray.txt").write_text("left by hand")
    (out / "BraTS-OLD-00000-000").mkdir()
    export_brats(ds, out)
    assert not (out / "stray.txt").exists() and not (out / "BraTS-OLD-00000-000").exists()
    assert (out / "PROVENANCE.md").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["release"]


# --------------------------------------------------------------------------- nnU-Net raw dataset
def test_nnunet_dataset_puts_train_cases_in_tr_and_test_cases_only_in_ts(ds, tmp_path):
    folder = export_dataset_nnunet(ds, tmp_path / "raw")
    assert folder == tmp_path / "raw" / "Dataset500_tiny"
    train = sorted(ds.ok_cases("train")["case_id"])
    test = sorted(ds.ok_cases("test")["case_id"])
    assert len(train) == 4 and len(test) == 1

    def ids(sub, channels=True):
        names = sorted(p.name for p in (folder / sub).iterdir())
        return names, sorted({n.rsplit("_", 1)[0] if channels else n[: -len(".nii.gz")] for n in names})

    names, tr = ids("imagesTr")
    assert tr == train and names == sorted(f"{c}_{i:04d}.nii.gz" for c in train for i in range(4))
    assert ids("labelsTr", False)[1] == train
    names, ts = ids("imagesTs")
    assert ts == test and names == sorted(f"{c}_{i:04d}.nii.gz" for c in test for i in range(4))
    assert ids("labelsTs", False)[1] == test
    assert not list(folder.rglob(f"{QUARANTINED}*"))
    assert sorted(p.name for p in folder.iterdir()) == [
        "cases.csv", "dataset.json", "imagesTr", "imagesTs", "labelsTr", "labelsTs"]


def test_nnunet_channels_follow_nnunets_brats_order_and_keep_the_files(ds, tmp_path):
    folder = export_dataset_nnunet(ds, tmp_path / "raw")
    for sub, split in (("Tr", "train"), ("Ts", "test")):
        for cid in ds.ok_cases(split)["case_id"]:
            for i, m in enumerate(("t1n", "t1c", "t2w", "t2f")):
                f = folder / f"images{sub}" / f"{cid}_{i:04d}.nii.gz"
                assert f.read_bytes() == ds.path(cid, m).read_bytes(), (cid, m)
            label = folder / f"labels{sub}" / f"{cid}.nii.gz"
            assert label.read_bytes() == ds.path(cid, "seg").read_bytes()
            same_image(label, ds.path(cid, "seg"))
    cid = ds.ok_cases("train")["case_id"].iloc[0]
    np.testing.assert_array_equal(nib.load(str(folder / "labelsTr" / f"{cid}.nii.gz")).affine,
                                  b.affine(b.TISSUE_SPACING))


def test_nnunet_dataset_json_is_region_based_and_names_its_source(ds, tmp_path):
    folder = export_dataset_nnunet(ds, tmp_path / "raw")
    dj = json.loads((folder / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "T1", "1": "T1c", "2": "T2", "3": "FLAIR"}
    assert dj["labels"] == {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [1, 3], "enhancing tumor": [3]}
    assert dj["regions_class_order"] == [2, 1, 3]
    assert dj["numTraining"] == 4 and dj["file_ending"] == ".nii.gz" and dj["label_scheme"] == "brats2023"
    assert dj["gliosynth_source"] == "tiny" and dj["gliosynth_kind"] == "phantom"
    assert dj["gliosynth_manifest_sha256"] == ds.manifest_digest
    cases = pd.read_csv(folder / "cases.csv", keep_default_na=False)
    assert list(cases.columns) == ["case_id", "part", "split", "source_dataset", "source_case"]
    assert sorted(cases.loc[cases["part"] == "train", "case_id"]) == sorted(ds.ok_cases("train")["case_id"])
    assert list(cases.loc[cases["part"] == "test", "case_id"]) == list(ds.ok_cases("test")["case_id"])
    assert set(cases["source_dataset"]) == {"tiny"}


def test_nnunet_region_labels_of_the_post_treatment_scheme():
    dj = nnunet_dataset_json(load_label_scheme("brats2024_post"), 3, extra={"x": 1})
    assert dj["labels"]["resection cavity"] == [4] and dj["regions_class_order"] == [2, 1, 3, 4]
    assert dj["numTraining"] == 3 and dj["x"] == 1
    with pytest.raises(ExportError, match="defines no nnunet_regions"):
        nnunet_dataset_json(load_label_scheme("brats2021"), 3)


def test_nnunet_ids_are_kept_per_name_and_new_names_take_the_next_free_one(ds, tmp_path):
    raw = tmp_path / "raw"
    first = export_dataset_nnunet(ds, raw)
    (first / "imagesTr" / "stray_0000.nii.gz").write_bytes(b"old")
    again = export_dataset_nnunet(ds, raw)
    assert again == first and not (first / "imagesTr" / "stray_0000.nii.gz").exists()
    other = export_dataset_nnunet(ds, raw, name="other")
    assert other.name == "Dataset501_other"
    assert export_dataset_nnunet(ds, raw, name="pinned", dataset_id=742).name == "Dataset742_pinned"
    assert next_dataset_id(raw, "tiny") == 500 and next_dataset_id(raw, "new") == 502
    assert reserve_dataset_ids(raw, ["other", "a", "b"]) == {"other": 501, "a": 502, "b": 503}
    assert (raw / "Dataset503_b").is_dir()
    assert sorted(p.name for p in raw.iterdir()) == [
        "Dataset500_tiny", "Dataset501_other", "Dataset502_a", "Dataset503_b", "Dataset742_pinned"]


def test_nnunet_refuses_an_empty_training_set_and_a_case_in_both_parts(ds, tmp_path):
    train = cases_from_dataset(ds, ("train",))
    assert {c.case_id for c in train} == set(ds.ok_cases("train")["case_id"])
    assert all(isinstance(c, ExportCase) and c.files["t1n"].is_file() for c in train)
    with pytest.raises(ExportError, match="no training case"):
        export_nnunet([], tmp_path / "raw", "x", ds.label_scheme)
    with pytest.raises(ExportError, match="case ids repeat"):
        export_nnunet(train, tmp_path / "raw", "x", ds.label_scheme, test_cases=train[:1])
    assert not (tmp_path / "raw").exists() or not list((tmp_path / "raw").iterdir())


def test_cases_from_dataset_skips_cases_without_a_seg(ds, tmp_path):
    ws = tmp_path / "ws"
    m = ds.manifest.copy()
    m.loc[m["case_id"] == "BraTS-TST-00000-000", "seg"] = ""
    shutil.copytree(ds.root / "cases", ws / "datasets" / "noseg" / "cases")
    d = register_dataset(ws, "noseg", kind="phantom", label_scheme="brats2023", manifest=m)
    ids = {c.case_id for c in cases_from_dataset(d)}
    assert ids == set(ds.ok_cases()["case_id"]) - {"BraTS-TST-00000-000"}
