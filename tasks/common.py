"""Shared task plumbing: the cache policy, retries on I/O errors, and a guard that re-runs a task
whose output is gone."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy

ROOT = Path(__file__).resolve().parents[1]
CODE_PACKAGES = ("components", "data_catalog")  # the code every stage's work runs on


@functools.cache
def code_digest(packages: tuple[str, ...] = CODE_PACKAGES) -> str:
    """sha256 of the packages' Python files and YAML registries (read once per process)."""
    h = hashlib.sha256()
    for pkg in packages:
        for f in sorted((ROOT / pkg).rglob("*")):
            if f.suffix in (".py", ".yaml") and "__pycache__" not in f.parts:
                h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


@dataclass
class ComponentCode(CachePolicy):
    """The digest of the components and the data catalog: Prefect's TASK_SOURCE sees only the thin task
    wrapper, so without this a change to a stage's code would be served from the cache."""

    def compute_key(self, task_ctx: Any, inputs: Any, flow_parameters: Any, **kwargs: Any) -> str:
        return code_digest()


# A task's result is reused when its code (the task and every component) and its inputs (paths plus
# content digests, never tensors) are unchanged (docs/design.md §7).
CACHE = INPUTS + TASK_SOURCE + ComponentCode()


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
