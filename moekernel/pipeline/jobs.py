"""What the workflow's GPU jobs do around the tuner and verify: the right GPU, the right software, a warm process.

Both jobs first take one GPU of this machine for their whole life (:func:`moekernel.pipeline.gpus.pin_process`, the
one pinning mechanism), of the GPU model they were planned for, before anything initialises CUDA; a job that finds
itself on another model, or with other software than the plan's, refuses before it measures anything.

A tune job tunes every batch size of one (GPU model, key) in one ``python -m moekernel.tune`` process: the compile
workers start once and later sizes hit the kernel cache. (A child process, not the job's own: the compile workers
are spawned, and a spawned worker imports its parent's main module, which in a Snakemake job is the rule's script;
seen on the H200, tuning inside the script killed every worker.) Each size's shard is written as soon as it is
done, and a shard of the same job is never tuned again, so a killed job loses at most the size in flight. After a
CUDA error the tuner saves its checkpoint and exits 75, and only a fresh process can go on past the config that
broke the context, so the job starts the tuner again, up to :data:`TUNE_ATTEMPTS` times. When the tuner is done, the job
writes its record (``tuned.json``): the shards it answered for, and the superseded shards beside them.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from . import gpus

TUNE_ATTEMPTS = 5
REPO = Path(__file__).resolve().parents[2]


class WrongPlace(SystemExit):
    """This job runs where it was not planned to (GPU model, software): nothing was measured."""


def pin_gpu(backend: str, model: str, log: logging.Logger) -> str | None:
    """This job's own GPU of ``model`` (cuda), or None (interpret: nothing to pin). Refuses if there is none, or the
    GPU is another model, or the software differs from the plan's."""
    from moekernel import configs

    host = socket.gethostname()
    gpu = None
    if backend == "cuda":
        gpu = gpus.pin_process(gpus.default_pool(), model=model, log=log)
        if gpu is None:
            raise WrongPlace(f"no CUDA device of model {model} visible to this job on {host} (backend: cuda needs "
                             "one; backend: auto falls back to the interpreter)")
    here = configs.device_name() if backend == "cuda" else configs.interpreter_device_name()
    if here != model:
        raise WrongPlace(f"this job was planned for GPU model {model} but runs on {here} ({host}): refusing to time "
                         f"it here. Run it where {model} is (on SLURM: set gpu_constraints in the config), or tune "
                         f"{here} with gpus: [{here}]")
    log.info("%s: running on GPU %s (%s)", host, gpu if gpu is not None else "-", here)
    return gpu


def check_software(planned: dict, log: logging.Logger) -> None:
    """Refuse to run with other software than the plan's (a timing belongs to one Triton and one torch)."""
    from moekernel.provenance import software

    here = software()
    if here != planned:
        raise WrongPlace(f"this job was planned with {planned} but runs with {here} on {socket.gethostname()}: "
                         "run Snakemake again from an environment with the software of its jobs")
    log.info("software: %s", ", ".join(f"{k} {v}" for k, v in here.items()))


def tune(gpu: str, key: str, batch_sizes: list[int], record: str, *, settings: dict, software: dict,
         seed_keys: bool, threads: int, log: logging.Logger) -> None:
    """Tune ``key`` on ``gpu`` at ``batch_sizes`` into the shards beside ``record``, then write the record."""
    from moekernel.tuning import shard as shard_io
    from moekernel.tuning.measure import EXIT_RESUME
    from moekernel.tuning.settings import TuneSettings

    settings = TuneSettings(**settings)
    pin_gpu(settings.backend, gpu, log)
    check_software(software, log)
    folder = Path(record).parent
    out = folder / "bs{batch_size}.parquet"
    command = [sys.executable, "-m", "moekernel.tune", "--key", key, "--batch-size", ",".join(map(str, batch_sizes)),
               "--out", str(out), "--jobs", str(threads), "--quiet", *settings.cli_args()]
    if seed_keys:
        command += ["--seed-keys", str(folder.parent)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    for attempt in range(1, TUNE_ATTEMPTS + 1):
        rc = subprocess.run(command, env=env).returncode  # its output goes to this job's log (our stderr)
        if rc != EXIT_RESUME:
            break
        log.warning("attempt %d: a CUDA error broke the tuner's context; resuming from its checkpoint", attempt)
    if rc:
        raise SystemExit(f"moekernel.tune exited {rc} for {key} (see the lines above)")
    shards = {m: str(out).replace("{batch_size}", str(m)) for m in batch_sizes}
    write_record(record, {
        "gpu": gpu, "key": key, "batch_sizes": list(batch_sizes), "shards": shards,
        "superseded": [str(p) for p in shard_io.superseded_shards(folder)], "settings": settings.as_dict(),
        "software": software, "host": socket.gethostname(),
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })


def write_record(path, record: dict) -> None:
    """A tune job's record, written atomically: it exists only if every shard it names does."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


def read_record(path) -> dict:
    return json.loads(Path(path).read_text())
