"""The MLflow comparison dashboard: the ablation's parent run spans and describes it, and the printed
link opens its configurations side by side, checked in headless Chromium against a real `mlflow server`.

The store is written by the ablation's own tracking code (parent run, child runs, summary); only
nnU-Net's training is left out: each configuration's per-case scores are set here, so the Dice the
page must show is known.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import asdict
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from components.ablation import AblationConfig, ConfigResult, plan_mixes, segmentation_metric_means
from components.ablation_report import close_parent_run, parent_note
from components.dashboard import chromium, dashboard_hint, find_chromium, mlflow_server, screenshots
from components.tracking import (
    EXPERIMENT_KIND_TAG,
    MODEL_TRAINING,
    client_for,
    dashboard_links,
    finite_metrics,
    resume_run,
    start_run,
)
from tasks.ablation import parent_run_task, summary_task
from tests import builders as b

NO_BROWSER = pytest.mark.skipif(find_chromium() is None, reason="no Chromium on PATH or $CHROMIUM (Debian: "
                                "apt-get install chromium; .ci/run installs it when it runs as root)")

# Mean Dice per configuration (ratio 0, 1, 2) and region: what the compare page must show.
DICE = {"WT": (0.712, 0.745, 0.768), "TC": (0.634, 0.651, 0.602), "ET": (0.512, 0.557, 0.581)}


def _log_configuration(ws: Path, ablation: str, cfg: AblationConfig, plan: dict, parent: str, i: int) -> dict:
    """A configuration's child run as run_configuration logs it, with per-case scores set here."""
    rows = []
    n = len(plan["test_ids"])
    for k, case in enumerate(plan["test_ids"]):
        off = 0.01 * (k - (n - 1) / 2)  # cases spread around the mean, which stays DICE
        for region, values in DICE.items():
            rows.append({"case_id": case, "region": region, "dice": values[i] + off, "hd95": 4.0 - i + off})
    out = ws / "ablations" / ablation / plan["name"]
    out.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows)
    table.to_csv(out / "per_case.csv", index=False)
    metrics = segmentation_metric_means(table)
    params = {"config": plan["name"], "ratio": plan["ratio"], "seed": plan["seed"], "n_real": len(plan["real_ids"]),
              "n_synthetic": len(plan["synthetic_ids"]), "synthetic_only": plan["synthetic_only"]}
    with start_run(ws, cfg.experiment, plan["name"], parent_run_id=parent, tags={"ablation": ablation},
                   params=params) as run:
        run.log_metrics(finite_metrics(metrics))
        run.log_artifact(out / "per_case.csv")
    return asdict(ConfigResult(name=plan["name"], status="ok", params=params, metrics=metrics, run_id=run.run_id,
                               per_case_csv=str(out / "per_case.csv")))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A finished three-configuration ablation ``dash`` in a workspace's MLflow store."""
    ws = tmp_path_factory.mktemp("dash") / "ws"
    real, syn = b.write_real_and_synthetic(ws, n_real=8)  # 3 test cases: intervals defined
    cfg = AblationConfig(ratios=(0, 1, 2), schedule="tiny", bootstrap_resamples=200)
    plans = [p.to_dict() for p in plan_mixes(real, syn, cfg)]
    parent = parent_run_task.fn(workspace=str(ws), ablation="dash", config=cfg, real="real",
                                real_sha256=real.manifest_digest, synthetic="syn",
                                synthetic_sha256=syn.manifest_digest, plans=plans,
                                synthesis_metrics={"fid2d_t1n": 1.5, "fid2d_t1n_floor": 1.2})
    results = [_log_configuration(ws, "dash", cfg, p, parent, i) for i, p in enumerate(plans)]
    summary_task.fn(workspace=str(ws), ablation="dash", config=cfg, parent_run_id=parent, results=results)
    status = close_parent_run(str(ws), parent, n_failed=0)
    return {"ws": ws, "parent": parent, "status": status, "names": [p["name"] for p in plans],
            "n_test": len(plans[0]["test_ids"]),
            "metrics": {r["name"]: r["metrics"] for r in results}}


