"""A pipeline config that cannot run fails before anything runs: one sentence naming the file, the
key, the bad value and what is allowed, exit status 2, no traceback, within seconds."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _demo() -> dict:
    return yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())


def _set(cfg: dict, dotted: str, value) -> dict:
    *path, last = dotted.split(".")
    node = cfg
    for k in path:
        node = node.setdefault(k, {})
    node[last] = value
    return cfg


BAD = {
    "schedule": ("ablation.config.schedule", "ful", "'full'"),
    "profile": ("synthesizer.profile", "cpu-dem", "cpu-demo"),
    "runner": ("runner.kind", "thread", "'threads'"),
    "ratio": ("ablation.config.ratios", [0.0, -1.0], ">= 0"),
    "label scheme": ("data.phantom.label_scheme", "brats2099", "brats2024_post"),
}


def _run(config: Path, tmp_path: Path) -> tuple[int, str, float]:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "flows", "pipeline", "--config", str(config), "--workspace",
                           str(tmp_path / "ws")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stderr, time.monotonic() - t0


@pytest.mark.parametrize("what", sorted(BAD))
def test_a_bad_pipeline_key_fails_in_one_sentence_before_anything_runs(what, tmp_path):
    key, value, allowed = BAD[what]
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(_set(_demo(), key, value)))
    rc, err, seconds = _run(config, tmp_path)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, err
    assert str(config) in lines[0] and key in lines[0] and allowed in lines[0], lines[0]
    assert "Traceback" not in err and seconds < 5
    assert not (tmp_path / "ws" / ".prefect" / "prefect.db").exists()  # Prefect never started


def test_a_missing_source_folder_is_named(tmp_path):
    cfg = _demo()
    cfg["data"] = {"name": "brats", "source": str(tmp_path / "no-such-release")}
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(cfg))
    rc, err, seconds = _run(config, tmp_path)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "no-such-release" in err and "data" in err
    assert "Traceback" not in err and seconds < 5


def test_a_missing_config_file_without_a_workspace_is_one_sentence(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "flows", "pipeline", "--config", str(tmp_path / "missing.yaml")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: pipeline config {tmp_path / 'missing.yaml'} does not exist: expected a YAML file such as "
        f"configs/demo.yaml"]


def test_a_mistyped_workspace_is_an_error_not_a_new_folder(tmp_path):
    typo = tmp_path / "worskpace"
    proc = subprocess.run([sys.executable, "-m", "flows", "datasets", "--workspace", str(typo)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert f"--workspace {typo}: no such folder" in proc.stderr and "Traceback" not in proc.stderr
    assert not typo.exists()
