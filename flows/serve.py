"""A local Prefect server, a process worker and the deployments of prefect.yaml, all on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
POOL = "gliosynth-local"


def prefect_env(port: int, workspace: str | os.PathLike) -> dict[str, str]:
    home = Path(workspace).resolve() / ".prefect-server"
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(home), PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_API_HOST="127.0.0.1", PREFECT_SERVER_API_PORT=str(port),
        PREFECT_SERVER_ANALYTICS_ENABLED="false", GLIOSYNTH_ROOT=str(ROOT),
        PREFECT_LOCAL_STORAGE_PATH=str(Path(workspace).resolve() / ".prefect" / "storage"),
    )
    return env


def _prefect(*args: str, env: dict[str, str], check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "prefect", *args]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if check and out.returncode != 0:
        raise RuntimeError(f"`prefect {' '.join(args)}` failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return out


def wait_healthy(port: int, timeout: float = 120) -> None:
    url = f"http://127.0.0.1:{port}/api/health"
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if json.loads(r.read()) is True:
                    return
        except (urllib.error.URLError, OSError, ValueError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"Prefect server on 127.0.0.1:{port} not healthy after {timeout:.0f} s")


@contextmanager
def local_server(port: int, workspace: str | os.PathLike) -> Iterator[dict[str, str]]:
    """Start ``prefect server start`` on 127.0.0.1:port; stop it on exit."""
    env = prefect_env(port, workspace)
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_healthy(port)
        yield env
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def deploy(env: dict[str, str], names: list[str] | None = None) -> None:
    """Create the process work pool (once) and deploy prefect.yaml (all, or the named deployments)."""
    _prefect("work-pool", "create", POOL, "--type", "process", "--overwrite", env=env)
    args = ["--no-prompt", "deploy"]
    if names:
        for n in names:
            args += ["--name", n]
    else:
        args.append("--all")
    _prefect(*args, env=env)


@contextmanager
def worker(env: dict[str, str]) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--type", "process"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def run_deployment(env: dict[str, str], flow_and_deployment: str, params: dict | None = None,
                   timeout: float = 600) -> subprocess.CompletedProcess:
    """Trigger a deployment and wait for its flow run to end (exit status 0 when it completed)."""
    extra = ["--params", json.dumps(params)] if params else []
    return _prefect("deployment", "run", flow_and_deployment, *extra, "--watch", env=env, check=False, timeout=timeout)


def serve_forever(port: int, workspace: str) -> int:
    with local_server(port, workspace) as env:
        deploy(env)
        print(f"Prefect UI: http://127.0.0.1:{port}  (deployments from prefect.yaml, work pool {POOL})")
        print("trigger one with: PREFECT_API_URL=" + env["PREFECT_API_URL"]
              + " .venv/bin/prefect deployment run 'pipeline/demo'")
        with worker(env) as w:
            try:
                return w.wait()
            except KeyboardInterrupt:
                return 0
