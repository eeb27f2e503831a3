"""One GPU per nnU-Net step: configurations running side by side never share a card."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from components.segmentation.gpus import GpuPool, visible_gpu_ids


def test_parallel_claims_never_share_a_gpu_and_wait_when_all_are_busy(tmp_path):
    pool = GpuPool(["0", "1"], lock_dir=tmp_path, poll_s=0.01)
    holding: list[str] = []
    seen: list[str] = []
    peak = [0]
    lock = threading.Lock()

    def configuration() -> None:
        with pool.claim() as gpu:
            with lock:
                assert gpu not in holding
                holding.append(gpu)
                seen.append(gpu)
                peak[0] = max(peak[0], len(holding))
            time.sleep(0.05)
            with lock:
                holding.remove(gpu)

    threads = [threading.Thread(target=configuration) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(seen) == 5 and set(seen) == {"0", "1"} and peak[0] == 2


def test_another_process_holding_a_gpu_is_respected(tmp_path):
    """Dask worker processes each build their own pool: the lock is what they share."""
    import subprocess
    import sys

    code = ("import sys, time\nfrom components.segmentation.gpus import GpuPool\n"
            "with GpuPool(['0'], lock_dir=sys.argv[1]).claim() as g:\n    print(g, flush=True)\n    time.sleep(3)\n")
    other = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert other.stdout.readline().strip() == "0"  # the other process holds GPU 0
    with GpuPool(["0", "1"], lock_dir=tmp_path, poll_s=0.01).claim() as gpu:
        assert gpu == "1"
    other.wait(timeout=30)


def test_two_batch_jobs_on_one_node_each_use_their_own_gpu_0(tmp_path, monkeypatch):
    """SLURM numbers each job's GPUs from 0: job 11's GPU 0 and job 12's GPU 0 are different cards."""
    import subprocess
    import sys

    code = ("import sys, time\nfrom components.segmentation.gpus import GpuPool\n"
            "with GpuPool(['0'], lock_dir=sys.argv[1]).claim() as g:\n    print(g, flush=True)\n    time.sleep(3)\n")
    other = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                             env={**__import__("os").environ, "SLURM_JOB_ID": "11"})
    assert other.stdout.readline().strip() == "0"  # job 11 holds its GPU 0
    monkeypatch.setenv("SLURM_JOB_ID", "12")
    t0 = time.monotonic()
    with GpuPool(["0"], lock_dir=tmp_path, poll_s=0.01).claim() as gpu:
        assert gpu == "0" and time.monotonic() - t0 < 2  # job 12 does not wait for job 11's card
    other.wait(timeout=30)


def test_without_a_gpu_a_claim_is_none_at_once():
    with GpuPool([]).claim() as gpu:
        assert gpu is None


def test_auto_device_says_when_it_falls_back_to_the_cpu(caplog):
    import torch

    from components.segmentation.nnunet import resolve_device

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: nothing falls back")
    with caplog.at_level(logging.WARNING, logger="components.segmentation.nnunet"):
        assert resolve_device("auto").type == "cpu"
    assert any("no CUDA GPU is visible" in r.getMessage() for r in caplog.records)
    assert visible_gpu_ids() == []


@pytest.mark.parametrize("module", ["components.synthesis.network", "components.segmentation.nnunet"])
def test_every_stage_warns_when_auto_runs_on_the_cpu_and_refuses_a_missing_cuda(module, caplog):
    import importlib

    import torch

    from components.errors import InputError

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: nothing falls back")
    resolve = importlib.import_module(module).resolve_device
    with caplog.at_level(logging.WARNING):
        assert resolve("auto").type == "cpu"
    assert any("no CUDA GPU is visible" in r.getMessage() and "running on the CPU" in r.getMessage()
               for r in caplog.records)
    with pytest.raises(InputError, match="no CUDA GPU is visible"):
        resolve("cuda:1")
