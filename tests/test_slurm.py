"""The cluster path, end to end: the CPU demo through profiles/slurm on a real one-node SLURM (tests/slurm/cluster.py).

Runs as root where Debian's slurm-wlm, slurmdbd, munge and mariadb-server are installed (.ci/run installs them), and
is skipped elsewhere, saying why; with MOEKERNEL_SLURM_TEST=required (as .ci/run sets) it fails instead. The only
overrides are the CPU overlay tests/slurm/profile, plus, in the tests of the run-stopping checks, the one setting
each check is about. All tests here share one cluster, so pytest-xdist keeps them on one worker (xdist_group).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
import yaml

from moekernel.configs import is_engine_file_name
from moekernel.tuning.shard import extended_rows
from slurm import cluster

REPO = Path(__file__).resolve().parent.parent
OVERLAY = REPO / "tests" / "slurm" / "profile"
OVERLAY_SETTINGS = yaml.safe_load((OVERLAY / "config.yaml").read_text())
TINY_SPACE = {"BLOCK_SIZE_M": [16], "BLOCK_SIZE_N": [32, 64], "BLOCK_SIZE_K": [64], "GROUP_SIZE_M": [1],
              "num_warps": [4], "num_stages": [2]}
DEMO_KEY = "E4-N64-K64-top2-fp16"
GPU = "cpu-interpreter"  # the demo's "GPU model"; the node's feature stands in for it (cluster.FEATURE)
BATCH_SIZES = [1, 4]


def demo_config(batch_sizes=BATCH_SIZES) -> dict:
    return {"models": ["mixtral-8x7b"], "gpu_constraints": {GPU: cluster.FEATURE},
            "timing": {"draws": 1}, "verify": {"draws": 1},
            "demo": {"batch_sizes": batch_sizes, "space": TINY_SPACE, "iters": 1}}


pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("slurm-cluster")]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = cluster.unavailable()
    if reason:
        if os.environ.get("MOEKERNEL_SLURM_TEST") == "required":
            pytest.fail(f"MOEKERNEL_SLURM_TEST=required, but {reason}")
        pytest.skip(reason)
    with cluster.running(tmp_path_factory.mktemp("slurm-state")) as running:
        yield running


def run_through_slurm(workdir: Path, config: dict, *args: str) -> subprocess.CompletedProcess:
    """The documented SLURM command, with the test cluster's CPU overlay; output and errors together."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    # No GPU, whatever the machine. The jobs inherit this environment (the executor submits with --export=ALL).
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
               "--configfile", str(workdir / "config.yaml"), "--profile", str(REPO / "profiles" / "slurm"),
               "--profile", str(OVERLAY), "--workflow-profile", "none", *args]
    return subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)


def why(result: subprocess.CompletedProcess, slurm: cluster.Cluster) -> str:
    tail = "\n".join(result.stdout.splitlines()[-80:])
    return f"snakemake exited {result.returncode}; its output ends:\n{tail}\n{slurm.logs()}"


@pytest.fixture(scope="module")
def demo_run(slurm, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("slurm-demo")
    result = run_through_slurm(workdir, demo_config())
    assert result.returncode == 0, why(result, slurm)
    return workdir


def test_the_tune_job_ran_through_slurm_as_the_profile_sized_it(demo_run, slurm):
    jobs = {job.comment: job for job in slurm.jobs(demo_run)}
    tune = f"rule_tune_wildcards_{GPU}_{DEMO_KEY}"
    assert set(jobs) == {tune}, jobs  # one warm job per key tunes and verifies; select, database, report stay local
    assert {job.state for job in jobs.values()} == {"COMPLETED"}
    assert {job.account for job in jobs.values()} == {OVERLAY_SETTINGS["default-resources"]["slurm_account"]}
    # The profile's threads reach SLURM whole, though they are more than this host's cores (on a 2-core CI host).
    assert jobs[tune].cpus == OVERLAY_SETTINGS["set-threads"]["tune"]
    # Each GPU job asked for the node feature of its GPU model (config gpu_constraints).
    assert {job.features for job in jobs.values()} == {cluster.FEATURE}


def test_the_run_wrote_the_database_and_the_config_files(demo_run):
    configs = sorted(p.name for p in (demo_run / "results" / "configs").glob("*.json") if is_engine_file_name(p.name))
    assert configs == ["E=4,N=64,device_name=cpu-interpreter.json"]
    assert (demo_run / "results" / "verify" / GPU / f"{DEMO_KEY}.parquet").exists()
    con = duckdb.connect(str(demo_run / "results" / "tuning.duckdb"), read_only=True)
    timings = con.execute("SELECT * FROM timings").df()
    engine = timings[~extended_rows(timings)]  # the engines' search: none of moekernel's own parameters
    rows = [(m, len(g), g["backend"].min()) for m, g in engine.groupby("batch_size")]
    assert rows == [(m, 2, "interpret") for m in BATCH_SIZES]  # the demo space's two configs, in the interpreter
    assert con.execute("SELECT count(*) FROM comparisons WHERE source = 'tuned' AND ok").fetchone()[0] == 2


def test_a_rerun_has_nothing_to_do(demo_run, slurm):
    before = slurm.jobs(demo_run)
    result = run_through_slurm(demo_run, demo_config())
    assert result.returncode == 0, why(result, slurm)
    assert "Nothing to be done" in result.stdout
    assert slurm.jobs(demo_run) == before


def test_a_wrong_account_stops_the_run_naming_the_accounts_there_are(slurm, tmp_path):
    result = run_through_slurm(tmp_path, demo_config(), "--default-resources", "slurm_account=no-such-account")
    assert result.returncode != 0
    assert "The given account no-such-account appears to be invalid. Available accounts:" in result.stdout, \
        why(result, slurm)
    assert cluster.ACCOUNT in result.stdout
    assert slurm.jobs(tmp_path) == []


def test_threads_cut_by_cores_stop_the_run_before_it_submits(slurm, tmp_path):
    # --cores 1 stands for profiles/default's `cores: all` on a small login node.
    result = run_through_slurm(tmp_path, demo_config(), "--cores", "1")
    assert result.returncode != 0
    assert "nothing was submitted" in result.stdout and "--workflow-profile none" in result.stdout, why(result, slurm)
    assert slurm.jobs(tmp_path) == []


def test_without_accounting_the_run_stops_unless_told_to_ask_squeue(slurm, tmp_path):
    record = f"results/timings/{GPU}/{DEMO_KEY}/tuned.json"  # one job is enough to see squeue notice its end
    with slurm.accounting_stopped():
        stopped = run_through_slurm(tmp_path, demo_config(), record)
        assert stopped.returncode != 0
        assert "sacct is refused here" in stopped.stdout and "slurm-status-command: squeue" in stopped.stdout, \
            why(stopped, slurm)
        # squeue, but first asked so late that MinJobAge would have dropped the job: the executor would fall back.
        first_check = cluster.MIN_JOB_AGE_S // 2
        late = run_through_slurm(tmp_path, demo_config(), record, "--slurm-status-command", "squeue",
                                 "--slurm-init-seconds-before-status-checks", str(first_check))
        assert late.returncode != 0
        assert f"MinJobAge is {cluster.MIN_JOB_AGE_S} s; below {3 * first_check} s" in late.stdout, why(late, slurm)
        assert slurm.jobs(tmp_path) == []

        result = run_through_slurm(tmp_path, demo_config(), record, "--slurm-status-command", "squeue")
        assert result.returncode == 0, why(result, slurm)
    assert (tmp_path / record).exists()
    assert [job.state for job in slurm.jobs(tmp_path)] == ["COMPLETED"]
