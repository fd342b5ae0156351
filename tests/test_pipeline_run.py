"""The workflow itself, run by Snakemake in the Triton interpreter: end to end, incremental re-runs, clear errors.

Two real runs (the no-GPU demo, and tiny model folders in the interpreter) with the real tuner; everything else
is a dry run (``snakemake -n``) whose planned jobs are parsed from Snakemake's output.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
import yaml

from moekernel.configs import is_engine_file_name
from moekernel.launch_params import PARAMS
from moekernel.tuning.shard import extended_rows

REPO = Path(__file__).resolve().parent.parent
TINY_SPACE = {"BLOCK_SIZE_M": [16], "BLOCK_SIZE_N": [32, 64], "BLOCK_SIZE_K": [64], "GROUP_SIZE_M": [1],
              "num_warps": [4], "num_stages": [2]}
DOWNSTREAM = {"select", "database", "report", "all"}


def snakemake(workdir: Path, config: dict, *args: str, snakefile: Path = REPO / "Snakefile") -> subprocess.CompletedProcess:
    """Run the workflow in ``workdir`` with ``config`` as its only config file; output and errors together."""
    workdir.mkdir(parents=True, exist_ok=True)
    configfile = workdir / f"config-{abs(hash(json.dumps(config, sort_keys=True)))}.yaml"
    configfile.write_text(yaml.safe_dump(config))
    # No GPU, whatever the machine: CUDA_VISIBLE_DEVICES="" hides them all. Models resolve offline.
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(snakefile), "--directory", str(workdir),
           "--configfile", str(configfile), "--cores", "2", *args]
    return subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)


def planned(workdir: Path, config: dict) -> dict[str, set[str]]:
    """rule -> outputs of the jobs a dry run would run."""
    result = snakemake(workdir, config, "-n")
    assert result.returncode == 0, result.stdout
    jobs: dict[str, set[str]] = {}
    rule = None
    for line in result.stdout.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):$", line):
            rule = m[1]
            jobs.setdefault(rule, set())
        elif rule and (m := re.match(r"^\s+output: (.*)$", line)):
            jobs[rule].update(p.strip() for p in m[1].split(","))
    # Guard the parsing: an empty plan must be Snakemake's own "nothing to do", not a format we failed to read.
    assert ("Nothing to be done" in result.stdout) == (not jobs), result.stdout
    return jobs


GPU = "cpu-interpreter"  # the GPU model of every job in the interpreter


def tune_record(key: str) -> str:
    """The tune job of ``key``'s record of the shards."""
    return f"results/timings/{GPU}/{key}/tuned.json"


def tune_outputs(*keys: str) -> set[str]:
    """The outputs of the tune jobs of ``keys``: their records and their verify results."""
    return {path for key in keys for path in (tune_record(key), f"results/verify/{GPU}/{key}.parquet")}


def shard_file(key: str, m: int) -> str:
    return f"results/timings/{GPU}/{key}/bs{m}.parquet"


# ------------------------------------------------------------------ the no-GPU demo, end to end

