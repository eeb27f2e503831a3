"""nnU-Net training you can watch and resume: epoch lines reach the log as they happen, and a
training killed (SIGKILL) mid-run continues from nnU-Net's latest checkpoint."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

from components.ablation import AblationConfig, plan_mixes, prepare_nnunet
from components.segmentation.nnunet import SCHEDULES, train
from tests import builders as b

ROOT = Path(__file__).resolve().parents[1]


def test_a_killed_nnunet_training_resumes_from_its_latest_checkpoint(tmp_path, caplog):
    ws = tmp_path / "ws"
    real, _ = b.write_real_and_synthetic(ws, n_real=6, per_case=1)
    plans = plan_mixes(real, None, AblationConfig(ratios=(0,)))
    schedule = SCHEDULES["tiny"].model_copy(update={"configuration": "2d", "epochs": 4, "iterations_per_epoch": 2})
    nn = prepare_nnunet(ws, "resume", plans, real, None, schedule)
    fold = nn.folds[plans[0].name]
    args = {"root": nn.root, "dataset_id": nn.dataset_id, "schedule": schedule.model_dump(), "fold": fold, "seed": 0}
    result_file = tmp_path / "result.json"
    proc = subprocess.Popen([sys.executable, "-m", "components.segmentation.nnunet", "train", json.dumps(args),
                             str(result_file)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fold_dir = None
    t0 = time.monotonic()
    try:
        while proc.poll() is None and time.monotonic() - t0 < 300:
            dirs = list(Path(nn.root, "results").glob(f"Dataset{nn.dataset_id:03d}_*/*__2d/fold_{fold}"))
            if dirs and (dirs[0] / "checkpoint_latest.pth").is_file():
                fold_dir = dirs[0]
                break
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    assert fold_dir is not None and (fold_dir / "checkpoint_latest.pth").is_file()
    assert not (fold_dir / "checkpoint_final.pth").exists(), "the training should have been killed mid-run"

    caplog.set_level(logging.INFO, logger="components.segmentation.nnunet")
    trained = train(nn.root, nn.dataset_id, schedule, fold=fold, seed=0)
    assert 1 <= trained.start_epoch < schedule.epochs  # continued, not restarted
    assert (fold_dir / "checkpoint_final.pth").is_file() and not (fold_dir / "checkpoint_latest.pth").exists()
    assert trained.train_keys == plans[0].train_ids
    msgs = [r.getMessage() for r in caplog.records]
    assert any("resuming from epoch" in m for m in msgs)
    # nnU-Net's own epoch lines were relayed to the log, from the resumed epoch to the last
    assert any(m.endswith(f"Epoch {schedule.epochs - 1}") for m in msgs)
    assert not any(m.endswith("Epoch 0") for m in msgs)
    # Once finished, the same fold is not trained again.
    again = train(nn.root, nn.dataset_id, schedule, fold=fold, seed=0)
    assert again.start_epoch == schedule.epochs
