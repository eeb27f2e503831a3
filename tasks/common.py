"""Shared task plumbing: the cache policy, retries on I/O errors, and a guard that re-runs a task
whose output is gone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect.cache_policies import INPUTS, TASK_SOURCE

# A task's result is reused when its code and its inputs (paths plus content digests, never
# tensors) are unchanged (docs/design.md §7).
CACHE = INPUTS + TASK_SOURCE


def run_cached(task: Any, outputs: list[Path], **kwargs: Any) -> Any:
    """Call ``task`` with Prefect's cache, but refresh it when any expected output is missing.

    A cache hit whose files were deleted would return a summary of nothing; checking the outputs
    here keeps the cache honest without hashing the outputs on every run.
    """
    missing = not all(Path(p).exists() for p in outputs)
    return task.with_options(refresh_cache=missing)(**kwargs)


def retry_on_io_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only a failure from the file system or network (OSError: a busy NFS mount, a disk that
    was full for a moment); bad input or a bug fails at once. Every stage that writes resumes from
    its finished cases, so a retry redoes only what was lost."""
    return isinstance(state.result(raise_on_failure=False), OSError)


# Task options for stages that read and write files.
IO_RETRIES: dict[str, Any] = {"retries": 2, "retry_delay_seconds": 5, "retry_condition_fn": retry_on_io_error}
