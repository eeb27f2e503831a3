"""Process-level settings for a workspace: Prefect's home and result store live inside it."""

from __future__ import annotations

import os
from pathlib import Path


def configure_workspace(workspace: str | Path) -> Path:
    """Point Prefect at ``<workspace>/.prefect`` (state DB, cached results). Call before importing prefect."""
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
    return ws
