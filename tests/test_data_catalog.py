"""data_catalog records: manifest rows and dataset.json round-trip through their models, quarantine
rows have the contract's columns, a bad row is refused in one sentence that names its column."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from data_catalog import (
    REQUIRED_COLUMNS,
    STATUS_QUARANTINED,
    CatalogError,
    DatasetInfo,
    ManifestRow,
    file_of,
    has_file,
    open_dataset,
    quarantine_row,
    register_dataset,
)
from data_catalog.records import plain


def _ok_row(cid: str, split: str = "train", **more) -> dict:
    return {"case_id": cid, "status": "ok", "reason": "", "split": split, "seg": f"cases/{cid}/{cid}-seg.nii.gz",
            "sha256_seg": "ab" * 32, "has_seg": True, "shape": [4, 5, 6], "spacing": [1.0, 1.0, 2.5],
            "labels": [0, 1, 2], "source_case": "", "seed": 7, "params": "{}", "volume_mm3_wt": 12.5, **more}


def _register(ws, rows, name="d", **kw):
    manifest = pd.DataFrame(rows)
    manifest["seed"] = manifest["seed"].astype("Int64")
    return register_dataset(ws, name, kind="phantom", label_scheme="brats2023", manifest=manifest, **kw)


def test_a_registered_manifest_round_trips_through_manifest_row_and_dataset_info(tmp_path):
    bad = quarantine_row("c0", "case c0: file c0-t2f.nii.gz is truncated: expected a complete NIfTI", "test",
                         file_keys=("seg",), has_seg=False, shape=None, spacing=None, labels=[], source_case="",
                         seed=None, params="", volume_mm3_wt=math.nan)
    rows = [bad, _ok_row("c1"), _ok_row("c2", "test", quality_score=0.5)]
    ds = _register(tmp_path, rows, extra={"source": "somewhere", "note": "a tool's own key"},
                   parents=[{"name": "p", "manifest_sha256": "cd" * 32}], config={"cases": 3})
    assert list(ds.manifest.columns) == list(pd.DataFrame(rows).columns)  # the columns as written, in order
    for _, r in ds.manifest.iterrows():
        row = ManifestRow.from_row(r)
        assert row.to_row() == {k: plain(v) for k, v in r.items()}
    again = open_dataset(tmp_path, "d")
    info = DatasetInfo.from_info(again.info)
    assert info.model_dump(mode="json") == again.info
    assert (info.n_cases, info.n_ok, info.n_quarantined, info.shape) == (3, 2, 1, [4, 5, 6])
    assert info.parents[0].name == "p" and info.source == "somewhere"


def test_a_case_record_gives_its_files_and_refuses_the_ones_it_lacks(tmp_path):
    ds = _register(tmp_path, [_ok_row("c1"), _ok_row("c2", "test")])
    rec = ds.record("c1")
    assert rec.path_of("seg") == ds.root / "cases/c1/c1-seg.nii.gz" == ds.path("c1", "seg")
    assert rec.path_of("t1n") is None and not rec.has_file("head") and rec.row.is_ok
    assert [r.case_id for r in ds.records("test")] == ["c2"]
    with pytest.raises(CatalogError, match="case 'c1' has no 't1n' file"):
        ds.path("c1", "t1n")


def test_file_of_reads_dicts_pandas_rows_and_records_alike():
    series = pd.Series({"case_id": "c", "seg": "cases/c/c-seg.nii.gz", "head": np.nan, "t1n": "", "t1c": None})
    for row in (series, series.to_dict(), ManifestRow.from_row({**series.to_dict(), "status": "ok", "reason": "",
                                                                 "split": "train"})):
        assert file_of(row, "seg") == "cases/c/c-seg.nii.gz" and has_file(row, "seg")
        assert not any(has_file(row, k) for k in ("head", "t1n", "t1c", "t2w"))


def test_a_quarantine_row_has_the_required_columns_in_the_contract_order():
    row = quarantine_row("c9", "case c9: no seg file: expected one", "train", file_keys=("t1n", "seg"),
                         has_seg=False, fingerprint="f")
    assert list(row) == ["t1n", "seg", "sha256_t1n", "sha256_seg", "case_id", "status", "reason", "split", "has_seg",
                         "fingerprint"]
    assert set(REQUIRED_COLUMNS) <= set(row) and row["status"] == STATUS_QUARANTINED
    assert row["t1n"] == row["sha256_seg"] == ""
    with pytest.raises(CatalogError, match="column 'reason'.*one-sentence reason"):
        quarantine_row("c9", " ", "train")


@pytest.mark.parametrize("change, column", [
    ({"status": "okay"}, "status"),
    ({"split": "validation"}, "split"),
    ({"case_id": ""}, "case_id"),
    ({"shape": [4, 5]}, "shape"),
    ({"seg": 3}, "seg"),
    ({"quality_score": "high"}, "quality_score"),
])
def test_a_bad_row_is_refused_in_one_sentence_naming_its_column(tmp_path, change, column):
    rows = [_ok_row("c1"), {**_ok_row("c2"), **change}]
    with pytest.raises(CatalogError) as err:
        _register(tmp_path, rows)
    msg = str(err.value)
    assert f"manifest column {column!r}" in msg and msg.startswith("dataset 'd', ") and "\n" not in msg
    assert not (tmp_path / "datasets" / "d" / "manifest.parquet").exists()


def test_a_manifest_without_a_required_column_is_refused(tmp_path):
    rows = [{k: v for k, v in _ok_row("c1").items() if k != "reason"}]
    with pytest.raises(CatalogError, match="lacks required column 'reason'"):
        _register(tmp_path, rows)


def test_dataset_info_names_a_bad_key():
    with pytest.raises(CatalogError, match="key 'kind'"):
        DatasetInfo.from_info({"name": "d", "kind": "toy", "label_scheme": "brats2023", "modalities": [], "shape": None,
                               "spacing": None, "n_cases": 0, "n_ok": 0, "n_quarantined": 0, "parents": [],
                               "config": {}, "created": "", "code_version": "", "manifest_sha256": ""})
