"""Shared fixtures. Prefect runs against a throw-away local database; nothing touches ~/.prefect."""

from __future__ import annotations

import os
import tempfile

import pytest

_PREFECT_HOME = tempfile.mkdtemp(prefix="gliosynth-prefect-")
os.environ.setdefault("PREFECT_HOME", _PREFECT_HOME)
os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", os.path.join(_PREFECT_HOME, "storage"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "true")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test harness (temporary server + DB) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny volumes run faster on one torch thread of a shared CPU (use with pytestmark)."""
    from tests.builders import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def tiny_catalog_ws(tmp_path_factory):
    """A workspace with the 4-case dataset ``tiny`` (tests/builders.py), one per test module."""
    from tests.builders import write_catalog_dataset

    ws = tmp_path_factory.mktemp("synth-train")
    write_catalog_dataset(ws, "tiny", n_cases=4)
    return ws
