"""One GPU per job on a workstation: a pool of lock files, one per visible GPU.

Snakemake's global ``gpu`` resource (set to the number of visible GPUs) already bounds how many GPU jobs
run at once, but not *which* GPU each uses. A job takes the first free GPU by locking its file with
``flock``, sets ``CUDA_VISIBLE_DEVICES`` to that one id, and keeps the lock for its whole life: the
lock is an open file description, so it survives ``exec`` and is dropped by the kernel when the
process exits, even on a crash or kill. Nothing can be left stale.

The lock folder is namespaced by host and SLURM job id: under the SLURM executor every job gets its
own allocation (and often sees its GPU as device 0), so jobs must not share a namespace; a whole
Snakemake run inside one ``salloc`` shares one, as on a workstation.

The workflow's GPU jobs call :func:`pin_process` first thing (``moekernel.pipeline.jobs``). The same, for any
command of your own::

    python -m moekernel.pipeline.gpus --pool /tmp/moekernel-gpu-locks -- python -m moekernel.tune ...

Which GPUs there are is this module's too: :func:`visible_gpus` here, and :func:`run_has_gpus` for the whole run
(a cluster's GPUs, which a login node does not see).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

_held: list[int] = []  # lock file descriptors this process keeps until it exits

#: Set by the Snakefile to the GPUs it saw, ``id=model,id=model`` (or plain ids), so jobs need not ask CUDA:
#: asking initialises the driver, after which CUDA_VISIBLE_DEVICES can no longer be narrowed in that process.
ENV_GPUS = "MOEKERNEL_VISIBLE_GPUS"


def gpu_models(ids: list[str]) -> dict[str, str]:
    """{id: model as engines spell it} for visible GPU ids (the order CUDA numbers them in)."""
    if not ids:
        return {}
    import torch

    from moekernel.configs import engine_device_name

    return {gpu: engine_device_name(torch.cuda.get_device_name(i)) for i, gpu in enumerate(ids)}


def format_env(models: dict[str, str]) -> str:
    return ",".join(f"{gpu}={model}" for gpu, model in models.items())


def _from_env(value: str, model: str | None) -> list[str]:
    """The ids of :data:`ENV_GPUS`, only those of ``model`` if given (plain ids have no model: all kept)."""
    ids = []
    for entry in filter(None, value.split(",")):
        gpu, _, gpu_model = entry.partition("=")
        if model is None or not gpu_model or gpu_model == model:
            ids.append(gpu)
    return ids


def visible_gpus() -> list[str]:
    """The CUDA device ids this process may use, as CUDA_VISIBLE_DEVICES would name them.

    An existing CUDA_VISIBLE_DEVICES (SLURM sets one) is respected: its entries (indices, UUIDs or MIG
    ids) are kept as they are, cut to the devices the driver really shows.
    """
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None and not env.strip():
        return []  # every GPU hidden: no need to ask the driver (nor to import torch)
    try:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # no usable torch/CUDA: no GPUs
        count = 0
    if env is None:
        return [str(i) for i in range(count)]
    ids = []
    for part in env.split(","):
        part = part.strip()
        if not part or part.startswith("-"):  # CUDA stops at the first invalid entry
            break
        ids.append(part)
    return ids[:count]


#: The main Snakemake process's answer to "does this run have GPUs?", inherited by its cluster jobs (run_has_gpus).
ENV_RUN_HAS_GPUS = "MOEKERNEL_RUN_HAS_GPUS"


def run_has_gpus(visible: list[str], promised: int | None, *, main_process: bool) -> bool:
    """Whether this run has GPUs: what ``backend: auto`` asks (cuda if so, else the CPU demo).

    The main process answers: GPUs visible here, or ``promised`` ones (``--resources gpu=N``; profiles/slurm promises
    the cluster's, which a login node does not see). A cluster job parses the workflow again on its node, with the main
    process's environment (sbatch --export=ALL), and takes that answer: both then plan the same jobs, and a GPU job on a
    node whose GPU is missing fails there instead of quietly becoming a CPU demo.
    """
    inherited = os.environ.get(ENV_RUN_HAS_GPUS)
    if not main_process and inherited is not None:
        return inherited == "1"
    answer = bool(visible) or bool(promised)
    os.environ[ENV_RUN_HAS_GPUS] = "1" if answer else "0"
    return answer


#: Where the lock pool lives unless MOEKERNEL_GPU_POOL says otherwise: one folder per machine.
ENV_POOL = "MOEKERNEL_GPU_POOL"


def default_pool() -> Path:
    return Path(os.environ.get(ENV_POOL) or Path(tempfile.gettempdir()) / "moekernel-gpu-locks")


def pool_dir(root: str | os.PathLike) -> Path:
    namespace = socket.gethostname()
    if os.environ.get("SLURM_JOB_ID"):
        namespace += f"-slurm{os.environ['SLURM_JOB_ID']}"
    return Path(root) / namespace


#: Seconds a job waits for a busy GPU before it says so in its log.
BUSY_NOTICE_S = 30.0


def _lock_path(folder: Path, gpu: str) -> Path:
    return folder / f"gpu-{gpu.replace('/', '_')}.lock"


def holders(root: str | os.PathLike, gpus: list[str]) -> str:
    """Who holds each GPU's lock, as the lock files say (``gpu 0: pid 123``)."""
    folder = pool_dir(root)
    parts = []
    for gpu in gpus:
        try:
            pid = _lock_path(folder, gpu).read_text().strip() or "?"
        except OSError:
            pid = "?"
        parts.append(f"GPU {gpu}: pid {pid}")
    return ", ".join(parts)


def acquire(root: str | os.PathLike, gpus: list[str], *, poll_s: float = 0.5,
            timeout_s: float | None = None) -> tuple[str, int]:
    """Lock the first free GPU of ``gpus``; wait while all are taken. Returns (gpu id, lock fd)."""
    folder = pool_dir(root)
    folder.mkdir(parents=True, exist_ok=True)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        for gpu in gpus:
            path = _lock_path(folder, gpu)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for a human looking
            return gpu, fd
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"no free GPU among {gpus} after {timeout_s} s")
        time.sleep(poll_s)


