"""Prefect settings of command-line runs (``flows.settings.temporary_server_settings``)."""

from __future__ import annotations

import pytest

from flows.settings import temporary_server_settings


@pytest.mark.usefixtures("prefect_harness")
def test_flows_run_on_a_temporary_server_send_no_heartbeats(monkeypatch):
    """Each flow run's heartbeat thread is joined in 1 s sleeps at its end: about a second per sub-flow of an
    unchanged pipeline re-run. A temporary server ends with the process, so a command-line run on one sends none."""
    from prefect import flow
    from prefect.settings import get_current_settings

    @flow
    def child() -> int | None:
        return get_current_settings().flows.heartbeat_frequency

    @flow
    def parent() -> tuple[int | None, int | None]:
        return get_current_settings().flows.heartbeat_frequency, child()

    assert parent() == (180, 180)  # Prefect's default, in both the flow and its sub-flow
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_server_settings():
        assert parent() == (None, None)
    # a run that reports to a server (make serve, PREFECT_API_URL) keeps them
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    with temporary_server_settings():
        assert get_current_settings().flows.heartbeat_frequency == 180