DEMO_KEY = "E4-N64-K64-top2-fp16"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The main command on a machine without a GPU, with a baseline folder to compare against."""
    from moekernel import configs

    workdir = tmp_path_factory.mktemp("demo")
    baseline = configs.config_file_name(4, 64, device_name="cpu-interpreter")
    configs.write_config_file(workdir / "baseline" / baseline, {1: {k: v[0] for k, v in TINY_SPACE.items()}})
    config = {"models": ["mixtral-8x7b"], "baseline_configs": "baseline", "verify": {"draws": 2},
              "demo": {"batch_sizes": [1, 4], "space": TINY_SPACE, "iters": 1}}
    result = snakemake(workdir, config)
    assert result.returncode == 0, result.stdout
    return workdir, config, result.stdout


@pytest.mark.slow
def test_demo_run_end_to_end(demo_run):
    workdir, _, log = demo_run
    assert "NO CUDA DEVICE: DEMO RUN IN THE TRITON INTERPRETER" in log
    assert "E8-N14336-K4096-top2-bf16" in log  # the banner says what a GPU would tune
    # The run ends by saying where the files are, how they compare, and what to do next; no warning repeats.
    assert "1 engine config file(s) in results/configs/" in log and "Next: VLLM_TUNED_CONFIG_FOLDER=" in log
    assert "deprecated" not in log.lower()

    # Engine files; moekernel's own file beside one depends on the interpreter's (meaningless) timings.
    files = sorted(p.name for p in (workdir / "results" / "configs").glob("*.json") if is_engine_file_name(p.name))
    assert files == ["E=4,N=64,device_name=cpu-interpreter.json"]  # a CPU device name: never a GPU config
    data = json.loads((workdir / "results" / "configs" / files[0]).read_text())
    assert list(data)[0] == "triton_version" and sorted(int(m) for m in list(data)[1:]) == [1, 4]

    con = duckdb.connect(str(workdir / "results" / "tuning.duckdb"), read_only=True)
    timings = con.execute("SELECT * FROM timings").df()
    engine = timings[~extended_rows(timings)]  # the engines' search: none of moekernel's own parameters
    assert (len(engine), engine["batch_size"].nunique(), set(engine["backend"])) == (4, 2, {"interpret"})
    # The engines' four (2 configs, 2 sizes), and at each size TMA 1 and 2 on its two finalists, moekernel's extended
    # default, and a persistent down GEMM on the best of those (its half tiles are pruned: blocks of 16 rows).
    assert con.execute("SELECT count(*) FROM timings WHERE status = 'ok'").fetchone()[0] == 4 + 2 * (2 * 2 + 1 + 1)
    # The winners' split-K variants are rows too, pruned (the demo's reduction is too short to split), with why.
    assert con.execute("SELECT count(*), bool_and(status = 'pruned' AND error LIKE '%K steps%') FROM timings "
                       "WHERE SPLIT_K > 1").fetchone() == (6, True)
    winners = con.execute("SELECT batch_size, BLOCK_SIZE_N FROM winners ORDER BY 1").fetchall()
    assert [m for m, _ in winners] == [1, 4]
    # (An extended winner, which the interpreter's meaningless timings may or may not give, is verify's too: it goes
    # to moekernel's own file, never to the engine file.)
    emitted = con.execute("SELECT batch_size, config FROM comparisons WHERE emitted AND source <> 'extended' "
                          "ORDER BY 1").fetchall()
    assert [m for m, _ in emitted] == [1, 4]
    for m, config in emitted:  # the file holds exactly what verify chose: the winner, or the default
        assert data[str(m)] == json.loads(config)
    assert con.execute("SELECT model, tp, key FROM shapes").fetchall() == [("demo", 1, DEMO_KEY)]
    rows = con.execute("SELECT source, count(*), bool_and(ok), max(rel_error), min(note) FROM comparisons "
                       "GROUP BY source ORDER BY source").fetchall()
    assert [r[:3] for r in rows if r[0] != "extended"] == [("baseline", 2, True), ("default", 2, True),
                                                           ("tuned", 2, True)]
    assert all(r[2] for r in rows if r[0] == "extended")
    assert all(r[3] < 1e-2 and "meaningless" in r[4] for r in rows)
    assert con.execute("SELECT count(*) FROM speedup WHERE speedup_vs_default > 0 AND speedup_vs_baseline > 0"
                       ).fetchone()[0] == 2
    assert dict(con.execute("SELECT name, value FROM meta").fetchall())["demo"] == "True"

    for name in ("speedup.png", "roofline.png", "comparisons.csv"):
        assert (workdir / "results" / "report" / name).stat().st_size > 0


@pytest.mark.slow
def test_rebuilt_configs_are_byte_identical(demo_run, tmp_path):
    from moekernel.pipeline import emit

    workdir, _, _ = demo_run
    shards = sorted((workdir / "results" / "timings" / GPU / DEMO_KEY).glob("*.parquet"))
    verified = [workdir / "results" / "verify" / GPU / f"{DEMO_KEY}.parquet"]
    # The engine file, and moekernel's own file where verify chose one of its configs (in the interpreter that
    # depends on timings that mean nothing, so either may happen).
    rebuilt = emit.emit_from_verify(shards, verified, tmp_path)["written"]
    assert rebuilt and sorted(rebuilt) == sorted(p.name for p in (workdir / "results" / "configs").glob("*.json"))
    for name in rebuilt:
        assert (tmp_path / name).read_bytes() == (workdir / "results" / "configs" / name).read_bytes()


@pytest.mark.slow
def test_second_run_does_nothing(demo_run):
    workdir, config, _ = demo_run
    assert planned(workdir, config) == {}


@pytest.mark.slow
def test_snakemake_report_holds_the_plots(demo_run):
    workdir, config, _ = demo_run
    result = snakemake(workdir, config, "--report", "report.zip")
    assert result.returncode == 0, result.stdout
    import zipfile

    names = zipfile.ZipFile(workdir / "report.zip").namelist()
    assert any(n.endswith("speedup.png") for n in names) and any(n.endswith("roofline.png") for n in names)


# ------------------------------------------------------------------ incremental re-runs

def tiny_model(folder: Path, experts: int, intermediate: int, hidden: int = 64) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": hidden,
        "intermediate_size": intermediate, "num_local_experts": experts, "num_experts_per_tok": 2,
        "torch_dtype": "float16"}))
    return str(folder)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Two tiny models tuned for real in the interpreter at one batch size; the base of the dry runs."""
    models = tmp_path_factory.mktemp("models")
    config = {
        "models": [tiny_model(models / "a", 4, 64), tiny_model(models / "b", 4, 128)],
        "dtypes": ["fp16"], "batch_sizes": [2], "backend": "interpret",
        "search": {"strategy": "exhaustive", "space": {**TINY_SPACE, "BLOCK_SIZE_N": [32]}},
        "timing": {"iters": 1, "draws": 1}, "verify": {"draws": 1},
    }
    workdir = tmp_path_factory.mktemp("tiny")
    result = snakemake(workdir, config)
    assert result.returncode == 0, result.stdout
    return workdir, config, models


