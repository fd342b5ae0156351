"""moekernel.pipeline.gpus: each GPU job gets its own visible GPU for its whole life (no GPU needed to test)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from moekernel.pipeline import gpus

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def fake_cuda(monkeypatch):
    """Pretend the driver shows ``count`` GPUs."""
    import torch

    def set_count(count):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)

    return set_count


def test_visible_gpus_respect_cuda_visible_devices(fake_cuda, monkeypatch):
    fake_cuda(4)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpus.visible_gpus() == ["0", "1", "2", "3"]
    fake_cuda(2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")  # as SLURM sets it: those ids, not 0 and 1
    assert gpus.visible_gpus() == ["5", "7"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-1a2b,-1,3")  # CUDA stops at the first invalid entry
    assert gpus.visible_gpus() == ["GPU-1a2b"]
    fake_cuda(0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # set, but no driver: no GPUs
    assert gpus.visible_gpus() == []


def test_a_run_has_gpus_it_sees_or_is_promised(monkeypatch):
    monkeypatch.setenv(gpus.ENV_RUN_HAS_GPUS, "1")  # an inherited answer: the main process asks afresh
    assert gpus.run_has_gpus([], None, main_process=True) is False  # a laptop: the CPU demo
    assert gpus.run_has_gpus(["0"], None, main_process=True) is True
    assert gpus.run_has_gpus([], 64, main_process=True) is True  # a login node under profiles/slurm
    assert gpus.run_has_gpus([], 0, main_process=True) is False  # a CPU-only cluster (tests/slurm/profile)


def test_cluster_jobs_keep_the_answer_of_the_process_that_submitted_them(monkeypatch):
    monkeypatch.setenv(gpus.ENV_RUN_HAS_GPUS, "")
    gpus.run_has_gpus([], 64, main_process=True)  # the login node answers; its jobs inherit the environment
    # A GPU job on a node whose GPU is missing stays a GPU job (and fails there) rather than become the CPU demo.
    assert gpus.run_has_gpus([], None, main_process=False) is True
    gpus.run_has_gpus([], 0, main_process=True)
    assert gpus.run_has_gpus(["0"], None, main_process=False) is False


def test_never_two_holders_on_one_gpu(tmp_path):
    first, fd1 = gpus.acquire(tmp_path, ["0", "1"])
    second, fd2 = gpus.acquire(tmp_path, ["0", "1"])
    assert {first, second} == {"0", "1"}
    with pytest.raises(TimeoutError):
        gpus.acquire(tmp_path, ["0", "1"], poll_s=0.01, timeout_s=0.1)
    os.close(fd1)  # a job ends: its GPU is free again
    third, fd3 = gpus.acquire(tmp_path, ["0", "1"], timeout_s=1)
    assert third == first
    os.close(fd2), os.close(fd3)


def test_lock_namespace_per_host_and_slurm_job(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    local = gpus.pool_dir(tmp_path)
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    # Under the SLURM executor every job sees "its" GPU as device 0: separate jobs must not share locks.
    assert gpus.pool_dir(tmp_path) != local and gpus.pool_dir(tmp_path).name.endswith("-slurm42")


def launch(pool, env_gpus, command, hold_s=0):
    env = dict(os.environ, PYTHONPATH=str(REPO), HOLD=str(hold_s), **{gpus.ENV_GPUS: env_gpus})
    return subprocess.Popen([sys.executable, "-m", "moekernel.pipeline.gpus", "--pool", str(pool), "--", *command],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_launcher_pins_the_command_and_holds_the_gpu_until_it_exits(tmp_path):
    show = [sys.executable, "-c", "import os, time; print(os.environ['CUDA_VISIBLE_DEVICES'], flush=True); "
            "time.sleep(float(os.environ['HOLD']))"]
    holder = launch(tmp_path, "3,5", show, hold_s=30)
    assert holder.stdout.readline().strip() == "3"  # started, holding GPU 3
    other = launch(tmp_path, "3,5", show)
    out, err = other.communicate(timeout=60)
    assert out.strip() == "5", err  # 3 is taken while the first command lives
    holder.kill(), holder.wait()  # even a killed job releases its GPU
    again = launch(tmp_path, "3,5", show)
    assert again.communicate(timeout=60)[0].strip() == "3"


def test_launcher_refuses_to_run_without_a_gpu(tmp_path):
    proc = launch(tmp_path, "", [sys.executable, "-c", "print('ran')"])
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "ran" not in out and "no CUDA device visible" in err


def test_a_job_waiting_for_a_gpu_another_run_holds_says_so(tmp_path, monkeypatch, caplog):
    """Two pipelines on one host competing for the same GPUs: the waiting job names the holder, then goes on."""
    import logging
    import threading

    monkeypatch.setattr(gpus, "BUSY_NOTICE_S", 0.2)
    monkeypatch.setenv(gpus.ENV_GPUS, "0=NVIDIA_H200,1=NVIDIA_H100_80GB_HBM3")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # restored afterwards: pinning narrows it
    held, fd = gpus.acquire(tmp_path, ["0"])  # another run's job holds the H200
    threading.Timer(1.0, os.close, [fd]).start()  # ...and finishes a second later
    log = logging.getLogger("test-busy")
    with caplog.at_level(logging.WARNING, logger="test-busy"):
        gpu = gpus.pin_process(tmp_path, model="NVIDIA_H200", log=log)
    assert gpu == "0" and os.environ["CUDA_VISIBLE_DEVICES"] == "0"  # never the H100, though it was free
    assert "held by other jobs" in caplog.text and f"GPU 0: pid {os.getpid()}" in caplog.text
    os.close(gpus._held.pop())
