"""What profiles/slurm plans, as its dry run shows it: no SLURM needed (tests/test_slurm.py runs it on a cluster)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
PROFILE = REPO / "profiles" / "slurm"
CPU_OVERLAY = REPO / "tests" / "slurm" / "profile"
MIXTRAL_TP2 = {"models": ["mixtral-8x7b"], "tp_sizes": [2], "batch_sizes": [64], "gpus": ["NVIDIA_H200"]}  # login node: name the model


def dry_run(tmp_path: Path, config: dict, *profiles: Path) -> dict[str, list[str]]:
    """rule -> the resources line of each job a dry run through ``profiles`` plans, on a host without GPUs."""
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
               "--configfile", str(tmp_path / "config.yaml"), "--workflow-profile", "none", "-n"]
    for profile in profiles:
        command += ["--profile", str(profile)]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1")
    result = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert result.returncode == 0, result.stdout
    jobs: dict[str, list[str]] = {"banner": [line for line in result.stdout.splitlines() if line.startswith("!!")]}
    rule = None
    for line in result.stdout.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):$", line):
            rule = m[1]
        elif rule and (m := re.match(r"^\s+resources: (.*)$", line)):
            jobs.setdefault(rule, []).append(m[1])
    return jobs


def test_from_a_login_node_without_gpus_it_plans_one_gpu_per_tune_job(tmp_path):
    jobs = dry_run(tmp_path, MIXTRAL_TP2, PROFILE)
    assert not jobs["banner"]  # neither the CPU demo nor the interpreter: the cluster's GPUs
    assert len(jobs["tune"]) == 1 and "gpu=1" in jobs["tune"][0].split(", "), jobs["tune"]
    assert {"runtime=240", "mem_mb=32000"} <= set(jobs["tune"][0].split(", "))


def test_it_leaves_the_config_files_backend_alone(tmp_path):
    jobs = dry_run(tmp_path, {**MIXTRAL_TP2, "backend": "interpret"}, PROFILE)
    assert any("backend: interpret" in line for line in jobs["banner"])
    assert all("gpu=1" not in r.split(", ") for r in jobs["tune"])


def test_with_the_cpu_overlay_it_plans_the_demo_and_asks_for_no_gpu(tmp_path):
    jobs = dry_run(tmp_path, MIXTRAL_TP2, PROFILE, CPU_OVERLAY)
    assert any("DEMO RUN" in line for line in jobs["banner"])
    assert all("gpu=1" not in r.split(", ") for r in jobs["tune"])
    assert {"runtime=10", "mem_mb=1000"} <= set(jobs["tune"][0].split(", "))  # the overlay's sizes, not the profile's
