"""Faults a pipeline run meets, run for real in the interpreter: nothing finished is lost, and the user is told what
happened and what to do. Each test starts from a copy of one finished tiny run."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
import yaml

from moekernel.configs import is_engine_file_name
from test_pipeline_run import GPU, REPO, TINY_SPACE, snakemake, tiny_model

pytestmark = pytest.mark.slow
KEY = "E4-N64-K64-top2-fp16"


def shard(workdir: Path, m: int) -> Path:
    return workdir / "results" / "timings" / GPU / KEY / f"bs{m}.parquet"


def config_file(workdir: Path) -> Path:
    return workdir / "results" / "configs" / f"E=4,N=64,device_name={GPU}.json"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One key at two batch sizes, tuned, verified and published."""
    models = tmp_path_factory.mktemp("models")
    config = {"models": [tiny_model(models / "a", 4, 64)], "dtypes": ["fp16"], "batch_sizes": [1, 4],
              "backend": "interpret", "search": {"strategy": "exhaustive", "space": TINY_SPACE},
              "timing": {"iters": 1, "draws": 1}, "verify": {"draws": 1}}
    workdir = tmp_path_factory.mktemp("finished")
    result = snakemake(workdir, config)
    assert result.returncode == 0, result.stdout
    return workdir, config


@pytest.fixture
def run(finished, tmp_path):
    """(workdir, config, rerun) on a private copy of the finished run."""
    source, config = finished
    workdir = tmp_path / "run"
    shutil.copytree(source, workdir, symlinks=True)
    return workdir, config, lambda cfg=config, *args: snakemake(workdir, cfg, *args)


def test_a_deleted_shard_is_rebuilt_and_the_others_kept(run):
    workdir, config, rerun = run
    kept = shard(workdir, 1).read_bytes()
    shard(workdir, 4).unlink()
    result = rerun()
    assert result.returncode == 0, result.stdout
    assert f"{shard(workdir, 4).relative_to(workdir)} is missing" in result.stdout
    assert shard(workdir, 4).is_file() and shard(workdir, 1).read_bytes() == kept
    con = duckdb.connect(str(workdir / "results" / "tuning.duckdb"), read_only=True)
    assert con.execute("SELECT DISTINCT batch_size FROM timings ORDER BY 1").fetchall() == [(1,), (4,)]


def test_a_corrupt_shard_is_set_aside_and_rebuilt(run):
    workdir, _, rerun = run
    shard(workdir, 4).write_bytes(b"not parquet")
    result = rerun()
    assert result.returncode == 0, result.stdout
    assert "cannot be read (set aside as" in result.stdout
    (corrupt,) = (shard(workdir, 4).parent / "superseded").glob("bs4.*.corrupt")
    assert corrupt.read_bytes() == b"not parquet"  # kept for a look, never read again
    assert duckdb.connect(str(workdir / "results" / "tuning.duckdb"), read_only=True).execute(
        "SELECT count(*) FROM timings WHERE batch_size = 4 AND current").fetchone()[0] > 0


def test_a_corrupt_database_is_set_aside_and_rebuilt(run):
    workdir, _, rerun = run
    db = workdir / "results" / "tuning.duckdb"
    db.write_bytes(b"garbage")
    result = rerun()
    assert result.returncode == 0, result.stdout
    assert "cannot be opened" in result.stdout and "rebuilt from the shards" in result.stdout
    assert list(db.parent.glob("tuning.duckdb.corrupt-*"))[0].read_bytes() == b"garbage"
    assert duckdb.connect(str(db), read_only=True).execute("SELECT count(*) FROM timings").fetchone()[0] > 0


def test_a_failing_run_keeps_the_last_good_config_files(run):
    workdir, config, rerun = run
    before = config_file(workdir).read_bytes()
    # A new batch size re-runs every step; the verify result is then damaged, so select fails.
    bigger = {**config, "batch_sizes": [1, 4, 8]}
    assert rerun(bigger, "--until", "tune").returncode == 0
    (workdir / "results" / "verify" / GPU / f"{KEY}.parquet").write_bytes(b"broken")
    result = rerun(bigger)
    assert result.returncode != 0 and "select" in result.stdout
    assert config_file(workdir).read_bytes() == before  # the user still has the last good files


def test_hand_edits_are_backed_up_and_other_files_left_alone(run):
    workdir, config, rerun = run
    path = config_file(workdir)
    edited = path.read_text().replace('"num_warps": 4', '"num_warps": 8', 1)
    path.write_text(edited)
    mine = path.with_name("E=8,N=14336,device_name=NVIDIA_H200.json")  # a file the pipeline did not write
    mine.write_text("{}\n")
    result = rerun({**config, "batch_sizes": [1, 4, 8]})
    assert result.returncode == 0, result.stdout
    (backup,) = path.parent.glob(path.name + ".edited-*")
    assert backup.read_text() == edited and path.read_text() != edited and '"8"' in path.read_text()
    assert mine.read_text() == "{}\n"
    assert "edited by hand" in (workdir / "logs" / "select.log").read_text()
    assert "your version is kept as" in result.stdout  # the end-of-run summary says so too


