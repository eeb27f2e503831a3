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


@pytest.mark.usefixtures("prefect_harness")
def test_a_change_to_the_components_code_is_never_a_cache_hit(tmp_path, monkeypatch):
    import tasks.common as common

    for pkg in common.CODE_PACKAGES:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "stage.py").write_text("SCALE = 1\n")
    monkeypatch.setattr(common, "ROOT", tmp_path)
    common.code_digest.cache_clear()
    calls = []

    @task(cache_policy=common.CACHE, persist_result=True)
    def stage(x: int) -> int:
        calls.append(x)
        return x

    @flow
    def f() -> int:
        return stage(7)

    f()
    f()
    assert len(calls) == 1  # same code, same inputs: a cache hit
    (tmp_path / "components" / "stage.py").write_text("SCALE = 2\n")  # the stage's code changes
    common.code_digest.cache_clear()
    f()
    assert len(calls) == 2
    common.code_digest.cache_clear()
