"""What a cluster run checks before it queues anything: the ways it would otherwise go wrong without a word.

``rules/cluster.smk`` calls these when Snakemake starts a real run (not a dry run) under a cluster executor. Each
returns messages that name what is wrong and what to change; the run stops on any, before a job is submitted.

- :func:`thread_cap`: Snakemake gives every job at most ``--cores`` threads, under a cluster executor too, and hands
  ``--cores`` on to the job. profiles/default (the workstation's, applied by Snakemake unless ``--workflow-profile
  none``) sets ``cores: all``, which counts the login node's cores, not a compute node's.
- :func:`slurm_status_query`: the SLURM executor learns that a job ended from ``sacct``; where sacct is refused (no
  accounting database) it never does, and the run waits forever with no message.
"""

from __future__ import annotations

import re
import shutil
import subprocess

#: The setting for clusters without accounting, as profiles/slurm/config.yaml spells it.
SQUEUE_SETTING = "slurm-status-command: squeue"


def thread_cap(cores: int | None, threads: dict[str, int]) -> list[str]:
    """``threads``: what each rule asks for. A problem if ``--cores`` would cut any of them."""
    cut = {rule: n for rule, n in sorted(threads.items()) if cores is not None and n > cores}
    if not cut:
        return []
    asked = ", ".join(f"{rule} asks for {n}" for rule, n in cut.items())
    return [f"--cores is {cores}, and Snakemake gives no cluster job more threads than that ({asked}). "
            "profiles/default, the workstation profile Snakemake applies by itself, sets `cores: all` (this host's "
            "cores): run with --workflow-profile none, as profiles/slurm/config.yaml says, or give --cores N."]


def slurm_status_query(status_command: str, init_seconds: int) -> list[str]:
    """A problem if the SLURM executor would ask ``sacct`` for job states on a cluster where sacct is refused.

    ``status_command`` and ``init_seconds`` are the executor's settings (``slurm-status-command``,
    ``slurm-init-seconds-before-status-checks``). The executor (snakemake-executor-plugin-slurm 2.x) asks squeue only
    if told to and if slurm.conf's MinJobAge keeps finished jobs for at least three first-check intervals; otherwise
    it falls back to sacct.
    """
    refusal = _sacct_refusal()
    if refusal is None:
        return []
    if status_command != "squeue":
        return [f"sacct is refused here ({refusal}): without SLURM's accounting database the executor never sees a "
                f"job finish, and the run would wait forever. Ask squeue instead: `{SQUEUE_SETTING}` in "
                "profiles/slurm/config.yaml (or --slurm-status-command squeue)."]
    min_job_age, needed = _min_job_age(), 3 * init_seconds
    if min_job_age is None or min_job_age < needed:
        kept = "cannot be read (scontrol show config)" if min_job_age is None else f"is {min_job_age} s"
        return [f"squeue is asked for job states, but slurm.conf's MinJobAge {kept}; below {needed} s (three of the "
                f"executor's first waits of {init_seconds} s) the executor falls back to sacct, which is refused here "
                f"({refusal}), and the run would wait forever. Lower slurm-init-seconds-before-status-checks to a "
                f"third of MinJobAge, or ask the cluster's admins for MinJobAge >= {needed} (SLURM's default is 300)."]
    return []


def _sacct_refusal() -> str | None:
    """sacct's complaint when it cannot answer (no accounting database, or it is down); None when it answers or is
    not installed (the executor then asks squeue by itself)."""
    if shutil.which("sacct") is None:
        return None
    # Any query reaches the database; this one asks for nothing much.
    done = subprocess.run(["sacct", "--allusers", "--noheader", "--starttime", "now", "--format", "JobID"],
                          capture_output=True, text=True, timeout=60)
    if done.returncode == 0:
        return None
    lines = (done.stderr or done.stdout).strip().splitlines()
    return lines[-1].strip() if lines else f"exit status {done.returncode}"


def _min_job_age() -> int | None:
    """slurm.conf's MinJobAge in seconds, from the controller; None if it cannot be read."""
    try:
        shown = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"^MinJobAge\s*=\s*(\d+)", shown, re.MULTILINE)
    return int(found[1]) if found else None