def test_removing_a_batch_size_updates_the_database_in_one_run(run):
    workdir, config, rerun = run
    result = rerun({**config, "batch_sizes": [1]})
    assert result.returncode == 0, result.stdout
    con = duckdb.connect(str(workdir / "results" / "tuning.duckdb"), read_only=True)
    assert con.execute("SELECT DISTINCT batch_size FROM timings WHERE current").fetchall() == [(1,)]
    assert sorted(json.loads(config_file(workdir).read_text())) == ["1", "triton_version"]
    assert shard(workdir, 4).is_file()  # measured work stays on disk


def test_a_new_triton_version_retunes_and_keeps_the_old_timings(run, monkeypatch):
    workdir, config, rerun = run
    monkeypatch.setenv("MOEKERNEL_TRITON_VERSION", "9.9.9+test")
    jobs = rerun(config, "-n")
    assert jobs.returncode == 0 and jobs.stdout.count("rule tune:") == 1 and "params" in jobs.stdout
    result = rerun()
    assert result.returncode == 0, result.stdout
    con = duckdb.connect(str(workdir / "results" / "tuning.duckdb"), read_only=True)
    versions = con.execute("SELECT triton_version, current, count(*) FROM versions GROUP BY ALL ORDER BY 2").fetchall()
    assert [(v == "9.9.9+test", current) for v, current, _ in versions] == [(False, False), (True, True)]
    assert con.execute("SELECT count(*) FROM version_speedup").fetchone()[0] == 2  # one row per batch size
    assert json.loads(config_file(workdir).read_text())["triton_version"] == "9.9.9+test"


def test_a_job_on_another_gpu_model_refuses(run, monkeypatch):
    """Two GPU models in one run: each job refuses where its model is not, and each model gets its own files."""
    workdir, config, rerun = run
    # One batch size: what is checked is which model's jobs run where, and each tunes every size it is given.
    both = {**config, "gpus": ["NVIDIA_H200", "NVIDIA_H100_80GB_HBM3"], "batch_sizes": [1]}
    monkeypatch.setenv("MOEKERNEL_INTERPRETER_DEVICE", "NVIDIA_H200")  # this "machine" has an H200
    planned = rerun(both, "-n")
    assert planned.returncode == 0
    for gpu in both["gpus"]:
        assert f"results/timings/{gpu}/{KEY}/tuned.json" in planned.stdout
    first = rerun(both)
    assert first.returncode != 0
    h100_log = (workdir / "logs" / "tune" / "NVIDIA_H100_80GB_HBM3" / f"{KEY}.log").read_text()
    assert "planned for GPU model NVIDIA_H100_80GB_HBM3 but runs on NVIDIA_H200" in h100_log
    assert not (workdir / "results" / "timings" / "NVIDIA_H100_80GB_HBM3" / KEY / "bs1.parquet").exists()
    assert (workdir / "results" / "timings" / "NVIDIA_H200" / KEY / "tuned.json").is_file()
    monkeypatch.setenv("MOEKERNEL_INTERPRETER_DEVICE", "NVIDIA_H100_80GB_HBM3")  # the same folder on an H100
    second = rerun(both)
    assert second.returncode == 0, second.stdout
    files = sorted(p.name for p in (workdir / "results" / "configs").glob("E=*.json") if is_engine_file_name(p.name))
    # One file per model; the interpreter's file of the run this one started from is no longer produced: removed.
    assert files == ["E=4,N=64,device_name=NVIDIA_H100_80GB_HBM3.json", "E=4,N=64,device_name=NVIDIA_H200.json"]
    con = duckdb.connect(str(workdir / "results" / "tuning.duckdb"), read_only=True)
    assert {d for (d,) in con.execute("SELECT DISTINCT device FROM winners").fetchall()} == {
        "NVIDIA_H200", "NVIDIA_H100_80GB_HBM3"}


def test_killing_only_snakemake_keeps_the_shards_its_jobs_finished(finished, tmp_path):
    """What scancel of the driver, or some terminals, do: the jobs go on and finish shards; the rerun keeps them."""
    _, config = finished
    config = {**config, "batch_sizes": [1, 2, 4, 8]}
    workdir = tmp_path / "run"
    workdir.mkdir()
    configfile = workdir / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    env = {"CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "PATH": subprocess.os.environ["PATH"]}
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(configfile), "--cores", "2"]
    driver = subprocess.Popen(cmd, env={**subprocess.os.environ, **env}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not shard(workdir, 1).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert shard(workdir, 1).exists(), "the tune job never wrote its first shard"
    driver.send_signal(signal.SIGTERM)  # the driver only; its job goes on
    driver.wait(timeout=120)
    record = workdir / "results" / "timings" / GPU / KEY / "tuned.json"
    while not record.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    finished_shards = {m: shard(workdir, m).read_bytes() for m in (1, 2, 4, 8) if shard(workdir, m).exists()}
    result = snakemake(workdir, config)
    assert result.returncode == 0, result.stdout
    for m, data in finished_shards.items():
        assert shard(workdir, m).read_bytes() == data, f"the shard of M={m} was tuned again"
    assert not (shard(workdir, 1).parent / "superseded").exists()
    assert sorted(json.loads(record.read_text())["shards"]) == ["1", "2", "4", "8"]


def test_a_yaml_error_names_the_file_and_line(tmp_path):
    (tmp_path / "config.yaml").write_text("models: [mixtral-8x7b\ntp_sizes: [2]\n")
    env = {**subprocess.os.environ, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "-n"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "config.yaml, line 2, column 9: not valid YAML" in result.stdout + result.stderr
