"""The foundation flows and verbs, run through Prefect's test harness."""

from __future__ import annotations

import time

import pytest

from components.brats import IngestConfig
from data_catalog import open_dataset
from flows.__main__ import main
from tests import builders as b


@pytest.mark.usefixtures("prefect_harness")
def test_reingest_unchanged_source_is_a_cache_hit(tmp_path):
    from flows.datasets import IngestParams, ingest_flow

    src = tmp_path / "src"
    for i in range(4):
        b.write_folder_case(src, "brats2023", i)
    params = IngestParams(source=str(src), name="d", workspace=str(tmp_path / "ws"), config=IngestConfig(workers=1))
    t0 = time.perf_counter()
    first = ingest_flow(params)
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    second = ingest_flow(params)
    t_second = time.perf_counter() - t0
    # A cache hit returns the stored summary itself (same timing inside it): no case was touched.
    assert second == first and first["n_ok"] == 4
    print(f"ingest flow: first {t_first:.2f} s, cached {t_second:.2f} s")
    # A changed source is not a cache hit.
    b.save(next((src / b.case_id("brats2023", 0)).glob("*-t1n.nii.gz")), b.image_array(77))
    third = ingest_flow(params)
    assert third["seconds"] != first["seconds"] and third["n_reused"] == 3
    # Deleting the output makes the cache refresh instead of returning a summary of nothing.
    import shutil

    shutil.rmtree(tmp_path / "ws" / "datasets" / "d")
    fourth = ingest_flow(params)
    assert fourth["n_reused"] == 0 and open_dataset(tmp_path / "ws", "d").info["n_ok"] == 4


@pytest.mark.usefixtures("prefect_harness")
def test_cli_phantom_then_ingest_writes_montages(tmp_path, capsys):
    ws = str(tmp_path / "ws")
    assert main(["phantom", "--workspace", ws, "--name", "ph", "--cases", "2", "--spacing", "6"]) == 0
    assert main(["ingest", f"{ws}/datasets/ph/cases", "--workspace", ws, "--name", "ing"]) == 0
    out = capsys.readouterr().out
    assert "ing: 2 ok, 0 quarantined" in out
    ds = open_dataset(ws, "ing")
    assert ds.info["kind"] == "phantom" and ds.info["parents"][0]["name"] == "ph"
    for name in ("ph", "ing"):
        png = tmp_path / "ws" / "datasets" / name / "montage.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.usefixtures("prefect_harness")
def test_cli_ingest_with_nothing_recognisable_fails_clearly(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = main(["ingest", str(tmp_path / "empty"), "--workspace", str(tmp_path / "ws"), "--name", "x"])
    assert code != 0
    assert "no recognisable BraTS or MSD case" in capsys.readouterr().err
