"""A tune job: one (GPU model, key) tuned at every batch size and verified on held-out routing, in one warm process.

The job first takes one GPU of this machine for its whole life (:func:`moekernel.pipeline.gpus.pin_process`, the one
pinning mechanism), before anything initialises CUDA, and refuses to run with other software than the plan's.

Then one child process (``python -m moekernel.pipeline.jobs``, :func:`main`) does the GPU work: it refuses if its GPU
is not the model the job was planned for, tunes every batch size (the compile workers start once and later sizes hit
the kernel cache) and then verifies the winners (:mod:`moekernel.pipeline.verify`) with the kernels still loaded, so
verify pays no process, CUDA context or kernel loading of its own. (A child process, not the job's own: the compile
workers are spawned, and a spawned worker imports its parent's main module, which in a Snakemake job is the rule's
script; seen on the H200, tuning inside the script killed every worker.) Each size's shard is written as soon as it
is done, and a shard of the same job is never tuned again, so a killed job loses at most the size in flight, and a
job run again only for verify's sake (its settings changed, or its result is gone) only verifies. After a CUDA error
the tuner saves its checkpoint and exits 75, and only a fresh process can go on past the config that broke the
context, so the job starts the child again, up to :data:`TUNE_ATTEMPTS` times. When it is done, the job writes its
record (``tuned.json``): the shards it answered for, and the superseded shards beside them.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from . import gpus

TUNE_ATTEMPTS = 5
#: The child's exit status when it runs on another GPU model than planned (it said why on stderr).
EXIT_WRONG_PLACE = 3
REPO = Path(__file__).resolve().parents[2]


class WrongPlace(SystemExit):
    """This job runs where it was not planned to (GPU model, software): nothing was measured."""


def pin_gpu(backend: str, model: str, log: logging.Logger) -> str | None:
    """This job's own GPU of ``model`` (cuda), or None (interpret: nothing to pin); refuses if there is none. The
    child checks the GPU it got really is ``model`` (:func:`check_device`): asking here would cost this process a
    CUDA context."""
    host = socket.gethostname()
    gpu = None
    if backend == "cuda":
        gpu = gpus.pin_process(gpus.default_pool(), model=model, log=log)
        if gpu is None:
            raise WrongPlace(f"no CUDA device of model {model} visible to this job on {host} (backend: cuda needs "
                             "one; backend: auto falls back to the interpreter)")
    log.info("%s: GPU %s for %s", host, gpu if gpu is not None else "-", model)
    return gpu


def check_device(backend: str, model: str) -> None:
    """Refuse to time anything on another GPU model than ``model`` (the device this process sees)."""
    from moekernel import configs

    here = configs.device_name() if backend == "cuda" else configs.interpreter_device_name()
    if here != model:
        raise WrongPlace(f"this job was planned for GPU model {model} but runs on {here} ({socket.gethostname()}): "
                         f"refusing to time it here. Run it where {model} is (on SLURM: set gpu_constraints in the "
                         f"config), or tune {here} with gpus: [{here}]")


def check_software(planned: dict, log: logging.Logger) -> None:
    """Refuse to run with other software than the plan's (a timing belongs to one Triton and one torch)."""
    from moekernel.provenance import software

    here = software()
    if here != planned:
        raise WrongPlace(f"this job was planned with {planned} but runs with {here} on {socket.gethostname()}: "
                         "run Snakemake again from an environment with the software of its jobs")
    log.info("software: %s", ", ".join(f"{k} {v}" for k, v in here.items()))


def tune(gpu: str, key: str, batch_sizes: list[int], record: str, verified: str, *, settings: dict, software: dict,
         seed_keys: bool, verify: dict, threads: int, log: logging.Logger) -> None:
    """Tune ``key`` on ``gpu`` at ``batch_sizes`` into the shards beside ``record``, verify the winners into
    ``verified`` (``verify``: draws, max_loss, baseline), then write the record."""
    from moekernel.tuning import shard as shard_io
    from moekernel.tuning.measure import EXIT_RESUME
    from moekernel.tuning.settings import TuneSettings

    settings = TuneSettings(**settings)
    pin_gpu(settings.backend, gpu, log)
    check_software(software, log)
    folder = Path(record).parent
    out = str(folder / "bs{batch_size}.parquet")
    spec = {"gpu": gpu, "key": key, "batch_sizes": list(batch_sizes), "out": out, "verified": str(verified),
            "settings": settings.as_dict(), "jobs": threads, "seed_keys": str(folder.parent) if seed_keys else None,
            "verify": verify}
    command = [sys.executable, "-m", "moekernel.pipeline.jobs", json.dumps(spec)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    if settings.backend == "interpret":
        env["TRITON_INTERPRET"] = "1"  # before the child defines its kernels
    for attempt in range(1, TUNE_ATTEMPTS + 1):
        rc = subprocess.run(command, env=env, check=False).returncode  # its output goes to our stderr: the log
        if rc != EXIT_RESUME:
            break
        log.warning("attempt %d: a CUDA error broke the tuner's context; resuming from its checkpoint", attempt)
    if rc == EXIT_WRONG_PLACE:
        raise WrongPlace(f"{key}: nothing was timed (see the line above)")
    if rc:
        raise SystemExit(f"the tune job's process exited {rc} for {key} (see the lines above)")
    shards = shard_files(out, batch_sizes)
    write_record(record, {
        "gpu": gpu, "key": key, "batch_sizes": list(batch_sizes), "shards": shards,
        "superseded": [str(p) for p in shard_io.superseded_shards(folder)], "settings": settings.as_dict(),
        "software": software, "host": socket.gethostname(),
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })


def main(argv: list[str] | None = None) -> int:
    """The tune job's child process: ``python -m moekernel.pipeline.jobs SPEC`` (SPEC: the JSON :func:`tune` builds)."""
    spec = json.loads((argv if argv is not None else sys.argv[1:])[0])
    from moekernel import tune as tune_command
    from moekernel.pipeline import verify
    from moekernel.tuning import TuneSettings

    settings = TuneSettings(**spec["settings"])
    key, gpu = spec["key"], spec["gpu"]
    try:
        check_device(settings.backend, gpu)
    except WrongPlace as exc:
        print(f"moekernel: {exc}", file=sys.stderr)
        return EXIT_WRONG_PLACE
    rc = tune_command.run(key, spec["batch_sizes"], settings, out=spec["out"], jobs=spec["jobs"],
                          seed_keys=spec["seed_keys"], quiet=True)
    if rc:
        return rc

    start = time.monotonic()
    shards = shard_files(spec["out"], spec["batch_sizes"])
    v = spec["verify"]
    rows = verify.verify_key(gpu, key, shards, routing=settings.routing, seed=settings.seed, iters=settings.iters,
                             draws=v["draws"], max_loss=v["max_loss"], baseline_dir=v["baseline"],
                             backend=settings.backend)
    verify.write(rows, spec["verified"])
    print(f"{key}: verified in {time.monotonic() - start:.1f} s: {verify.describe(rows)}", file=sys.stderr)
    return 0


def shard_files(out: str, batch_sizes: list[int]) -> dict[int, str]:
    """{batch size: its shard's path} under the tuner's ``{batch_size}`` pattern (moekernel.tuning.tuner.shard_paths)."""
    from moekernel.tuning.tuner import shard_paths

    return {m: str(path) for m, path in shard_paths(out, batch_sizes).items()}


def write_record(path, record: dict) -> None:
    """A tune job's record, written atomically: it exists only if every shard it names does."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


def read_record(path) -> dict:
    return json.loads(Path(path).read_text())


if __name__ == "__main__":
    sys.exit(main())
