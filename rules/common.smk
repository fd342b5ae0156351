# Validate the config, resolve models to kernel keys and set up GPUs: everything the rules share.
# All logic lives in moekernel.pipeline / moekernel.gpus; this file only wires it into Snakemake.

import os
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

REPO = Path(workflow.basedir)
# Jobs (shell `python -m ...` and scripts) import moekernel from this checkout, installed or not,
# and run with the Python that runs Snakemake.
sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
os.environ["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), os.environ.get("PATH", "")))

from moekernel import gpus, pipeline

# A config.yaml in the working directory, else the repo's example; --configfile replaces both.
if not workflow.overwrite_configfiles:
    workflow.configfile("config.yaml" if Path("config.yaml").exists() else str(REPO / "config.yaml"))

VISIBLE_GPUS = gpus.visible_gpus()
os.environ[gpus.ENV_GPUS] = ",".join(VISIBLE_GPUS)
try:
    PLAN = pipeline.make_plan(config, cuda_available=bool(VISIBLE_GPUS),
                              schema_path=REPO / "schema" / "config.schema.yaml")
except pipeline.ConfigError as exc:
    raise WorkflowError(str(exc)) from None
CFG = PLAN.config  # validated, defaults filled in

if workflow.is_main_process and PLAN.banner():
    print(PLAN.banner(), file=sys.stderr, flush=True)

# One GPU per GPU job. On a GPU host the `gpu` resource is capped at the GPUs visible here (unless
# --resources says otherwise) and moekernel.gpus picks which one each job gets. The executor is not known
# while parsing, so a cluster run from a GPU host sets `resources: gpu=...` in its profile (profiles/slurm).
GPU_PER_JOB = 1 if PLAN.backend == "cuda" else 0
if GPU_PER_JOB and VISIBLE_GPUS and "gpu" not in workflow.global_resources:
    workflow.global_resources["gpu"] = len(VISIBLE_GPUS)
# Compile threads per tune job: by default the cores shared out among the GPUs' concurrent jobs.
TUNE_THREADS = CFG["tune_threads"]
if TUNE_THREADS == "auto":
    TUNE_THREADS = max(1, (workflow.cores or 1) // max(1, len(VISIBLE_GPUS))) if GPU_PER_JOB else 1
# One lock pool per machine, shared by every run on it (runs in other --directory folders too), so two
# runs never time on the same GPU.
GPU_POOL = gpus.default_pool()
# Jobs run with the Python that runs Snakemake (a bare `python` on PATH may be another one, or missing).
PYTHON = shlex.quote(sys.executable)
# Pins a tune job to one free GPU for its whole life (moekernel/gpus.py); nothing to pin in the interpreter.
# Kept out of the rule's params: where the locks live must not make results look stale.
TUNE_LAUNCHER = f"{PYTHON} -m moekernel.gpus --pool {shlex.quote(str(GPU_POOL))} --" if GPU_PER_JOB else ""

ROUTING_FILE = pipeline.routing_file(PLAN.settings["routing"])


wildcard_constraints:
    key=r"E\d+-N\d+-K\d+-top\d+-[a-z0-9_]+?(-block\d+x\d+)?(-perchannel)?",
    bs=r"\d+",
