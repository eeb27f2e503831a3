"""Every verb checks its flags and the datasets, models and folders it reads before its flow starts:
a bad one answers with one sentence naming the option and the value, exit status 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.__main__ import main
from tests import builders as b

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    ws = tmp_path_factory.mktemp("cli-inputs")
    b.write_catalog_dataset(ws, "tiny", n_cases=4)
    (ws / "preds").mkdir()
    return ws


# verb and flags (WS: the workspace, TMP: a scratch folder) -> what the one sentence must name
BAD = {
    "phantom cases": ("phantom --cases 0 --workspace TMP/new", ["phantom", "--cases", "0"]),
    "phantom seed": ("phantom --seed -1 --workspace TMP/new", ["--seed", "-1"]),
    "ingest source": ("ingest TMP/no-release --name x --workspace TMP/new", ["ingest", "SOURCE", "no-release"]),
    "ingest fraction": ("ingest WS --name x --test-fraction 1.5 --workspace TMP/new", ["--test-fraction", "1.5"]),
    "masks source": ("augment-masks --source nope --name m --workspace WS", ["--source nope", "no dataset 'nope'"]),
    "masks per-case": ("augment-masks --source tiny --name m --per-case 0 --workspace WS", ["--per-case", "0"]),
    "masks config": ("augment-masks --source tiny --name m --config TMP/none.yaml --workspace WS",
                     ["--config", "none.yaml"]),
    "train dataset": ("train-synthesizer --dataset nope --name m --workspace WS", ["--dataset nope"]),
    "train profile": ("train-synthesizer --dataset tiny --name m --profile cpu-dem --workspace WS",
                      ["cpu-dem", "cpu-demo"]),
    "train steps": ("train-synthesizer --dataset tiny --name m --steps -5 --workspace WS", ["--steps", "-5"]),
    "synthesize model": ("synthesize --model nope --masks tiny --name s --workspace WS", ["model 'nope'"]),
    "synthesize masks": ("synthesize --model nope --masks nope2 --name s --workspace WS", ["--masks nope2"]),
    "eval-synth real": ("evaluate-synthesis --real nope --synthetic tiny --workspace WS", ["--real nope"]),
    "eval-synth slices": ("evaluate-synthesis --real tiny --synthetic tiny --max-slices 1 --workspace WS",
                          ["--max-slices", "1"]),
    "eval-seg gt": ("evaluate-segmentation --gt nope --pred WS/preds --out TMP/s.csv --workspace WS", ["--gt nope"]),
    "eval-seg pred": ("evaluate-segmentation --gt tiny --pred TMP/none --out TMP/s.csv --workspace WS",
                      ["--pred", "none"]),
    "export dataset": ("export --dataset nope --format brats --out TMP/o --workspace WS", ["--dataset nope"]),
    "ablation real": ("ablation --real nope --workspace WS", ["--real nope"]),
    "ablation synthetic": ("ablation --real tiny --synthetic nope --workspace WS", ["--synthetic nope"]),
    "ablation ratios": ("ablation --real tiny --ratios 0 -1 --workspace WS", ["--ratios", ">= 0"]),
    "ablation parallel": ("ablation --real tiny --ratios 0 --max-parallel 0 --workspace WS", ["--max-parallel", "0"]),
    "datasets workspace": ("datasets --workspace TMP/worskpace", ["--workspace", "worskpace", "no such folder"]),
}


@pytest.mark.parametrize("what", sorted(BAD))
def test_a_bad_flag_or_reference_is_one_sentence_before_the_flow(what, ws, tmp_path, capsys):
    argv, named = BAD[what]
    args = argv.replace("WS", str(ws)).replace("TMP", str(tmp_path)).split()
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for text in named:
        assert text in lines[0], (text, lines[0])
    assert not list(Path(ws).rglob("prefect.db")) and not list(tmp_path.rglob("prefect.db"))  # no flow started
    assert not (tmp_path / "worskpace").exists()


@pytest.mark.parametrize("argv", ["ablation --real nope", "train-synthesizer --dataset tiny --name m --steps -5"])
def test_the_answer_comes_in_seconds_without_a_traceback(argv, ws):
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "flows", *argv.split(), "--workspace", str(ws)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    seconds = time.monotonic() - t0
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and seconds < 5, seconds


def test_a_bug_keeps_its_traceback(ws, monkeypatch):
    def broken(workspace):
        raise ValueError("a genuine bug")

    monkeypatch.setattr("data_catalog.list_datasets", broken)  # what the `datasets` verb calls
    with pytest.raises(ValueError, match="a genuine bug"):
        main(["datasets", "--workspace", str(ws)])


def test_the_installed_command_is_the_same_command_line(ws):
    exe = Path(sys.executable).parent / "gliosynth"
    if not exe.exists():
        pytest.skip("the project is not installed in this environment (make setup installs it)")
    proc = subprocess.run([str(exe), "datasets", "--workspace", str(ws)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "tiny" in proc.stdout, proc.stderr
