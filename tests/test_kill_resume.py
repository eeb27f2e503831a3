"""A run killed (SIGKILL) in the middle of synthesis resumes from the last finished case, loses
nothing and leaves no half-written case visible."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

from components.synthesis.config import SynthesizeConfig
from components.synthesis.training import train_synthesizer
from components.synthesis.writer import synthesize_dataset
from data_catalog import MODALITIES, open_dataset
from tests import builders as b

ROOT = Path(__file__).resolve().parents[1]


def _visible_cases(cases: Path) -> list[Path]:
    return sorted(p for p in cases.iterdir() if not p.name.startswith(".")) if cases.is_dir() else []


def _digest(case_dir: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(case_dir.glob("*.nii.gz"))}


def test_killed_synthesis_resumes_from_the_last_finished_case(tmp_path):
    ws = tmp_path
    b.write_catalog_dataset(ws, "tiny", n_cases=4)
    train_synthesizer(ws, "tiny", "m", b.tiny_synth_config(steps=2, montage_cases=0), track=False, progress=False)
    # 50 DDIM steps make each case take long enough to be caught in the middle.
    code = (
        "import torch; torch.set_num_threads(1)\n"
        "from components.synthesis.config import SynthesizeConfig\n"
        "from components.synthesis.writer import synthesize_dataset\n"
        f"synthesize_dataset({str(ws)!r}, 'm', 'tiny', 'out', SynthesizeConfig(sampler='ddim', steps=50, montage_cases=0),"
        " progress=False)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    cases = ws / "datasets" / "out" / "cases"
    t0 = time.monotonic()
    try:
        while not _visible_cases(cases) and proc.poll() is None and time.monotonic() - t0 < 300:
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()
    done = _visible_cases(cases)
    assert 1 <= len(done) < 4, "the run should have been killed after its first finished case"
    assert not (ws / "datasets" / "out" / "dataset.json").exists()  # never registered half-way
    # Every visible case is whole: four modalities, the seg and the head, all readable.
    for d in done:
        names = {p.name for p in d.glob("*.nii.gz")}
        assert names == {f"{d.name}-{k}.nii.gz" for k in (*MODALITIES, "seg", "head")}
    before = {d.name: _digest(d) for d in done}

    s = synthesize_dataset(ws, "m", "tiny", "out", SynthesizeConfig(sampler="ddim", steps=50, montage_cases=0), progress=False)
    assert (s.n_reused, s.n_written) == (len(done), 4 - len(done))
    ds = open_dataset(ws, "out")
    assert (ds.manifest["status"] == "ok").all() and len(ds.manifest) == 4
    for name, digests in before.items():
        assert _digest(cases / name) == digests  # finished cases were kept, not redone
    assert not [p for p in cases.iterdir() if p.name.startswith(".")]  # no temp folder left behind


def test_killed_training_resumes_from_the_last_checkpoint(tmp_path):
    from components.synthesis.store import model_paths
    from components.synthesis.training import read_log

    ws = tmp_path
    b.write_catalog_dataset(ws, "tiny", n_cases=4)
    steps = 60
    code = (
        "import torch; torch.set_num_threads(1)\n"
        "from components.synthesis.training import train_synthesizer\n"
        "from tests import builders as b\n"
        f"train_synthesizer({str(ws)!r}, 'tiny', 'm', b.tiny_synth_config(steps={steps}, checkpoint_every=2, "
        "montage_cases=0), resume='auto', track=False, progress=False)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    paths = model_paths(ws, "m")
    t0 = time.monotonic()
    try:  # kill it once a few checkpoints are on disk, while it is still training
        while proc.poll() is None and time.monotonic() - t0 < 300:
            ck = paths.list_checkpoints() if paths.root.is_dir() else []
            if ck and ck[-1][0] >= 4:
                break
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()
    last = paths.list_checkpoints()[-1][0]
    assert 4 <= last < steps, "the run should have been killed in the middle of training"
    r = train_synthesizer(ws, "tiny", "m", b.tiny_synth_config(steps=steps, checkpoint_every=2, montage_cases=0),
                          resume="auto", track=False, progress=False)
    assert (r.start_step, r.steps) == (last, steps)
    assert [int(x["step"]) for x in read_log(paths.log)] == list(range(1, steps + 1))  # no step lost or repeated
    assert not [p for p in paths.root.rglob("*") if p.name.startswith(".")]  # no temp file left behind
