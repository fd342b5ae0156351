# Validate the config, resolve models to kernel keys and set up GPUs: everything the rules share.
# All logic lives in moekernel.pipeline; this file only wires it into Snakemake.

import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

REPO = Path(workflow.basedir)
sys.path.insert(0, str(REPO))  # moekernel from this checkout, installed or not (scripts do the same)

from moekernel.pipeline import gpus, plan, recover

# A config.yaml in the working directory, else the repo's example; --configfile replaces both. Read here first,
# so a YAML error names its file and line (Snakemake's own message names neither).
if not workflow.overwrite_configfiles:
    CONFIG_FILE = "config.yaml" if Path("config.yaml").exists() else str(REPO / "config.yaml")
    try:
        plan.read_yaml(CONFIG_FILE)
    except plan.ConfigError as exc:
        raise WorkflowError(str(exc)) from None
    workflow.configfile(CONFIG_FILE)

VISIBLE_GPUS = gpus.visible_gpus()
GPU_MODELS = gpus.gpu_models(VISIBLE_GPUS)
# The jobs choose among these GPUs, by model (moekernel.pipeline.gpus.pin_process), without asking CUDA themselves.
os.environ[gpus.ENV_GPUS] = gpus.format_env(GPU_MODELS)
# backend auto: cuda if the run has GPUs, visible here or promised by --resources gpu=N (profiles/slurm: the
# cluster's, as a login node has none; config.yaml's gpus then names their models); cluster jobs keep the
# submitting process's answer.
RUN_HAS_GPUS = gpus.run_has_gpus(VISIBLE_GPUS, workflow.global_resources.get("gpu").value,
                                 main_process=workflow.is_main_process)
try:
    PLAN = plan.make_plan(config, cuda_available=RUN_HAS_GPUS, gpu_models=list(GPU_MODELS.values()),
                          schema_path=REPO / "schema" / "config.schema.yaml")
except plan.ConfigError as exc:
    raise WorkflowError(str(exc)) from None
CFG = PLAN.config  # validated, defaults filled in
DATABASE = "results/tuning.duckdb"
SELECTED = "results/selected.json"  # the select rule's account of the engine files it published

if workflow.is_main_process:
    if PLAN.banner():
        print(PLAN.banner(), file=sys.stderr, flush=True)
    # What earlier runs left broken (a deleted or damaged shard, a damaged database) is set aside, so this run
    # rebuilds it; nothing is deleted.
    for line in recover.check_tune_records(PLAN.tuned_records()) + recover.check_database(DATABASE):
        print(f"moekernel: {line}", file=sys.stderr, flush=True)

# One GPU per GPU job. On a GPU host the `gpu` resource is capped at the GPUs visible here (unless
# --resources says otherwise) and each job pins one of them. The executor is not known while parsing,
# so a cluster run from a GPU host sets `resources: gpu=...` in its profile (profiles/slurm).
GPU_PER_JOB = 1 if PLAN.backend == "cuda" else 0
if GPU_PER_JOB and VISIBLE_GPUS and "gpu" not in workflow.global_resources:
    workflow.global_resources["gpu"] = len(VISIBLE_GPUS)
# Compile threads per tune job: by default the cores shared out among the GPUs' concurrent jobs. A cluster run
# has no --cores (profiles/slurm's set-threads decides there), hence the settings' value, not workflow.cores.
TUNE_THREADS = CFG["tune_threads"]
if TUNE_THREADS == "auto":
    TUNE_THREADS = max(1, (workflow.resource_settings.cores or 1) // max(1, len(VISIBLE_GPUS))) if GPU_PER_JOB else 1

ROUTING_FILE = plan.routing_file(PLAN.settings.routing)


wildcard_constraints:
    gpu=r"[A-Za-z0-9_.-]+",
    key=r"E\d+-N\d+-K\d+-top\d+-[a-z0-9_]+?(-block\d+x\d+)?(-perchannel)?",
