"""Ingestion of every release layout, with good and bad cases mixed."""

from __future__ import annotations

import hashlib

import nibabel as nib
import numpy as np
import pytest

from components.brats import IngestConfig, IngestError, discover, ingest
from data_catalog import MODALITIES, assign_split, open_dataset
from tests import builders as b

FOLDER_LAYOUTS = ["brats2021", "brats2023", "brats2024_post"]
CANON = {"brats2021": {1: 1, 2: 2, 4: 3}, "brats2023": {1: 1, 2: 2, 3: 3}, "brats2024_post": {1: 1, 2: 2, 3: 3, 4: 4},
         "msd": {1: 2, 2: 1, 3: 3}}


def _sha(p) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _mixed_folder_tree(root, layout):
    """Cases 0-1 good, 2 without seg, then one bad case per failure mode."""
    src = root / "release" / "nested"
    b.write_folder_case(src, layout, 0)
    b.write_folder_case(src, layout, 1)
    b.write_folder_case(src, layout, 2, seg=False)
    b.write_folder_case(src, layout, 3, skip=("t1c",))  # missing modality
    d = b.write_folder_case(src, layout, 4)  # truncated file
    b.truncate(next(p for p in d.iterdir() if "flair" in p.name or "t2f" in p.name))
    d = b.write_folder_case(src, layout, 5)  # 4-D image
    f = next(p for p in d.iterdir() if p.name.endswith(("_t2.nii.gz", "-t2w.nii.gz")))
    b.save(f, np.zeros((*b.SHAPE, 2), np.float32))
    d = b.write_folder_case(src, layout, 6)  # shape mismatch
    f = next(p for p in d.iterdir() if "seg" in p.name)
    b.save(f, np.zeros((24, 20, 15), np.uint8))
    d = b.write_folder_case(src, layout, 7)  # affine mismatch
    f = next(p for p in d.iterdir() if p.name.endswith(("_t1ce.nii.gz", "-t1c.nii.gz")))
    b.save(f, b.image_array(1), aff=b.affine((1.0, 1.0, 1.0)))
    d = b.write_folder_case(src, layout, 8)  # NaN values
    f = next(p for p in d.iterdir() if p.name.endswith(("_t1ce.nii.gz", "-t1c.nii.gz")))
    arr = b.image_array(2)
    arr[3, 3, 3] = np.nan
    b.save(f, arr)
    d = b.write_folder_case(src, layout, 9)  # label outside the scheme
    f = next(p for p in d.iterdir() if "seg" in p.name)
    s = b.seg_array(b.SOURCE_LABELS[layout])
    s[0, 0, 0] = 7
    b.save(f, s, dtype=np.uint8)
    return root / "release"


EXPECTED_BAD = {
    3: ("missing", "t1c"),
    4: ("unreadable or truncated",),
    5: ("not 3-D",),
    6: ("shape",),
    7: ("affine",),
    8: ("non-finite",),
    9: ("labels outside", "7"),
}