KEY_A, KEY_B, KEY_C = "E4-N64-K64-top2-fp16", "E4-N128-K64-top2-fp16", "E8-N64-K64-top2-fp16"


@pytest.mark.slow
def test_tiny_models_were_tuned(tiny_run):
    workdir, _, _ = tiny_run
    # Engine files; moekernel's own file beside one depends on the interpreter's (meaningless) timings.
    files = sorted(p.name for p in (workdir / "results" / "configs").glob("*.json") if is_engine_file_name(p.name))
    assert files == ["E=4,N=128,device_name=cpu-interpreter.json", "E=4,N=64,device_name=cpu-interpreter.json"]
    for name in files:  # engine files: exactly the six integer keys per batch size, in the engines' order
        entries = json.loads((workdir / "results" / "configs" / name).read_text())
        assert list(entries)[0] == "triton_version"
        for m, config in entries.items():
            assert m == "triton_version" or (list(config) == list(PARAMS)
                                             and all(type(v) is int for v in config.values())), (name, m)
    con = duckdb.connect(str(workdir / "results" / "tuning.duckdb"), read_only=True)
    assert sorted(con.execute("SELECT key FROM shapes").fetchall()) == [(KEY_B,), (KEY_A,)]


@pytest.mark.slow
def test_unchanged_config_does_nothing(tiny_run):
    workdir, config, _ = tiny_run
    assert planned(workdir, config) == {}


@pytest.mark.slow
def test_new_batch_size_tunes_only_that_size(tiny_run, tmp_path):
    import shutil

    source, config, _ = tiny_run
    workdir = tmp_path / "run"
    shutil.copytree(source, workdir, symlinks=True)
    bigger = {**config, "batch_sizes": [2, 8]}
    jobs = planned(workdir, bigger)
    assert jobs["tune"] == tune_outputs(KEY_A, KEY_B)  # each key's warm job...
    assert set(jobs) - {"tune"} <= DOWNSTREAM
    before = {k: (workdir / shard_file(k, 2)).read_bytes() for k in (KEY_A, KEY_B)}
    result = snakemake(workdir, bigger)
    assert result.returncode == 0, result.stdout
    for key in (KEY_A, KEY_B):  # ...tunes the new size only: the shard of size 2 is the same file
        assert (workdir / shard_file(key, 2)).read_bytes() == before[key]
        assert (workdir / shard_file(key, 8)).is_file()
        assert not (workdir / shard_file(key, 2)).parent.joinpath("superseded").exists()
        assert "M=2: " in (workdir / "logs" / "tune" / GPU / f"{key}.log").read_text()
    assert "already written, not tuned again" in (workdir / "logs" / "tune" / GPU / f"{KEY_A}.log").read_text()


@pytest.mark.slow
def test_new_model_runs_only_its_tune_jobs(tiny_run):
    workdir, config, models = tiny_run
    jobs = planned(workdir, {**config, "models": [*config["models"], tiny_model(models / "c", 8, 64)]})
    assert jobs["tune"] == tune_outputs(KEY_C)  # the other keys' did not change, nor their verify results
    assert set(jobs) - {"tune"} <= DOWNSTREAM


@pytest.mark.slow
@pytest.mark.parametrize("change", [
    {"search": {"strategy": "exhaustive", "space": TINY_SPACE}},
    {"timing": {"iters": 3}},
    {"routing": "zipf:1.5"},
])  # fmt: skip
def test_changed_settings_rerun_the_tune_jobs(tiny_run, change):
    workdir, config, _ = tiny_run
    jobs = planned(workdir, {**config, **change})
    assert jobs["tune"] == tune_outputs(KEY_A, KEY_B)


