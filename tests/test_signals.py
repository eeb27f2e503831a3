"""A SIGTERM ends a command-line run within seconds: one line, exit status 143, no process left behind.

Real runs of ``python -m flows phantom`` in a fresh environment (no PREFECT_* variables), each in its
own process group, signalled once the flow has begun: to the whole group (a scheduler's or a shell's
`kill -- -PGID`, where Prefect's temporary server dies with the run), to the main process only, and
Ctrl-C (SIGINT to the group, as a terminal sends it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from flows.serve import ROOT
from flows.signals import EXIT_STATUS, MESSAGE

EXIT_WITHIN_S = 12.0  # grace (5 s) + crash record (<= 2 s) + ending children (<= 1 s) + a loaded machine


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
    return env


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _signal_a_running_phantom(tmp_path: Path, sig: int, to_group: bool) -> tuple[int | None, float, str, Path, bool]:
    ws = tmp_path / "ws"
    proc = subprocess.Popen([sys.executable, "-m", "flows", "phantom", "--workspace", str(ws), "--cases", "4",
                             "--spacing", "4"], cwd=ROOT, env=_clean_env(), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        t0 = time.monotonic()
        while not any("Beginning flow run" in line for line in lines):
            assert proc.poll() is None, "".join(lines)[-3000:]
            assert time.monotonic() - t0 < 120, "the flow did not begin within 120 s:\n" + "".join(lines)[-3000:]
            time.sleep(0.2)
        time.sleep(1.5)  # into the first cases
        t_sig = time.monotonic()
        if to_group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            rc = None
        took = time.monotonic() - t_sig
        t_gone = time.monotonic()
        while _group_alive(proc.pid) and time.monotonic() - t_gone < 3:
            time.sleep(0.1)
        left = _group_alive(proc.pid)
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        reader.join(timeout=5)
    return rc, took, "".join(lines), ws, left


def _assert_cases_complete(ws: Path) -> None:
    """Every case folder in place holds all five volumes, each readable to the last byte."""
    for case in sorted((ws / "datasets" / "phantom" / "cases").glob("[!.]*")):
        files = sorted(case.glob("*.nii.gz"))
        assert len(files) == 5, f"{case.name}: {[f.name for f in files]}"
        for f in files:
            assert np.isfinite(np.asanyarray(nib.load(f).dataobj)).all(), f


@pytest.mark.parametrize("to_group", [True, pytest.param(False, marks=pytest.mark.slow)],
                         ids=["process-group", "main-process"])
def test_sigterm_ends_a_run_within_seconds_with_one_line(tmp_path, to_group):
    rc, took, out, ws, left = _signal_a_running_phantom(tmp_path, signal.SIGTERM, to_group)
    assert rc is not None and took < EXIT_WITHIN_S, f"still running {took:.1f} s after SIGTERM:\n{out[-3000:]}"
    assert not left, "processes of the run outlived it (e.g. Prefect's temporary server)"
    assert rc == EXIT_STATUS, out[-3000:]
    assert out.count(MESSAGE) == 1, out[-3000:]
    assert "Error logging to API" not in out and "Traceback" not in out, out[-3000:]
    _assert_cases_complete(ws)


@pytest.mark.slow
def test_ctrl_c_ends_a_run_within_seconds(tmp_path):
    rc, took, out, ws, left = _signal_a_running_phantom(tmp_path, signal.SIGINT, to_group=True)
    assert rc is not None and took < EXIT_WITHIN_S, f"still running {took:.1f} s after Ctrl-C:\n{out[-3000:]}"
    assert not left, "processes of the run outlived it (e.g. Prefect's temporary server)"
    assert rc in (128 + signal.SIGINT, -signal.SIGINT), out[-3000:]
    assert out.count("gliosynth: stopped by Ctrl-C (SIGINT)") == 1, out[-3000:]
    assert "Error logging to API" not in out, out[-3000:]
    _assert_cases_complete(ws)


def test_a_second_sigterm_does_not_cut_short_the_cleanup_the_first_began(tmp_path):
    """`make serve` stopped by a SIGTERM to its group: make re-sends the signal to its child, which then arrived
    inside the ``finally`` that puts the workspace's Prefect profile back, and the profile kept naming a dead server."""
    done = tmp_path / "cleanup-finished"
    code = f"""
import os, signal, time
from flows.signals import exit_promptly_on_sigterm
exit_promptly_on_sigterm()
try:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
finally:
    os.kill(os.getpid(), signal.SIGTERM)  # the second one, while cleaning up
    time.sleep(0.5)
    open({str(done)!r}, "w").write("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_clean_env(), capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == EXIT_STATUS, out.stderr[-2000:]
    assert done.is_file(), out.stderr[-2000:]
    assert out.stderr.count("stopped by SIGTERM") == 1, out.stderr