@pytest.mark.parametrize("layout", FOLDER_LAYOUTS)
def test_folder_layouts_status_reasons_and_canonical_files(tmp_path, layout):
    src = _mixed_folder_tree(tmp_path, layout)
    ws = tmp_path / "ws"
    s = ingest(src, ws, "ds", IngestConfig(workers=2), progress=False)
    assert (s.n_ok, s.n_quarantined, s.n_without_seg) == (3, 7, 1)
    expected_scheme = "brats2024_post" if layout == "brats2024_post" else "brats2023"
    assert s.label_scheme == expected_scheme
    ds = open_dataset(ws, "ds")
    m = ds.manifest.set_index("case_id")
    for i, words in EXPECTED_BAD.items():
        cid = b.case_id(layout, i)
        assert m.loc[cid, "status"] == "quarantined"
        reason = m.loc[cid, "reason"]
        assert cid in reason and all(w in reason for w in words), reason
        assert not (ds.root / "cases" / cid).exists()
    for i in (0, 1):
        cid = b.case_id(layout, i)
        row = m.loc[cid]
        assert row["status"] == "ok" and row["reason"] == ""
        src_dir = src / "nested" / cid
        seg_src = next(p for p in src_dir.iterdir() if "seg" in p.name)
        seg_src_img = nib.load(str(seg_src))
        seg_out = nib.load(str(ds.root / row["seg"]))
        # Affine and spacing unchanged, labels mapped to the canonical scheme.
        np.testing.assert_allclose(seg_out.affine, seg_src_img.affine, atol=1e-5)
        assert tuple(row["spacing"]) == pytest.approx(b.SPACING)
        src_arr = np.asarray(seg_src_img.dataobj)
        want = np.zeros_like(src_arr)
        for a, c in CANON[layout].items():
            want[src_arr == a] = c
        np.testing.assert_array_equal(np.asarray(seg_out.dataobj), want)
        for mod in MODALITIES:
            out = ds.root / row[mod]
            assert out.name == f"{cid}-{mod}.nii.gz"
            assert nib.load(str(out)).shape == b.SHAPE
            assert row[f"sha256_{mod}"] == _sha(out)
    # Images are never re-encoded: the canonical t1c holds the source's exact bytes.
    cid = b.case_id(layout, 0)
    t1c_src = next(p for p in (src / "nested" / cid).iterdir() if p.name.endswith(("_t1ce.nii.gz", "-t1c.nii.gz")))
    assert _sha(ds.root / m.loc[cid, "t1c"]) == _sha(t1c_src)
    assert not m.loc[b.case_id(layout, 2), "has_seg"] and m.loc[b.case_id(layout, 2), "seg"] == ""


def test_brats2021_mapping_recorded(tmp_path):
    src = tmp_path / "src"
    b.write_folder_case(src, "brats2021", 0)
    ingest(src, tmp_path / "ws", "d21", progress=False)
    ds = open_dataset(tmp_path / "ws", "d21")
    assert ds.info["source_label_scheme"] == "brats2021" and ds.info["label_scheme"] == "brats2023"
    assert ds.info["label_mapping"] == {"0": 0, "1": 1, "2": 2, "4": 3}
    assert list(ds.manifest.loc[0, "labels"]) == [0, 1, 2, 3]
    assert list(ds.manifest.loc[0, "source_labels"]) == [0, 1, 2, 4]


def test_msd_4d_split_into_channels_and_relabelled(tmp_path):
    task = tmp_path / "Task01_BrainTumour"
    for i in (1, 2):
        b.write_msd_case(task, i)
    b.write_msd_case(task, 3, seg=False, split="Ts")
    bad = b.write_msd_case(task, 4)
    b.save(bad, np.zeros((*b.SHAPE, 3), np.float32))  # wrong channel count
    s = ingest(tmp_path, tmp_path / "ws", "msd", progress=False)  # pointing at the parent works too
    assert (s.layout, s.n_ok, s.n_quarantined, s.n_without_seg) == ("msd_task01", 3, 1, 1)
    ds = open_dataset(tmp_path / "ws", "msd")
    m = ds.manifest.set_index("case_id")
    assert "4-channel" in m.loc["BRATS_004", "reason"]
    src = np.asarray(nib.load(str(task / "imagesTr" / "BRATS_001.nii.gz")).dataobj)
    # MSD channel order is FLAIR, T1w, t1gd, T2w.
    for c, mod in enumerate(["t2f", "t1n", "t1c", "t2w"]):
        out = nib.load(str(ds.root / m.loc["BRATS_001", mod]))
        assert out.ndim == 3
        np.testing.assert_array_equal(np.asarray(out.dataobj), src[..., c])
        np.testing.assert_allclose(out.affine, b.affine(), atol=1e-5)
    lab_src = np.asarray(nib.load(str(task / "labelsTr" / "BRATS_001.nii.gz")).dataobj)
    lab_out = np.asarray(nib.load(str(ds.root / m.loc["BRATS_001", "seg"])).dataobj)
    for a, c in CANON["msd"].items():
        assert (lab_out[lab_src == a] == c).all()
    assert ds.info["label_scheme"] == "brats2023"


