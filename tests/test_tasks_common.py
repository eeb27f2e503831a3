"""Retries on I/O errors only: a transient OSError is retried, a bad input fails at once."""

from __future__ import annotations

import pytest
from prefect import flow, task

from tasks.common import IO_RETRIES


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("error, fail_times, expected_calls", [
    (OSError, 2, 3),     # a transient I/O error: retried until the third attempt succeeds
    (ValueError, 1, 1),  # bad input: fails at once, never retried
])
def test_only_io_errors_are_retried(error, fail_times, expected_calls):
    calls = []

    @task(**{**IO_RETRIES, "retry_delay_seconds": 0})
    def write_something() -> int:
        calls.append(1)
        if len(calls) <= fail_times:
            raise error(f"attempt {len(calls)} failed")
        return len(calls)

    @flow
    def f() -> int:
        return write_something()

    if error is OSError:
        assert f() == expected_calls
    else:
        with pytest.raises(error, match="attempt 1 failed"):
            f()
    assert len(calls) == expected_calls
