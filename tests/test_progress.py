"""Long loops report progress in the log when no terminal is attached (SLURM, Prefect workers, CI)."""

from __future__ import annotations

import logging

from components.progress import tqdm


def test_without_a_terminal_progress_is_logged_with_count_rate_and_time_left(caplog):
    # pytest captures stderr, so no terminal is attached here, as under a batch scheduler
    with caplog.at_level(logging.INFO, logger="components.progress"):
        for _ in tqdm(range(7), desc="ingest demo", unit="case", disable=None, log_every=0, mininterval=0):
            pass
    lines = [r.getMessage() for r in caplog.records if r.name == "components.progress"]
    assert lines and all(m.startswith("ingest demo:") for m in lines)
    assert "7/7" in lines[-1] and "case/s" in lines[-1]
    assert sum("7/7" in m for m in lines) == 1  # the final count once
    assert any("<" in m for m in lines[:-1])  # elapsed<remaining while running


def test_an_explicitly_disabled_bar_stays_silent(caplog):
    with caplog.at_level(logging.INFO, logger="components.progress"):
        for _ in tqdm(range(3), desc="quiet", disable=True):
            pass
    assert not [r for r in caplog.records if r.name == "components.progress"]
