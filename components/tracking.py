"""MLflow helpers: a sqlite tracking store and artifacts inside the workspace (docs/design.md §2, §7).

Uses ``MlflowClient`` with an explicit tracking URI rather than MLflow's process-global active run,
so two stages (or tests) in one process never write into each other's runs.

    with start_run(ws, "synthesizer", run_name="demo", params={...}) as run:
        run.log_metrics({"loss": 0.1}, step=1)
        run.log_artifact(path)

Experiments are created as MLflow 3 model-training experiments, and ``dashboard_links`` builds the
UI links an ablation is read through (its configurations on MLflow's compare page, its parent run).
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

    def set_note(self, markdown: str) -> None:
        """The run's description (MLflow's markdown note, shown first on the run's page)."""
        set_note(self.client, self.run_id, markdown)


def set_note(client: Any, run_id: str, markdown: str) -> None:
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

    client.set_tag(run_id, MLFLOW_RUN_NOTE, markdown)


# MLflow 3 sorts experiments into kinds; this tag makes the UI open an experiment on its runs
# (model training) rather than on the GenAI overview of traces and token usage.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"


def client_for(workspace: str | Path) -> Any:
    """An ``MlflowClient`` on the workspace store."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri(workspace))


def experiment_id(client: Any, workspace: str | Path, experiment: str) -> str:
    """Id of ``experiment`` in the workspace store, created as a model-training experiment if missing.

    An experiment made before the kind was set gets it here; one a user switched to another kind in
    the UI keeps that kind.
    """
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return client.create_experiment(experiment, artifact_location(workspace, experiment),
                                        tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
    if EXPERIMENT_KIND_TAG not in exp.tags:
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    return exp.experiment_id


def open_run(workspace: str | Path, experiment: str, run_name: str | None = None, tags: dict[str, Any] | None = None,
             params: dict[str, Any] | None = None, parent_run_id: str | None = None) -> RunHandle:
    """Create a run that stays RUNNING until ``end_run``: for a run that spans several tasks (the
    ablation's parent run is open while its configurations train)."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

    client = client_for(workspace)
    exp_id = experiment_id(client, workspace, experiment)
    all_tags = {k: str(v) for k, v in (tags or {}).items()}
    if run_name:
        all_tags[MLFLOW_RUN_NAME] = run_name
    if parent_run_id:
        all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    run = client.create_run(exp_id, tags=all_tags, run_name=run_name)
    handle = RunHandle(client, run.info.run_id)
    if params:
        handle.log_params(params)
    return handle


def end_run(workspace: str | Path, run_id: str, status: str = "FINISHED") -> None:
    """End a run opened with ``open_run``: FINISHED, FAILED or KILLED, ended now."""
    client_for(workspace).set_terminated(run_id, status=status)


def resume_run(workspace: str | Path, run_id: str) -> bool:
    """Mark an ended run RUNNING again (a re-run that continues it); False when the store has no such run."""
    from mlflow.exceptions import MlflowException

    client = client_for(workspace)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return False
    if run.info.lifecycle_stage != "active":
        return False
    if run.info.status != "RUNNING":
        client.update_run(run_id, status="RUNNING")
    return True


@contextlib.contextmanager
def start_run(workspace: str | Path, experiment: str, run_name: str | None = None, tags: dict[str, Any] | None = None,
              params: dict[str, Any] | None = None, parent_run_id: str | None = None) -> Iterator[RunHandle]:
    """Create (or reuse) ``experiment`` in the workspace store and run the block inside a new run.

    The run ends FINISHED, or FAILED when the block raises. ``parent_run_id`` makes it a child run
    (ablation: one parent per sweep, one child per configuration).
    """
    handle = open_run(workspace, experiment, run_name, tags=tags, params=params, parent_run_id=parent_run_id)
    status = "FAILED"
    try:
        yield handle
        status = "FINISHED"
    finally:
        try:
            handle.flush()
        finally:
            handle.client.set_terminated(handle.run_id, status=status)


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


# --------------------------------------------------------------------------- links into the MLflow UI
DEFAULT_EXPERIMENT = "gliosynth-ablation"


# The UI's own switch between its GenAI and its model-training views (it defaults to GenAI whatever
# the experiment's kind): every link below asks for the model-training one.
MODEL_TRAINING_VIEW = "workflowType=machine_learning"


def ui_root(host: str = "127.0.0.1", port: int = 5000) -> str:
    return f"http://{host}:{port}/"


def experiment_url(experiment_id: str, host: str = "127.0.0.1", port: int = 5000) -> str:
    """The experiment's runs table."""
    return f"{ui_root(host, port)}#/experiments/{experiment_id}/runs?{MODEL_TRAINING_VIEW}"


def run_url(experiment_id: str, run_id: str, host: str = "127.0.0.1", port: int = 5000) -> str:
    """The run's own page (its description, metrics and artifacts)."""
    return f"{ui_root(host, port)}#/experiments/{experiment_id}/runs/{run_id}?{MODEL_TRAINING_VIEW}"


def compare_runs_url(run_ids: list[str], experiment_ids: list[str], host: str = "127.0.0.1", port: int = 5000) -> str:
    """MLflow's compare page for these runs: parameters and metrics side by side, with a parallel
    coordinates plot. The lists are JSON, percent-encoded (the UI decodes and parses them)."""
    import json
    from urllib.parse import quote

    def enc(ids: list[str]) -> str:
        return quote(json.dumps(list(ids), separators=(",", ":")), safe="")

    return (f"{ui_root(host, port)}#/compare-runs?runs={enc(run_ids)}&experiments={enc(experiment_ids)}"
            f"&{MODEL_TRAINING_VIEW}")


def ablation_parent_runs(client: Any, experiment: str | None = None) -> list[Any]:
    """Every ablation parent run (tag ``role=parent``) in the store, or in ``experiment`` only."""
    if experiment is not None:
        exp = client.get_experiment_by_name(experiment)
        ids = [exp.experiment_id] if exp is not None else []
    else:
        ids = [e.experiment_id for e in client.search_experiments()]
    if not ids:
        return []
    runs = client.search_runs(ids, "tags.role = 'parent'", max_results=1000)
    return [r for r in runs if "ablation" in r.data.tags]


def configuration_runs(client: Any, parent: Any) -> list[Any]:
    """The ablation's configurations: the latest child run of each name (a configuration re-run after
    a failure has a newer run), ordered real+synthetic before synthetic-only, then by ratio and seed."""
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                  max_results=1000, order_by=["attributes.start_time ASC"])
    latest: dict[str, Any] = {}
    for run in children:
        latest[run.info.run_name or run.info.run_id] = run

    def order(run: Any) -> tuple:
        p = run.data.params
        try:
            return (p.get("synthetic_only") == "True", float(p.get("ratio", "nan")), int(p.get("seed", 0)),
                    run.info.run_name or "")
        except ValueError:
            return (True, float("inf"), 0, run.info.run_name or "")

    return sorted(latest.values(), key=order)


