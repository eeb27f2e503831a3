"""One GPU per nnU-Net step when ablation configurations run side by side.

Configurations that fan out on threads (or on a Dask cluster's threads) share this process, and
every nnU-Net step runs in a child process: the pool hands each step one free GPU, which the child
sees alone through ``CUDA_VISIBLE_DEVICES`` (held by a file lock, so separate worker processes
share the count too), and makes a configuration wait while all are busy, so
``max_parallel`` above the number of GPUs never puts two trainings on one card. On a cluster whose
workers each get their own GPU (their ``CUDA_VISIBLE_DEVICES`` set by the scheduler) every worker
sees one GPU and uses it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


class GpuPool:
    """A fixed set of GPU ids handed out one at a time, across threads and processes of this machine.

    Each id is held by an exclusive lock on a file in the temp folder, so Dask worker processes
    (each with a pool of its own) never hand out the same GPU twice either.
    """

    def __init__(self, ids: list[str], lock_dir: str | os.PathLike | None = None, poll_s: float = 1.0):
        self.ids = list(ids)
        self.lock_dir = Path(lock_dir or tempfile.gettempdir())
        self.poll_s = poll_s

    @contextlib.contextmanager
    def claim(self) -> Iterator[str | None]:
        """A free GPU id for the block (waiting while none is free), or None where there is no GPU."""
        if not self.ids:
            yield None
            return
        while True:
            for gpu in self.ids:
                fh = open(self.lock_dir / f"gliosynth-gpu-{allocation()}{gpu}.lock", "a")  # noqa: SIM115 - held for the block
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    fh.close()
                    continue
                try:
                    yield gpu
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)
                    fh.close()
                return
            time.sleep(self.poll_s)


def allocation() -> str:
    """The scheduler allocation this process runs in ("" outside one): a batch scheduler numbers each job's
    GPUs from 0, so two jobs on one node both say GPU 0 of different cards, and their locks must differ."""
    job = os.environ.get("SLURM_JOB_ID") or os.environ.get("PBS_JOBID") or os.environ.get("LSB_JOBID") or ""
    return f"{job}-" if job else ""


def visible_gpu_ids() -> list[str]:
    """The GPUs this process may use, as ids for CUDA_VISIBLE_DEVICES (respecting one already set)."""
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None and env.strip():
        ids = [i.strip() for i in env.split(",") if i.strip()]
        return ids[:n] if n else []
    return [str(i) for i in range(n)]


_POOL: GpuPool | None = None
_POOL_LOCK = threading.Lock()


def gpu_pool() -> GpuPool:
    """The process-wide pool over the visible GPUs (built on first use)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = GpuPool(visible_gpu_ids())
            if _POOL.ids:
                log.info("nnU-Net steps get one GPU each from %d visible: %s", len(_POOL.ids), ",".join(_POOL.ids))
        return _POOL