def test_parent_run_spans_the_configurations_and_describes_the_ablation(store):
    client = client_for(store["ws"])
    parent = client.get_run(store["parent"])
    exp = client.get_experiment(parent.info.experiment_id)
    assert exp.tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING  # the UI's model-training kind, not GenAI
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{store['parent']}'")
    assert sorted(r.info.run_name for r in children) == sorted(store["names"])
    assert store["status"] == parent.info.status == "FINISHED"
    assert parent.info.start_time <= min(r.info.start_time for r in children)
    assert parent.info.end_time >= max(r.info.end_time for r in children)
    m = parent.data.metrics
    assert m["fid2d_t1n"] == 1.5 and m["fid2d_t1n_floor"] == 1.2
    assert m["effect_r1_delta_dice_WT"] == pytest.approx(DICE["WT"][1] - DICE["WT"][0])
    assert {"effect_r2_delta_dice_ET_ci_low", "effect_r2_delta_dice_ET_ci_high"} <= set(m)
    arts = {a.path for a in client.list_artifacts(store["parent"])}
    assert {"effect.csv", "dice_vs_ratio.png", "summary.csv", "per_case.csv"} <= arts
    note = parent.data.tags["mlflow.note.content"]
    # the answer first (the table, right under the heading), then what was compared, on which data
    assert note.index("### Effect of synthetic cases") < note.index("| ratio |") < note.index("### What was compared")
    assert "| 1 | 0.745 | +0.033 [" in note  # ratio 1, WT: its Dice, then 0.745 - 0.712 with its interval
    answer = note.split("### Effect of synthetic cases")[1].strip().splitlines()[0]  # shown before 'Show more'
    assert answer.startswith("**ΔDice WT against real only, by ratio:** 1: +0.033 [") and "; 2: " in answer
    assert f"1 seed(s) per ratio, {store['n_test']} held-out real test cases" in note
    assert "`real`" in note and "`syn`" in note and "ratios 0, 1, 2" in note
    assert "phantom" not in note.lower()  # this real set is not the phantom


def test_the_description_of_a_phantom_ablation_says_it_is_a_pipeline_check(tmp_path):
    from components.tracking import PHANTOM_NOTE
    from data_catalog import open_dataset

    b.write_catalog_dataset(tmp_path, "ph", n_cases=4, kind="phantom")
    note = parent_note("demo", AblationConfig(ratios=(0,), schedule="tiny"), open_dataset(tmp_path, "ph"), None, [])
    assert PHANTOM_NOTE in note and "never a claim about BraTS" in note.split("\n\n")[1]


def test_a_failed_configuration_fails_the_parent_run_and_a_rerun_resumes_it(tmp_path):
    ws = tmp_path / "ws"
    with start_run(ws, "gliosynth-ablation", "abl", tags={"ablation": "abl", "role": "parent"}) as parent:
        pass
    with pytest.raises(RuntimeError), start_run(ws, "gliosynth-ablation", "r0-s0", parent_run_id=parent.run_id,
                                                tags={"ablation": "abl"}):
        raise RuntimeError("nnU-Net failed")
    client = client_for(ws)
    assert resume_run(ws, parent.run_id) and client.get_run(parent.run_id).info.status == "RUNNING"
    assert close_parent_run(str(ws), parent.run_id, n_failed=1) == "FAILED"
    assert client.get_run(parent.run_id).info.status == "FAILED"
    assert not resume_run(ws, "0" * 32)  # a store that lost the run: the flow opens a new one
    links = dashboard_links(ws, port=5001)
    assert links["ablation"] == "abl" and links["parent"].startswith("http://127.0.0.1:5001/#/experiments/")


def test_the_link_is_the_latest_ablations_compare_page(store, capsys):
    from flows.__main__ import main

    assert main(["dashboard-link", "--workspace", str(store["ws"]), "--port", "5123"]) == 0
    url = _printed_compare_link(capsys.readouterr().out)
    client = client_for(store["ws"])
    links = dashboard_links(store["ws"], port=5123)
    assert url == links["compare"] and links["parent"].endswith(f"/runs/{store['parent']}?workflowType=machine_learning")
    assert url.startswith("http://127.0.0.1:5123/#/compare-runs?runs=%5B%22") and "workflowType=machine_learning" in url
    names = [client.get_run(r).info.run_name for r in links["run_ids"]]
    assert names == store["names"]  # one run per configuration, ordered by ratio
    # the closing lines of `pipeline` and `ablation`: how to serve the UI, then this ablation's links
    hint = dashboard_hint(store["ws"], store["parent"])
    assert "make dashboard" in hint[0] and dashboard_links(store["ws"], parent_run_id=store["parent"])["compare"] in (
        "\n".join(hint))


