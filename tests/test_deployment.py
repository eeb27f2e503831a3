"""prefect.yaml deploys to a real local Prefect server and a process worker runs a deployment to completion."""

from __future__ import annotations

import socket

import yaml

from data_catalog import open_dataset
from flows.serve import ROOT, deploy, local_server, run_deployment, worker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_prefect_yaml_declares_pools_once_and_schedules():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    pools = {d["work_pool"]["name"] for d in spec["deployments"]}
    assert pools == {spec["definitions"]["work_pools"]["local"]["name"]}
    names = {d["name"] for d in spec["deployments"]}
    assert {"demo", "nightly-ingest", "weekly-ablation", "phantom-smoke"} <= names
    crons = [s["cron"] for d in spec["deployments"] for s in d.get("schedules", [])]
    assert len(crons) >= 2


def test_deployment_runs_to_completion_on_a_local_server(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    port = _free_port()
    with local_server(port, tmp_path) as env:
        deploy(env, ["phantom-smoke"])
        with worker(env):
            params = {"params": {"workspace": str(tmp_path / "ws"), "name": "smoke",
                                 "config": {"cases": 1, "spacing": 8.0}}}
            out = run_deployment(env, "phantom/phantom-smoke", params, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Completed" in out.stdout
    ds = open_dataset(tmp_path / "ws", "smoke")
    assert ds.info["n_ok"] == 1
