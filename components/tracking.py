"""MLflow helpers: a sqlite tracking store and artifacts inside the workspace (docs/design.md §2, §7).

Uses ``MlflowClient`` with an explicit tracking URI rather than MLflow's process-global active run,
so two stages (or tests) in one process never write into each other's runs.

    with start_run(ws, "synthesizer", run_name="demo", params={...}) as run:
        run.log_metrics({"loss": 0.1}, step=1)
        run.log_artifact(path)
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

def tracking_uri(workspace: str | Path) -> str:
    """``sqlite:///<ws>/mlflow/mlflow.db`` (absolute path; the folder is created)."""
    d = Path(workspace).resolve() / "mlflow"
    d.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{d / 'mlflow.db'}"


def artifact_location(workspace: str | Path, experiment: str) -> str:
    """Artifact root of an experiment: ``<ws>/mlflow/artifacts/<experiment>`` as a file URI."""
    d = Path(workspace).resolve() / "mlflow" / "artifacts" / experiment
    d.mkdir(parents=True, exist_ok=True)
    return d.as_uri()


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = str(v)[:6000]
    return out


class RunHandle:
    """One MLflow run: buffered metrics, params, artifacts."""

    def __init__(self, client: Any, run_id: str, flush_every: int = 200):
        self.client = client
        self.run_id = run_id
        self._buffer: list[Any] = []
        self._flush_every = flush_every

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        flat = _flatten(params)
        items = [Param(k, v) for k, v in flat.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self._buffer.extend(Metric(k, float(v), ts, int(step or 0)) for k, v in metrics.items())
        if len(self._buffer) >= self._flush_every:
            self.flush()

    def flush(self) -> None:
        while self._buffer:
            batch, self._buffer = self._buffer[:1000], self._buffer[1000:]
            self.client.log_batch(self.run_id, metrics=batch)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.flush()
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))


@contextlib.contextmanager
def start_run(workspace: str | Path, experiment: str, run_name: str | None = None, tags: dict[str, Any] | None = None,
              params: dict[str, Any] | None = None, parent_run_id: str | None = None) -> Iterator[RunHandle]:
    """Create (or reuse) ``experiment`` in the workspace store and run the block inside a new run.

    The run ends FINISHED, or FAILED when the block raises. ``parent_run_id`` makes it a child run
    (ablation: one parent per sweep, one child per configuration).
    """
    from mlflow import MlflowClient
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

    client = MlflowClient(tracking_uri=tracking_uri(workspace))
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment, artifact_location(workspace, experiment))
    all_tags = {k: str(v) for k, v in (tags or {}).items()}
    if run_name:
        all_tags[MLFLOW_RUN_NAME] = run_name
    if parent_run_id:
        all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    run = client.create_run(exp_id, tags=all_tags, run_name=run_name)
    handle = RunHandle(client, run.info.run_id)
    if params:
        handle.log_params(params)
    status = "FAILED"
    try:
        yield handle
        status = "FINISHED"
    finally:
        try:
            handle.flush()
        finally:
            client.set_terminated(run.info.run_id, status=status)


PHANTOM_NOTE = "Measured on the embedded phantom: a pipeline check, never a claim about BraTS."


def finite_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Numeric, finite values only: NaN means 'not measured' and is left out of the store."""
    import math

    out = {}
    for k, v in metrics.items():
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out[k] = f
    return out