def test_no_recognisable_case_is_a_clear_error(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.txt").write_text("x")
    with pytest.raises(IngestError, match="no recognisable"):
        ingest(tmp_path / "empty", tmp_path / "ws", "x", progress=False)


def test_all_bad_cases_is_an_error_but_names_the_reason(tmp_path):
    src = tmp_path / "src"
    b.write_folder_case(src, "brats2023", 0, skip=("t2w",))
    with pytest.raises(IngestError, match="t2w"):
        ingest(src, tmp_path / "ws", "x", progress=False)


def test_mixed_layouts_refused_unless_layout_given(tmp_path):
    b.write_folder_case(tmp_path / "src", "brats2021", 0)
    b.write_folder_case(tmp_path / "src", "brats2023", 1)
    with pytest.raises(IngestError, match="mixes release layouts"):
        discover(tmp_path / "src")
    layout, cases = discover(tmp_path / "src", "brats2023")
    assert layout == "brats2023" and [c.case_id for c in cases] == [b.case_id("brats2023", 1)]


def test_explicit_brats2023_scheme_quarantines_label_4(tmp_path):
    src = tmp_path / "src"
    b.write_folder_case(src, "brats2024_post", 0)
    b.write_folder_case(src, "brats2023", 1)
    s = ingest(src, tmp_path / "ws", "x", IngestConfig(label_scheme="brats2023"), progress=False)
    assert s.n_ok == 1 and "labels outside" in s.quarantined[b.case_id("brats2024_post", 0)]


def test_rerun_reuses_cases_and_detects_changes(tmp_path):
    src = tmp_path / "src"
    for i in range(3):
        b.write_folder_case(src, "brats2023", i)
    ws = tmp_path / "ws"
    first = ingest(src, ws, "d", progress=False)
    assert first.n_reused == 0
    # A temp folder left by a killed run is not a case and is cleaned up.
    (ws / "datasets" / "d" / "cases" / ".tmp-BraTS-GLI-00009-000-abc").mkdir()
    second = ingest(src, ws, "d", progress=False)
    assert second.n_reused == 3 and second.n_ok == 3
    assert not (ws / "datasets" / "d" / "cases" / ".tmp-BraTS-GLI-00009-000-abc").exists()
    f = next((src / b.case_id("brats2023", 1)).glob("*-t2w.nii.gz"))
    b.save(f, b.image_array(99))
    third = ingest(src, ws, "d", progress=False)
    assert third.n_reused == 2
    ds = open_dataset(ws, "d")
    assert ds.manifest.set_index("case_id").loc[b.case_id("brats2023", 1), "sha256_t2w"] == _sha(f)


def test_split_is_a_deterministic_hash():
    ids = [f"BraTS-GLI-{i:05d}-000" for i in range(400)]
    a = [assign_split(c, 0.2) for c in ids]
    assert a == [assign_split(c, 0.2) for c in ids]
    frac = a.count("test") / len(a)
    assert 0.12 < frac < 0.28
    assert all(assign_split(c, 0.0) == "train" for c in ids)


def test_manifest_contract_columns(tmp_path):
    src = tmp_path / "src"
    b.write_folder_case(src, "brats2023", 0)
    ingest(src, tmp_path / "ws", "d", progress=False)
    ds = open_dataset(tmp_path / "ws", "d")
    need = {"case_id", "status", "reason", "split", "seg", "shape", "spacing", "labels", "source_case", "seed", "params",
            *MODALITIES, *(f"sha256_{k}" for k in (*MODALITIES, "seg"))}
    assert need <= set(ds.manifest.columns)
    for k in ("name", "kind", "label_scheme", "modalities", "shape", "spacing", "parents", "config", "created",
              "code_version"):
        assert k in ds.info
    assert ds.info["kind"] == "real" and ds.info["shape"] == list(b.SHAPE)