# ------------------------------------------------------------------ clear errors (dry runs, nothing tuned)

@pytest.mark.parametrize("config, expected", [
    ({"models": ["mixtral-8x7b"], "backend": "gpu"}, ["config key 'backend'", "allowed values: auto, cuda, interpret"]),
    ({"models": ["mixtral-8x7b"], "tp_size": [2]}, ["unknown config key(s) 'tp_size'", "tp_sizes"]),
    ({"models": ["no-such-model"]}, ["model 'no-such-model'", "unknown model 'no-such-model'", "mixtral-8x7b"]),
    ({"models": ["mixtral-8x7b"], "tp_sizes": [3]}, ["tp=3", "tp sizes that work"]),
    ({"models": ["mixtral-8x7b"], "baseline_configs": "no/such/folder"}, ["config key 'baseline_configs'"]),
    ({"models": ["mixtral-8x7b"], "search": {"space": {"BLOCK_M": [16]}}}, ["'search.space.BLOCK_M'"]),
])  # fmt: skip
def test_bad_config_stops_with_a_clear_message(tmp_path, config, expected):
    result = snakemake(tmp_path, config, "-n")
    assert result.returncode != 0
    for part in expected:
        assert part in result.stdout, result.stdout
    # The stop is the workflow's own check (a WorkflowError raised where the plan is made), not a crash inside
    # moekernel, which would show a frame of one of its files.
    assert "WorkflowError" in result.stdout and 'rules/common.smk", line' in result.stdout
    assert f'File "{REPO / "moekernel"}' not in result.stdout


@pytest.mark.parametrize("text, expected", [
    ('{"BLOCK_M": [16]}', "unknown search-space parameter(s) ['BLOCK_M']"),
    ('{"BLOCK_SIZE_M": [16', "is not valid JSON"),
])
def test_bad_search_space_file_stops_before_any_job(tmp_path, text, expected):
    space = tmp_path / "space.json"
    space.write_text(text)
    result = snakemake(tmp_path / "run", {"models": ["mixtral-8x7b"], "search": {"space": str(space)}}, "-n")
    assert result.returncode != 0
    assert "config key 'search.space'" in result.stdout and expected in result.stdout, result.stdout


def test_keys_sharing_a_config_file_stop_naming_both(tmp_path):
    config = {"models": [tiny_model(tmp_path / "a", 4, 64, hidden=64), tiny_model(tmp_path / "b", 4, 64, hidden=128)],
              "dtypes": ["fp16"]}
    result = snakemake(tmp_path / "run", config, "-n")
    assert result.returncode != 0
    assert "E4-N64-K64-top2-fp16" in result.stdout and "E4-N64-K128-top2-fp16" in result.stdout
    assert "same engine config file" in result.stdout


@pytest.mark.slow
def test_kernel_source_edit_reruns_tuning_and_other_edits_do_not(tmp_path):
    """In a copy of the checkout: editing the kernel re-tunes; editing the tuner or a rule's shell text does not."""
    import shutil

    checkout = tmp_path / "checkout"
    shutil.copytree(REPO, checkout, ignore=shutil.ignore_patterns(".git", "results", "logs", ".snakemake",
                                                                    "__pycache__", ".whl", "*.egg-info"))
    models = tmp_path / "models"
    config = {"models": [tiny_model(models / "a", 4, 64)], "dtypes": ["fp16"], "batch_sizes": [2],
              "backend": "interpret", "timing": {"iters": 1, "draws": 1}, "verify": {"draws": 1},
              "search": {"strategy": "exhaustive", "space": {**TINY_SPACE, "BLOCK_SIZE_N": [32]}}}
    workdir = tmp_path / "run"
    run = lambda *args: snakemake(workdir, config, *args, snakefile=checkout / "Snakefile")  # noqa: E731
    assert run().returncode == 0

    def planned_tune() -> set[str]:
        result = run("-n")
        assert result.returncode == 0, result.stdout
        return set(re.findall(r"output: (results/timings/\S+/tuned\.json)", result.stdout))

    def edit(relative: str) -> None:
        with open(checkout / relative, "a") as f:
            f.write("\n# an edit\n")

    edit("moekernel/tuning/tuner.py")
    edit("rules/tune.smk")
    assert planned_tune() == set()
    edit("moekernel/kernel/_kernels.py")
    assert planned_tune() == {tune_record(KEY_A)}
