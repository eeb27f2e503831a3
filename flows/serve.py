"""A local Prefect server, a process worker and the deployments of prefect.yaml, all on 127.0.0.1.

The server runs on the workspace's own Prefect home (``<workspace>/.prefect``, the one command-line
runs use), and while it is up that home's active profile names it (``flows.settings``): runs started
from the command line report to it, and ``PREFECT_HOME=<workspace>/.prefect prefect deployment run
...`` works from any shell.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flows.settings import api_answers, prefect_home, record_served_api, served_api_url

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
POOL = "gliosynth-local"


def prefect_env(port: int, workspace: str | os.PathLike) -> dict[str, str]:
    """The environment of the server, worker and ``prefect`` commands that serve one workspace."""
    ws = Path(workspace).resolve()
    home = prefect_home(ws)
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.pop("PREFECT_PROFILE", None)  # the settings below are the whole story
    env.update(
        PREFECT_HOME=str(home), PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_API_HOST="127.0.0.1", PREFECT_SERVER_API_PORT=str(port),
        PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOCAL_STORAGE_PATH=str(home / "storage"),
        PREFECT_RESULTS_PERSIST_BY_DEFAULT="true",
        # prefect.yaml: runs start in this checkout and write to this workspace
        GLIOSYNTH_ROOT=os.environ.get("GLIOSYNTH_ROOT") or str(ROOT), GLIOSYNTH_WORKSPACE=str(ws),
    )
    return env


def _prefect(*args: str, env: dict[str, str], check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "prefect", *args]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if check and out.returncode != 0:
        raise RuntimeError(f"`prefect {' '.join(args)}` failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return out


def wait_healthy(port: int, timeout: float = 120, proc: subprocess.Popen | None = None, log_path: Path | None = None) -> None:
    url = f"http://127.0.0.1:{port}/api"
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if api_answers(url, timeout=2):
            return
        if proc is not None and proc.poll() is not None:
            from components.errors import GliosynthError

            said = " ".join(log_path.read_text(errors="replace").split()) if log_path and log_path.exists() else ""
            raise GliosynthError(f"the Prefect server for 127.0.0.1:{port} stopped at once (status {proc.returncode}): "
                                 f"{said[-300:] or 'no output'} (its log: {log_path})")
        time.sleep(0.5)
    raise TimeoutError(f"Prefect server on 127.0.0.1:{port} not healthy after {timeout:.0f} s")


def _stop(proc: subprocess.Popen, timeout: float = 10) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def local_server(port: int, workspace: str | os.PathLike) -> Iterator[dict[str, str]]:
    """Start ``prefect server start`` on 127.0.0.1:port over the workspace's Prefect home; stop it on exit."""
    env = prefect_env(port, workspace)
    log_path = Path(env["PREFECT_HOME"]) / "server.log"
    with open(log_path, "w") as log_fh:
        proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                 "--port", str(port)], cwd=ROOT, env=env, stdout=log_fh, stderr=subprocess.STDOUT)
    try:
        wait_healthy(port, proc=proc, log_path=log_path)
        yield env
    finally:
        _stop(proc)


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
def worker(env: dict[str, str], quiet: bool = True) -> Iterator[subprocess.Popen]:
    """A process worker on the pool; ``quiet=False`` lets its log (and its flow runs') reach this terminal."""
    out = subprocess.DEVNULL if quiet else None
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--type", "process"],
                            cwd=ROOT, env=env, stdout=out, stderr=out)
    try:
        yield proc
    finally:
        _stop(proc)


def serve_forever(port: int, workspace: str) -> int:
    """Server, deployments and worker until interrupted; meanwhile the workspace's Prefect home points at them."""
    from components.errors import GliosynthError
    from flows.signals import say_on_sigterm

    say_on_sigterm("the Prefect server and worker stop too")
    home = prefect_home(workspace)
    running = served_api_url(home)
    if running and api_answers(running):
        raise GliosynthError(f"a Prefect server for workspace {Path(workspace).resolve()} already answers at "
                             f"{running}; use it, or stop it before starting another")
    with local_server(port, workspace) as env:
        deploy(env)
        with worker(env, quiet=False) as w:
            record_served_api(home, env["PREFECT_API_URL"])
            try:
                print(f"Prefect UI: http://127.0.0.1:{port}  (home {home}; deployments of prefect.yaml on work "
                      f"pool {POOL}; command-line runs on this workspace report here)", flush=True)
                print(f"trigger one from any shell: PREFECT_HOME={home} .venv/bin/prefect deployment run "
                      "'pipeline/demo'", flush=True)
                return w.wait()
            except KeyboardInterrupt:
                return 0
            finally:
                record_served_api(home, None)  # command-line runs go back to temporary servers
