"""Retries on I/O errors only: a transient OSError is retried, a bad input fails at once."""

from __future__ import annotations

import pytest
from prefect import flow, task

from tasks.common import IO_RETRIES


def _counting_task(error: type[Exception], fail_times: int):
    calls = []

    @task(**{**IO_RETRIES, "retry_delay_seconds": 0})
    def write_something() -> int:
        calls.append(1)
        if len(calls) <= fail_times:
            raise error(f"attempt {len(calls)} failed")
        return len(calls)

    return write_something, calls


@pytest.mark.usefixtures("prefect_harness")
def test_an_os_error_is_retried_until_it_succeeds():
    t, calls = _counting_task(OSError, fail_times=2)

    @flow
    def f() -> int:
        return t()

    assert f() == 3 and len(calls) == 3


@pytest.mark.usefixtures("prefect_harness")
def test_a_bad_input_error_is_not_retried():
    t, calls = _counting_task(ValueError, fail_times=1)

    @flow
    def f() -> int:
        return t()

    with pytest.raises(ValueError, match="attempt 1 failed"):
        f()
    assert len(calls) == 1
