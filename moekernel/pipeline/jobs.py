"""What the workflow's GPU jobs do around the tuner and verify: a GPU of their own, and a fresh process to resume.

Both jobs first take one GPU of this machine for their whole life (:func:`moekernel.pipeline.gpus.pin_process`,
the one pinning mechanism), before anything initialises CUDA. A tune job then runs ``python -m moekernel.tune`` in a
child process: after a CUDA error the tuner saves its checkpoint and exits 75, and only a fresh process can go on
past the config that broke the context, so the job starts the tuner again, up to :data:`TUNE_ATTEMPTS` times.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

from . import gpus

TUNE_ATTEMPTS = 5
REPO = Path(__file__).resolve().parents[2]


def pin_gpu(backend: str, log: logging.Logger) -> str | None:
    """This job's own GPU (cuda), or None (interpret: nothing to pin). Exits with a clear message if there is none."""
    if backend != "cuda":
        return None
    gpu = gpus.pin_process(gpus.default_pool())
    if gpu is None:
        raise SystemExit(f"no CUDA device visible to this job on {socket.gethostname()} (backend: cuda needs one; "
                         "backend: auto falls back to the interpreter)")
    log.info("%s: running on GPU %s", socket.gethostname(), gpu)
    return gpu


def tune(key: str, batch_sizes: list[int], out: str, *, settings: dict, threads: int, log: logging.Logger) -> None:
    """Tune ``key`` at ``batch_sizes`` into ``out`` (a shard path; with several sizes, one holding {batch_size})."""
    from moekernel.tuning.measure import EXIT_RESUME
    from moekernel.tuning.settings import TuneSettings

    settings = TuneSettings(**settings)
    pin_gpu(settings.backend, log)
    command = [sys.executable, "-m", "moekernel.tune", "--key", key, "--batch-size", ",".join(map(str, batch_sizes)),
               "--out", out, "--jobs", str(threads), "--quiet", *settings.cli_args()]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    for attempt in range(1, TUNE_ATTEMPTS + 1):
        rc = subprocess.run(command, env=env).returncode  # its output goes to this job's log (our stderr)
        if rc != EXIT_RESUME:
            break
        log.warning("attempt %d: a CUDA error broke the tuner's context; resuming from its checkpoint", attempt)
    if rc:
        raise SystemExit(f"moekernel.tune exited {rc} for {key} (see the lines above)")
