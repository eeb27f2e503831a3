"""Prefect as documented: the README's deployment commands, as written, against a real `make serve`.

Everything runs in fresh environments (no PREFECT_* variables, a fresh HOME): `make serve` on a
free port, the README's command lines verbatim from a checkout whose `workspace` is the served one,
and a command-line run, which must report to the served server (one Prefect home per workspace).
Without a server, a command-line run uses a temporary server on that same home.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from data_catalog import open_dataset
from flows.serve import POOL, ROOT
from flows.settings import SERVER_PROFILE, api_answers, prefect_home, record_served_api, served_api_url


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fresh_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR")}
    home.mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(home), PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
    return env


def _readme_deployment_commands() -> list[str]:
    """The command lines of the README's orchestration section, exactly as written."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Orchestration"):]
    section = section[:section.index("\n## ", 3)]
    lines = [ln.strip() for block in re.findall(r"```\n(.*?)```", section, re.S) for ln in block.splitlines()]
    cmds = [ln for ln in lines if "prefect deployment run" in ln]
    assert cmds, "the README's orchestration section shows no `prefect deployment run` command"
    return cmds


def _api(url: str, path: str, body: dict | None = None, method: str = "POST") -> object:
    req = urllib.request.Request(url + path, data=json.dumps(body or {}).encode(), method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        data = r.read()
    return json.loads(data) if data else None


def _flow_runs(api_url: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        return client.read_flow_runs()


def test_prefect_yaml_declares_pools_once_and_schedules():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    pools = {d["work_pool"]["name"] for d in spec["deployments"]}
    assert pools == {spec["definitions"]["work_pools"]["local"]["name"]} == {POOL}
    names = {d["name"] for d in spec["deployments"]}
    assert {"demo", "nightly-ingest", "weekly-ablation", "phantom-smoke"} <= names
    crons = [s["cron"] for d in spec["deployments"] for s in d.get("schedules", [])]
    assert len(crons) >= 2
    # every deployment writes to the workspace it was deployed for (GLIOSYNTH_WORKSPACE at deploy time)
    for d in spec["deployments"]:
        params = d["parameters"].get("params", d["parameters"])
        assert params["workspace"] == "{{ $GLIOSYNTH_WORKSPACE }}", d["name"]


def test_readme_deployment_commands_after_make_serve(tmp_path):
    commands = _readme_deployment_commands()
    # A checkout as the README's reader has it: `.venv` and `workspace` beside each other.
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / ".venv").symlink_to(ROOT / ".venv")
    ws = checkout / "workspace"
    home = prefect_home(ws)
    port = _free_port()
    env = _fresh_env(tmp_path / "home")
    log_path = tmp_path / "serve.log"
    # `-o setup`: the venv is there already; the serve target itself runs as written
    with open(log_path, "w") as log:
        serve = subprocess.Popen(["make", "-o", "setup", "serve", f"WS={ws}", f"PREFECT_PORT={port}"], cwd=ROOT,
                                 env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        t0 = time.monotonic()
        while not (served_api_url(home) and api_answers(served_api_url(home))):
            assert serve.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() - t0 < 180, "make serve not ready in 180 s:\n" + log_path.read_text()[-3000:]
            time.sleep(0.5)
        url = served_api_url(home)
        assert url == f"http://127.0.0.1:{port}/api"

        for cmd in commands:
            if "--watch" not in cmd:  # a run the test does not wait for (the demo): keep the worker off it
                _api(url, f"/work_pools/{POOL}", {"is_paused": True}, method="PATCH")
            out = subprocess.run(["bash", "-c", cmd], cwd=checkout, env=env, capture_output=True, text=True,
                                 timeout=300)
            assert out.returncode == 0, f"{cmd}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
            flow_and_deployment = re.search(r"deployment run '([^']+)'", cmd).group(1)
            deployment = _api(url, f"/deployments/name/{flow_and_deployment}", method="GET")
            runs = [r for r in _flow_runs(url) if str(r.deployment_id) == deployment["id"]]
            assert runs, f"{cmd}: no flow run of {flow_and_deployment} on the server"
            if "--watch" in cmd:
                assert "Completed" in out.stdout, out.stdout[-3000:]
                assert runs[0].state.is_completed()
        assert open_dataset(ws, "phantom-smoke").info["n_ok"] == 1  # the deployment wrote to the served workspace

        # A command-line run on the served workspace, from a fresh shell: it reports to the server.
        cli = subprocess.run([sys.executable, "-m", "flows", "phantom", "--workspace", str(ws), "--name", "from-cli",
                              "--cases", "1", "--spacing", "8"], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=300)
        assert cli.returncode == 0, cli.stderr[-3000:]
        assert "Starting temporary server" not in cli.stderr, cli.stderr[-3000:]
        from_cli = [r for r in _flow_runs(url) if r.parameters.get("params", {}).get("name") == "from-cli"]
        assert len(from_cli) == 1 and from_cli[0].state.is_completed()
        assert (home / "prefect.db").is_file()  # the server's database is the workspace's home

        # one server per workspace
        second = subprocess.run([sys.executable, "-m", "flows", "serve", "--workspace", str(ws), "--port",
                                 str(_free_port())], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2 and "already answers" in second.stderr, second.stderr[-3000:]

        os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(timeout=30)  # make itself exits at once; its python child finishes shutting down after it
        t_gone = time.monotonic()
        while time.monotonic() - t_gone < 30:  # uvicorn's and the worker's shutdown, on 2 busy cores
            try:
                os.killpg(serve.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            left = subprocess.run(["ps", "-o", "pid,etime,args", "-g", str(serve.pid)], capture_output=True, text=True)
            raise AssertionError(f"the server or worker of make serve outlived it by 30 s:\n{left.stdout}")
        assert served_api_url(home) is None  # once make serve is gone, the profile is back to temporary servers
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGTERM)
            try:
                serve.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(serve.pid, signal.SIGKILL)
                serve.wait()
        try:
            os.killpg(serve.pid, signal.SIGKILL)  # anything of make serve's group still there
        except ProcessLookupError:
            pass


@pytest.mark.slow
def test_without_a_server_a_cli_run_uses_a_temporary_one_on_the_same_home(tmp_path):
    ws = tmp_path / "ws"
    home = prefect_home(ws)
    # as `make serve` leaves it when it is killed outright: a profile naming a server that is gone
    record_served_api(home, f"http://127.0.0.1:{_free_port()}/api")
    assert served_api_url(home)
    cli = subprocess.run([sys.executable, "-m", "flows", "phantom", "--workspace", str(ws), "--name", "alone",
                          "--cases", "1", "--spacing", "8"], cwd=ROOT, env=_fresh_env(tmp_path / "home"),
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert "does not answer" in cli.stderr and "Starting temporary server" in cli.stderr, cli.stderr[-3000:]
    with sqlite3.connect(home / "prefect.db") as db:
        names = [r[0] for r in db.execute("select flow.name from flow_run join flow on flow.id = flow_run.flow_id")]
    assert names == ["phantom"]
    # the profile `serve` writes and clears
    record_served_api(home, None)
    assert served_api_url(home) is None
    assert SERVER_PROFILE not in (home / "profiles.toml").read_text()
