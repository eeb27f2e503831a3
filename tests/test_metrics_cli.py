"""The evaluate-segmentation verb end to end: argparse -> Prefect flow -> task -> CSV, JSON and printed summary."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from flows.__main__ import main
from tests import builders as b


def test_evaluate_segmentation_verb_writes_csv_json_and_summary(tmp_path, prefect_harness, capsys):
    ws = tmp_path / "ws"
    cases = {f"C{i}": b.brain_case((20, 20, 20), seed=i) for i in range(2)}
    b.write_metrics_dataset(ws, "real", cases)
    pred = tmp_path / "pred"
    for cid, (_, seg) in cases.items():  # nnU-Net naming; C1's prediction misses its ET
        b.save(pred / f"{cid}.nii.gz", np.where(seg == 3, 1, seg) if cid == "C1" else seg, dtype=np.uint8)
    b.save(pred / "C7.nii.gz", cases["C0"][1], dtype=np.uint8)  # no ground truth
    out = tmp_path / "scores.csv"

    rc = main(["evaluate-segmentation", "--gt", "real", "--pred", str(pred), "--label-scheme", "brats2023",
               "--preset", "brats2024", "--out", str(out), "--workspace", str(ws)])

    assert rc == 0
    table = pd.read_csv(out)
    assert {"case_id", "region", "dice", "hd95", "assd", "lw_dice", "lw_hd95"} <= set(table.columns)
    assert len(table) == 2 * 3 and set(table["preset"]) == {"brats2024"}
    et = table.set_index(["case_id", "region"]).loc[("C1", "ET")]
    assert (et["dice"], et["hd95"], et["lw_hd95"]) == (0.0, 374.0, 337.0)
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["config"]["lesionwise"]["penalty_mm"] == 337.0 and side["metrics"]["dice_WT"] == 1.0
    printed = capsys.readouterr().out
    assert "C7.nii.gz" in printed and "WT" in printed and "2 cases scored" in printed
