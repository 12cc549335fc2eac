"""The GPU lock-file pool with fake device ids: real processes, real fcntl locks, a real SIGKILL."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mmhealth.train import gpu_pool

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
HOLD = ("import os, sys, time\nfrom mmhealth.train import gpu_pool\nos.environ.pop('WORLD_SIZE', None)\n"
        "print(gpu_pool.claim_for_process(), os.environ['CUDA_VISIBLE_DEVICES'], flush=True)\ntime.sleep(120)\n")


def holder(tmp_path: Path, visible: str) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": visible, "MMHEALTH_GPU_LOCKS": str(tmp_path),
           "PYTHONPATH": str(SCRIPTS)}
    process = subprocess.Popen([sys.executable, "-c", HOLD], env=env, stdout=subprocess.PIPE, text=True)
    claimed, seen = process.stdout.readline().split()
    assert claimed == seen  # the process sees only the GPU it claimed
    return process, claimed


def test_concurrent_jobs_get_distinct_gpus_and_a_killed_job_frees_its_own(tmp_path):
    first, a = holder(tmp_path, "3,7")
    second, b = holder(tmp_path, "3,7")
    try:
        assert {a, b} == {"3", "7"}
        assert gpu_pool.try_claim(["3", "7"], tmp_path) is None  # both held: a third job waits
        with pytest.raises(TimeoutError):
            gpu_pool.claim(["3", "7"], tmp_path, timeout_s=0)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        gpu, fd = gpu_pool.try_claim(["3", "7"], tmp_path)  # the kernel dropped the killed job's lock
        assert gpu == a
        os.close(fd)  # closing (or exiting) releases it
        again, fd = gpu_pool.try_claim(["3", "7"], tmp_path)
        assert again == a
        os.close(fd)
    finally:
        for process in (first, second):
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0, 2,GPU-abc")
    assert gpu_pool.visible_gpus() == ["0", "2", "GPU-abc"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert gpu_pool.visible_gpus() == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    assert gpu_pool.claim_for_process() == "5"  # one GPU: nothing to choose, no lock taken
