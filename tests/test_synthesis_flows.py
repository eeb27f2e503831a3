"""End to end through the command line: train-synthesizer then synthesize (Prefect + MLflow)."""

from __future__ import annotations

import pytest

from data_catalog import open_dataset
from flows.__main__ import main
from tests import builders as b

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_train_then_synthesize_through_the_cli(prefect_harness, tmp_path, capsys):
    ws = str(tmp_path)
    b.write_catalog_dataset(tmp_path, "tiny", n_cases=4)
    b.write_catalog_dataset(tmp_path, "tmasks", n_cases=2, kind="masks")

    # sampling before training is refused with one clear line
    assert main(["synthesize", "--workspace", ws, "--model", "m", "--masks", "tmasks", "--name", "syn"]) == 2
    assert "no model 'm'" in capsys.readouterr().err

    assert main(["train-synthesizer", "--workspace", ws, "--dataset", "tiny", "--profile", "tiny", "--name", "m",
                 "--steps", "3"]) == 0
    out = capsys.readouterr().out
    assert "trained to step 3" in out and "montage:" in out
    model = tmp_path / "models" / "m"
    for f in ("config.json", "stats.json", "ema.pt", "train_log.csv", "montage.png"):
        assert (model / f).is_file(), f
    assert list((model / "checkpoints").glob("step_*.pt"))

    from mlflow import MlflowClient

    from components.tracking import tracking_uri

    assert tracking_uri(ws) == f"sqlite:///{tmp_path.resolve()}/mlflow/mlflow.db"
    client = MlflowClient(tracking_uri=tracking_uri(ws))
    exp = client.get_experiment_by_name("synthesizer")
    assert exp.artifact_location.startswith((tmp_path / "mlflow" / "artifacts").resolve().as_uri())
    run = client.search_runs([exp.experiment_id])[0]
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 3
    assert {"montage.png", "loss.png"} <= {a.path for a in client.list_artifacts(run.info.run_id)}

    assert main(["synthesize", "--workspace", ws, "--model", "m", "--masks", "tmasks", "--name", "syn",
                 "--steps", "3", "--seed", "7", "--batch", "2", "--montage-cases", "1"]) == 0
    ds = open_dataset(ws, "syn")
    assert ds.info["kind"] == "synthetic" and len(ds.ok_cases()) == 2
    assert ds.info["config"]["steps"] == 3 and ds.info["sampler"] == "ddim"
    assert "synthetic cases" in capsys.readouterr().out