def pin_process(root: str | os.PathLike, gpus: list[str] | None = None, model: str | None = None,
                log=None) -> str | None:
    """Take a GPU for the rest of this process's life and make it the only visible one.

    Call before anything initialises CUDA. ``gpus``: the candidates; by default those the Snakefile saw
    (:data:`ENV_GPUS`, only those of ``model`` if given), else :func:`visible_gpus`. Returns the id, or None when no
    GPU is visible. ``log`` (a logger): say so when every candidate is held by another job, and which one is.
    """
    if gpus is None:
        env = os.environ.get(ENV_GPUS)
        gpus = _from_env(env, model) if env is not None else visible_gpus()
    if not gpus:
        return None
    try:
        gpu, fd = acquire(root, gpus, timeout_s=BUSY_NOTICE_S if log else None)
    except TimeoutError:
        log.warning("all of GPU(s) %s are held by other jobs (%s); waiting for one to be free. Another pipeline on "
                    "this host uses them if its jobs hold these locks: check with `ls -l %s`, or give each run its "
                    "own GPUs (CUDA_VISIBLE_DEVICES)", ",".join(gpus), holders(root, gpus), pool_dir(root))
        gpu, fd = acquire(root, gpus)
    os.set_inheritable(fd, True)  # children (and exec) keep holding it
    _held.append(fd)
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    return gpu


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m moekernel.pipeline.gpus",
                                     description="run a command pinned to one free GPU of this machine")
    parser.add_argument("--pool", required=True, help="lock folder shared by the jobs of one run")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- command and arguments")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    gpu = pin_process(args.pool)
    if gpu is None:
        sys.exit(f"moekernel.pipeline.gpus: no CUDA device visible to this job on {socket.gethostname()} "
                 "(backend: cuda needs one; backend: auto falls back to the interpreter)")
    print(f"[moekernel.pipeline.gpus] {socket.gethostname()}: running on GPU {gpu}", file=sys.stderr, flush=True)
    os.execvp(command[0], command)  # the lock fd stays open in the command's process


if __name__ == "__main__":
    main()
