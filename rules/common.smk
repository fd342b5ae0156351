# Validate the config, resolve models to kernel keys and set up GPUs: everything the rules share.
# All logic lives in moekernel.pipeline / moekernel.gpus; this file only wires it into Snakemake.

import os
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
    PLAN = pipeline.make_plan(config, cuda_available=bool(VISIBLE_GPUS))
except pipeline.ConfigError as exc:
    raise WorkflowError(str(exc)) from None
CFG = PLAN.config  # validated, defaults filled in

if workflow.is_main_process and PLAN.banner():
    print(PLAN.banner(), file=sys.stderr, flush=True)

# One GPU per GPU job. Locally the `gpu` resource is capped at the GPUs visible here (unless --resources
# says otherwise), and moekernel.gpus picks which one; under a cluster executor the scheduler does both.
GPU_PER_JOB = 1 if PLAN.backend == "cuda" else 0
if workflow.local_exec and GPU_PER_JOB and "gpu" not in workflow.global_resources:
    if not VISIBLE_GPUS and not workflow.dryrun:
        raise WorkflowError("backend: cuda but no CUDA device is visible here; use a GPU machine, the slurm "
                            "profile, or backend: auto (interpreter demo run)")
    workflow.global_resources["gpu"] = len(VISIBLE_GPUS)
GPU_POOL = "results/.gpu-locks"

ROUTING_FILE = pipeline.routing_file(PLAN.settings["routing"])


wildcard_constraints:
    key=r"E\d+-N\d+-K\d+-top\d+-[a-z0-9_]+?(-block\d+x\d+)?(-perchannel)?",
    bs=r"\d+",