def test_without_a_store_the_verb_says_so(tmp_path, capsys):
    from flows.__main__ import main

    assert main(["dashboard-link", "--workspace", str(tmp_path / "none")]) == 0
    assert "no MLflow store" in capsys.readouterr().out


def test_make_dashboard_prints_the_link_before_serving():
    root = Path(__file__).resolve().parents[1]
    dry = subprocess.run(["make", "-n", "-C", str(root), "dashboard", "WS=/tmp/ws-x", "MLFLOW_PORT=5999"],
                         capture_output=True, text=True, check=True).stdout
    link, serve = dry.index("dashboard-link --workspace /tmp/ws-x --port 5999"), dry.index("mlflow server")
    assert link < serve and "--host 127.0.0.1 --port 5999" in dry


@NO_BROWSER
def test_the_printed_link_shows_every_configuration_and_its_dice_in_a_browser(store, capsys, tmp_path):
    from flows.__main__ import main

    with mlflow_server(store["ws"]) as port:
        assert main(["dashboard-link", "--workspace", str(store["ws"]), "--port", str(port)]) == 0
        url = _printed_compare_link(capsys.readouterr().out)
        texts = _texts(chromium(url, dump_dom=True))
        table = _compare_table(texts)
        # every configuration, in its own column, with the Dice its child run logged
        assert list(table["Run Name:"]) == store["names"]
        for j, name in enumerate(store["names"]):
            for metric in ("dice_WT", "dice_TC", "dice_ET", "dice_mean"):
                assert table[metric][j] == _as_mlflow_shows(store["metrics"][name][metric]), (name, metric)
        assert [table["dice_WT"][j] for j in range(3)] == [_as_mlflow_shows(v) for v in DICE["WT"]]
        assert "Model registry" in texts and "Evaluation runs" not in texts  # the model-training view
        # the parent run's page opens on its description: the effect table first
        parent = _texts(chromium(dashboard_links(store["ws"], port=port)["parent"], dump_dom=True))
        assert "Effect of synthetic cases" in parent and "Description" in parent
        # the screenshots of both pages, as `dashboard-link --screenshot DIR` takes them
        shots = screenshots(store["ws"], tmp_path / "shots", server_port=port, window=(1280, 900))
    assert [p.name for p in shots] == ["compare-runs.png", "parent-run.png"]
    for p in shots:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a rendered page, not a blank one


# --------------------------------------------------------------------------- reading what the browser rendered
def _printed_compare_link(out: str) -> str:
    m = re.search(r"compare the configurations: (\S+)", out)
    assert m, out
    return m.group(1)


class _Text(HTMLParser):
    def __init__(self):
        super().__init__()
        self.texts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        self._skip += tag in ("script", "style")

    def handle_endtag(self, tag):
        self._skip -= tag in ("script", "style")

    def handle_data(self, data):
        if not self._skip and data.strip():
            self.texts.append(data.strip())


def _texts(html: str) -> list[str]:
    p = _Text()
    p.feed(html)
    return p.texts


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _compare_table(texts: list[str]) -> dict[str, list[str]]:
    """MLflow's compare page as {row: one cell per run}: the run names, and the metrics table (its
    names column comes first in the page, then each metric's row of values)."""
    i = texts.index("Run Name:")
    names = texts[i + 1: texts.index("Start Time:", i)]
    table = {"Run Name:": names}
    j = next(k for k in range(len(texts) - 1) if texts[k] == "Metrics" and texts[k + 1] == "Show diff only") + 2
    metrics = []
    while not _is_number(texts[j]):
        metrics.append(texts[j])
        j += 1
    for m in metrics:
        table[m], j = texts[j: j + len(names)], j + len(names)
    return table


def _as_mlflow_shows(v: float) -> str:
    """A metric value as MLflow's UI prints it (Utils.formatMetric: three decimals below 10)."""
    s = repr(round(v, 3))
    return s[:-2] if s.endswith(".0") else s
