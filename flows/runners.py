"""Task runners by name, so the same flows fan out on threads here or on a Dask cluster elsewhere."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class RunnerConfig(BaseModel):
    """How configurations (and other fan-outs) run: nothing in the flows changes between these."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["threads", "dask"] = Field("threads", description="threads (this machine) or dask (prefect-dask)")
    max_parallel: int = Field(1, ge=1, description="threads, or Dask workers of a local cluster")
    dask_address: str | None = Field(None, description="scheduler address of an existing Dask cluster")
    dask_processes: bool = Field(False, description="local Dask cluster: worker processes instead of threads")


def make_task_runner(cfg: RunnerConfig) -> Any:
    if cfg.kind == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=cfg.max_parallel)
    if cfg.kind == "dask":
        from prefect_dask import DaskTaskRunner

        if cfg.dask_address:
            return DaskTaskRunner(address=cfg.dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": cfg.max_parallel, "threads_per_worker": 1,
                                              "processes": cfg.dask_processes, "dashboard_address": None})
    raise ValueError(f"unknown task runner {cfg.kind!r}: expected 'threads' or 'dask'")
