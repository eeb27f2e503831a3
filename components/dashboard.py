"""The MLflow dashboard: the links that open the latest ablation's comparison, a local ``mlflow server``
over the workspace store (as `make dashboard` starts it) and headless Chromium (screenshots, the
browser test)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def link_lines(workspace: str | Path, parent_run_id: str | None = None, host: str = "127.0.0.1",
               port: int = 5000) -> list[str]:
    """What to open in the MLflow UI (served by `make dashboard`) for an ablation: its configurations
    side by side first, then its parent run. The latest ablation unless ``parent_run_id`` is given."""
    from components.tracking import dashboard_links

    if not (Path(workspace) / "mlflow" / "mlflow.db").is_file():
        return [f"no MLflow store in {workspace} yet (run an ablation or `make demo` first)"]
    links = dashboard_links(workspace, host=host, port=port, parent_run_id=parent_run_id)
    if links["parent"] is None:
        return [f"no ablation in {workspace}'s MLflow store yet; the UI: {links['root']}"]
    n = len(links["run_ids"])
    lines = [f"ablation {links['ablation']} ({n} configuration{'s' if n != 1 else ''}) in the MLflow UI:"]
    if links["compare"]:
        lines.append(f"  compare the configurations: {links['compare']}")
    lines += [f"  parent run (description, effect table, plot): {links['parent']}",
              f"  all runs of the experiment: {links['runs']}"]
    return lines


def dashboard_hint(workspace: str | Path, parent_run_id: str | None = None, port: int = 5000) -> list[str]:
    """Closing lines of a run: how to serve the MLflow UI and the link to open (never raises: a run that
    finished is not failed by a store it cannot read back)."""
    ws = Path(workspace)
    head = f"MLflow: `make dashboard WS={ws}` serves the UI on 127.0.0.1:{port}; then open"
    try:
        return [head, *(f"  {line}" for line in link_lines(ws, parent_run_id, port=port))]
    except Exception as err:  # noqa: BLE001 - a hint, not a result
        return [f"MLflow: `make dashboard WS={ws}` (parent run {parent_run_id}; links unavailable: {err})"]


# --------------------------------------------------------------------------- a local server and a headless browser
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(workspace: str | Path, port: int | None = None, timeout: float = 120.0) -> Iterator[int]:
    """``mlflow server`` on 127.0.0.1 over the workspace store (as `make dashboard` starts it), until the
    block ends; yields its port once it answers."""
    from components.tracking import tracking_uri

    ws = Path(workspace).resolve()
    port = port or free_port()
    exe = Path(sys.executable).with_name("mlflow")
    cmd = [str(exe) if exe.exists() else "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers",
           "1", "--backend-store-uri", tracking_uri(ws), "--default-artifact-root", str(ws / "mlflow" / "artifacts")]
    with tempfile.TemporaryFile() as log:
        # MLflow's job runner (a pool of worker processes for its GenAI judges and trace jobs) is
        # of no use to runs and slows the first pages on a small machine: `make dashboard` leaves it off too.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    tail = log.read().decode(errors="replace")[-2000:]
                    raise RuntimeError(f"mlflow server on port {port} did not start: {tail}")
                time.sleep(0.3)
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def find_chromium() -> str | None:
    """The Chromium (or Chrome) binary: $CHROMIUM, else the first of CHROMIUM_NAMES on PATH."""
    env = os.environ.get("CHROMIUM")
    if env and shutil.which(env):
        return shutil.which(env)
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


def chromium(url: str, *, dump_dom: bool = False, screenshot: str | Path | None = None,
             window: tuple[int, int] = (1600, 1200), budget_ms: int = 15000, timeout: float = 120.0) -> str:
    """Load ``url`` in headless Chromium with a fresh profile (as a first-time user sees it), let the page
    run for ``budget_ms`` of virtual time, and return the rendered DOM or write a PNG screenshot."""
    exe = find_chromium()
    if exe is None:
        raise RuntimeError("no Chromium found")
    with tempfile.TemporaryDirectory(prefix="gliosynth-chromium-") as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
               "--no-first-run", "--no-default-browser-check", f"--user-data-dir={profile}",
               f"--window-size={window[0]},{window[1]}", f"--virtual-time-budget={budget_ms}"]
        cmd += ["--dump-dom"] if dump_dom else [f"--screenshot={Path(screenshot).resolve()}"]
        done = subprocess.run([*cmd, url], capture_output=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"chromium exited {done.returncode}: {done.stderr.decode(errors='replace')[-2000:]}")
    return done.stdout.decode(errors="replace")


def screenshots(workspace: str | Path, out_dir: str | Path, parent_run_id: str | None = None,
                window: tuple[int, int] = (1600, 1200), server_port: int | None = None) -> list[Path]:
    """PNGs of what the printed links open: ``compare-runs.png`` (the configurations side by side) and
    ``parent-run.png`` (the ablation's parent run). Served by the MLflow server on ``server_port`` of
    127.0.0.1, or by a temporary one over the workspace store."""
    from components.tracking import dashboard_links

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        port = server_port or stack.enter_context(mlflow_server(workspace))
        links = dashboard_links(workspace, port=port, parent_run_id=parent_run_id)
        written = []
        for name, url in (("compare-runs.png", links["compare"]), ("parent-run.png", links["parent"])):
            if url:
                chromium(url, screenshot=out / name, window=window)
                written.append(out / name)
    return written
