"""Process-level settings for a workspace: Prefect's home and result store live inside it.

A workspace has one Prefect home, ``<workspace>/.prefect``: its database holds every flow run made
on that workspace, by the command line or by a deployment. While ``python -m flows serve`` (``make
serve``) runs a server on that home, it records the server's API address as the home's active
profile (``gliosynth-server`` in ``profiles.toml``): command-line runs then report to the server and
show in its UI, and ``PREFECT_HOME=<workspace>/.prefect prefect ...`` in any shell talks to it. With
no server up, a command-line run starts Prefect's temporary server on the same home.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

SERVER_PROFILE = "gliosynth-server"  # the profile `serve` writes into the workspace's Prefect home


def prefect_home(workspace: str | os.PathLike) -> Path:
    """The workspace's Prefect home (state database, cached results, profiles)."""
    return Path(workspace).resolve() / ".prefect"


def configure_workspace(workspace: str | Path) -> Path:
    """Point Prefect at ``<workspace>/.prefect`` (state DB, cached results). Call before importing prefect.

    Explicit ``PREFECT_*`` variables win. When the home's active profile is the one ``serve`` wrote
    and its server answers, runs report to it; when that server is gone (killed before it could
    clear the profile) the run falls back to a temporary server on the same home, with a warning.
    """
    ws = Path(workspace).resolve()
    home = ws / ".prefect"
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(home))
    os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(home / "storage"))
    os.environ.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "true")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    # The components' own log lines (progress, nnU-Net's epochs) reach the flow run's log in the UI.
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "components")
    _use_served_api(Path(os.environ["PREFECT_HOME"]))
    return ws


@contextmanager
def temporary_server_settings() -> Iterator[None]:
    """Prefect settings for a command-line run on a temporary server: no flow-run heartbeats.

    A heartbeat lets a long-lived server notice a flow run whose process vanished; a temporary server ends
    with the process, and a stopped command-line run marks its own runs Crashed (``flows.signals``). The
    heartbeat thread of every flow and sub-flow is joined at its end in 1 s sleeps, about a second per
    sub-flow: most of an unchanged pipeline re-run. Runs that report to a server (``make serve``, or
    ``PREFECT_API_URL``) keep their heartbeats."""
    if os.environ.get("PREFECT_API_URL"):
        yield
        return
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def _profiles_path(home: Path) -> Path:
    return Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml")


def served_api_url(home: str | os.PathLike) -> str | None:
    """The API address ``serve`` recorded in this Prefect home, when its profile is the active one."""
    try:
        data = tomllib.loads(_profiles_path(Path(home)).read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or data.get("active")
    if active != SERVER_PROFILE:
        return None
    return data.get("profiles", {}).get(SERVER_PROFILE, {}).get("PREFECT_API_URL") or None


def api_answers(api_url: str, timeout: float = 2.0) -> bool:
    """Whether a Prefect server answers its health check at ``api_url`` (``http://host:port/api``)."""
    try:
        with urllib.request.urlopen(api_url.rstrip("/") + "/health", timeout=timeout) as r:
            return json.loads(r.read()) is True
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _use_served_api(home: Path) -> None:
    if os.environ.get("PREFECT_API_URL") is not None:
        return  # the user chose a server
    url = served_api_url(home)
    if url is None:
        return
    if api_answers(url):
        os.environ["PREFECT_API_URL"] = url
        log.info("reporting to the Prefect server at %s (UI: %s)", url, url.removesuffix("/api"))
    else:
        os.environ["PREFECT_PROFILE"] = "ephemeral"
        log.warning("the Prefect server recorded in %s (%s) does not answer: ignoring it (runs use a temporary "
                    "server on the same home until `make serve` runs again)", _profiles_path(home), url)


def record_served_api(home: str | os.PathLike, api_url: str | None) -> None:
    """Make ``api_url`` the active profile of this Prefect home, or (None) go back to temporary servers."""
    import toml  # Prefect's own reader and writer of profiles.toml

    path = _profiles_path(Path(home))
    data = toml.loads(path.read_text()) if path.exists() else {}
    profiles = data.setdefault("profiles", {})
    if api_url:
        profiles[SERVER_PROFILE] = {"PREFECT_API_URL": api_url}
        data["active"] = SERVER_PROFILE
    else:
        profiles.pop(SERVER_PROFILE, None)
        if data.get("active") == SERVER_PROFILE:
            data["active"] = "ephemeral"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".profiles.", suffix=".toml", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(toml.dumps(data))
    os.replace(tmp, path)