def _last_activity(parent: Any, children: list[Any]) -> int:
    times = [parent.info.start_time or 0, parent.info.end_time or 0]
    for c in children:
        times += [c.info.start_time or 0, c.info.end_time or 0]
    return max(times)


def latest_ablation(workspace: str | Path, experiment: str | None = None) -> tuple[Any, list[Any]] | None:
    """The ablation with the most recent activity (its parent run, or a configuration run under it)
    and its configuration runs; None when the store holds no ablation."""
    client = client_for(workspace)
    found = [(p, configuration_runs(client, p)) for p in ablation_parent_runs(client, experiment)]
    if not found:
        return None
    return max(found, key=lambda pc: _last_activity(*pc))


def dashboard_links(workspace: str | Path, host: str = "127.0.0.1", port: int = 5000,
                    parent_run_id: str | None = None, experiment: str | None = None) -> dict[str, Any]:
    """Where the MLflow UI shows an ablation: ``compare`` (its configurations side by side), ``parent``
    (the parent run's page: description, effects, plot), ``runs`` (the experiment's runs table),
    ``root`` (the UI), and ``ablation``,
    ``experiment_id``, ``run_ids``. Without ``parent_run_id`` the latest ablation in the store;
    ``compare`` and ``parent`` are None when there is none (or it has no configuration run yet)."""
    client = client_for(workspace)
    out: dict[str, Any] = {"root": ui_root(host, port), "compare": None, "parent": None, "runs": None,
                           "ablation": None, "experiment_id": None, "run_ids": []}
    if parent_run_id is not None:
        parent = client.get_run(parent_run_id)
        children = configuration_runs(client, parent)
    else:
        found = latest_ablation(workspace, experiment)
        if found is None:
            return out
        parent, children = found
    exp_id = parent.info.experiment_id
    out.update(ablation=parent.data.tags.get("ablation", parent.info.run_name), experiment_id=exp_id,
               parent=run_url(exp_id, parent.info.run_id, host, port), runs=experiment_url(exp_id, host, port),
               run_ids=[c.info.run_id for c in children])
    if children:
        out["compare"] = compare_runs_url(out["run_ids"], [exp_id], host, port)
    return out
