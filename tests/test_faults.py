"""Faults a user meets, what they are told, and that nothing measured is lost (CPU: the Triton interpreter).

Each test names the fault; the tests of the models' missing fields are in test_models.py.
"""

from __future__ import annotations

import importlib
import json
import logging
import re
import subprocess
from pathlib import Path

import pytest
import torch

from moekernel.launch_params import PARAMS
from moekernel.pipeline.plan import ConfigError, make_plan
from moekernel.shapes import KernelShape
from moekernel.tuning import TuneSettings, load_space, prune, read_shard, tune
from moekernel.tuning.shard import partial_path

REPO = Path(__file__).resolve().parents[1]
moe = importlib.import_module("moekernel.kernel.moe")
NO_CUDA = not torch.cuda.is_available()
needs_interpreter = pytest.mark.skipif(not NO_CUDA, reason="the interpreter is what a machine without a GPU runs")

TINY = KernelShape.from_key("E4-N64-K64-top2-fp16")
ONE = {"BLOCK_SIZE_M": [16], "BLOCK_SIZE_N": [32], "BLOCK_SIZE_K": [64], "GROUP_SIZE_M": [1], "num_warps": [4],
       "num_stages": [2]}
BLOCK_QUANT_KEY = "E256-N256-K7168-top8-fp8_w8a8-block128x128"  # DeepSeek-V3 at tp=8


def plan(**config):
    config = {"models": ["mixtral-8x7b"], "tp_sizes": [2], **config}
    return make_plan(config, cuda_available=True, kernel_hash="h" * 16)


def tune_cli(*args):
    from moekernel.tune import main

    return main(list(args))


# ---------------------------------------------------------------------------------- the search space


@pytest.mark.parametrize(("spec", "message"), [
    ({"BLOCK_SIZE_K": [7, 64]}, "search space BLOCK_SIZE_K: 7 not allowed; BLOCK_SIZE_K must be a power of two >= 16"),
    ({"num_warps": [3, 4]}, "search space num_warps: 3 not allowed; num_warps must be one of 1, 2, 4, 8, 16"),
    ({"BLOCK_SIZE_N": [16, 32]}, "search space BLOCK_SIZE_N: 16 not allowed; BLOCK_SIZE_N must be a power of two "
                                 ">= 32 (for the up GEMM"),
    ({"num_stages": [0, 2]}, "search space num_stages: 0 not allowed; num_stages must be an integer >= 1"),
    ({"GROUP_SIZE_M": [0]}, "search space GROUP_SIZE_M: 0 not allowed; GROUP_SIZE_M must be an integer >= 1"),
])
def test_values_the_kernel_refuses_stop_the_plan_and_the_tuner(spec, message):
    with pytest.raises(ConfigError, match="config key 'search.space': " + message.replace("(", r"\(")):
        plan(search={"space": spec})
    assert tune_cli("--key", TINY.key, "--batch-size", "8", "--out", "never.parquet", "--space", json.dumps(spec)) == 2


def test_a_demo_space_is_named_as_the_demo_space():
    with pytest.raises(ConfigError, match="config key 'demo.space': search space num_warps: 3"):
        make_plan({"models": ["mixtral-8x7b"], "demo": {"space": {**ONE, "num_warps": [3]}}}, cuda_available=False,
                  kernel_hash="h" * 16)


def test_block_n_16_is_offered_to_a_split_search_and_refused_otherwise(capsys):
    space = {**ONE, "BLOCK_SIZE_N": [16, 32]}
    with pytest.raises(ConfigError, match=r"16 would suit the down GEMM alone, in a split search \(split: true\)"):
        plan(search={"space": space})
    assert load_space(plan(split=True, search={"space": space}).settings.space, ("up", "down"))["BLOCK_SIZE_N"] == [
        16, 32]
    with pytest.raises(ConfigError, match="none of 16 suits the up GEMM"):
        plan(split=True, search={"space": {**ONE, "BLOCK_SIZE_N": [16]}})


@pytest.mark.parametrize("name", PARAMS)
@pytest.mark.parametrize("gemm", ["both", "up", "down"])
def test_the_space_pruning_and_the_kernel_accept_the_same_values(name, gemm):
    # One table (moekernel.launch_params) decides all three; a value one accepts, the others must too.
    if name == "BLOCK_SIZE_M" and gemm != "both":
        pytest.skip("a split pair shares BLOCK_SIZE_M, so one half's value alone is no config")
    base = {p: values[0] for p, values in ONE.items()}
    for value in range(0, 300):
        config = {**base, name: value}
        try:
            moe.normalize_config(config if gemm == "both" else {"up": base, "down": base, gemm: config})
            kernel_ok = True
        except ValueError:
            kernel_ok = False
        ((_, reason),) = prune(TINY, 8, {p: [v] for p, v in config.items()}, gemm=gemm)
        assert kernel_ok == (reason is None or not reason.startswith("kernel:")), (value, reason)
        if gemm == "both":
            try:
                load_space({name: [value]})
                space_ok = True
            except ValueError:
                space_ok = False
            assert kernel_ok == space_ok, value


def test_a_space_that_cannot_tune_a_block_quantized_key_is_refused_up_front(tmp_path):
    space = {"BLOCK_SIZE_K": [256]}
    expected = (f"{BLOCK_QUANT_KEY}: no BLOCK_SIZE_K of the search space (256) divides the k=128 of its quantization "
                "block 128x128, so every candidate would be pruned; add one of 16, 32, 64, 128 to BLOCK_SIZE_K")
    with pytest.raises(ConfigError) as err:
        make_plan({"models": ["deepseek-v3"], "tp_sizes": [8], "search": {"space": space}}, cuda_available=True,
                  kernel_hash="h" * 16)
    assert str(err.value) == f"config key 'search.space': {expected}"
    out = tmp_path / "bs8.parquet"
    assert tune_cli("--key", BLOCK_QUANT_KEY, "--batch-size", "8", "--out", str(out), "--space", json.dumps(space)) == 2
    assert not out.exists() and not partial_path(out).exists()
    with pytest.raises(ValueError, match="every candidate would be pruned"):
        tune(BLOCK_QUANT_KEY, 8, space=space, progress=False)


# ---------------------------------------------------------------------------------- a bad candidate is a row


def test_a_config_one_gemm_cannot_launch_is_a_pruned_row_not_an_error():
    # prune() also takes a space that load_space never saw: the kernel's refusal becomes the row's reason.
    space = {**ONE, "BLOCK_SIZE_K": [7, 64], "num_warps": [3, 4]}
    verdicts = {(c["BLOCK_SIZE_K"], c["num_warps"]): r for c, r in prune(TINY, 8, space)}
    assert verdicts[(64, 4)] is None
    assert verdicts[(7, 4)] == ("kernel: BLOCK_SIZE_K=7: must be a power of two >= 16 (Triton's dot needs every "
                                "tile side to be a power of two >= 16)")
    assert verdicts[(7, 3)].startswith("kernel: BLOCK_SIZE_K=7: ") and "; num_warps=3: must be one of" in verdicts[(7, 3)]


@needs_interpreter
def test_a_split_search_times_block_n_16_for_the_down_gemm_and_prunes_it_for_the_up_gemm(tmp_path):
    out = tmp_path / "bs8.parquet"
    frame = tune(TINY, 8, space={**ONE, "BLOCK_SIZE_N": [16, 32]}, split=True, strategy="exhaustive", iters=1,
                 draws=1, jobs=1, progress=False, out=out)
    rows = {(r.gemm, r.BLOCK_SIZE_N): r for r in frame.itertuples(index=False) if r.SPLIT_K == 1}
    assert rows[("up", 16)].status == "pruned" and "the up GEMM" in rows[("up", 16)].error
    assert rows[("down", 16)].status == "ok" and rows[("down", 16)].time_us > 0
    assert frame["winner"].sum() == 2 and len(read_shard(out)) == len(frame)


@needs_interpreter
def test_a_bad_routing_file_is_the_users_error_not_every_candidates(tmp_path):
    out = tmp_path / "bs8.parquet"
    with pytest.raises(ValueError, match="nope.npy is neither 'uniform', 'zipf:<s>' nor an existing"):
        tune(TINY, 8, space=ONE, routing=str(tmp_path / "nope.npy"), progress=False, out=out)
    assert not out.exists() and not partial_path(out).exists()  # no shard of failures that would block a rerun


# ---------------------------------------------------------------------------------- the tune command


@pytest.fixture
def timed(monkeypatch):
    """The configs the tuner times (none, when it stops first); each is timed for real."""
    calls = []
    real = moe.make_runner

    def recording(inputs, config, gemm="both"):
        calls.append(config)
        return real(inputs, config, gemm)

    monkeypatch.setattr(moe, "make_runner", recording)
    return calls


@pytest.mark.parametrize("out", ["/proc/nope/bs{batch_size}.parquet", "{tmp}/a-file/bs{batch_size}.parquet", "{tmp}"])
def test_an_unusable_out_stops_before_anything_is_measured(out, tmp_path, capsys, timed):
    (tmp_path / "a-file").write_text("not a folder")
    out = out.format(tmp=tmp_path, batch_size="{batch_size}")
    sizes = "8" if out == str(tmp_path) else "1,8"
    assert tune_cli("--key", TINY.key, "--batch-size", sizes, "--out", out, "--space", json.dumps(ONE),
                    "--strategy", "exhaustive", "--iters", "1", "--jobs", "1", "--quiet") == 2
    err = capsys.readouterr().err
    assert err.startswith("moekernel.tune: error: ") and "Traceback" not in err
    assert ("is a folder; give the shard's file name" in err if out == str(tmp_path)
            else "cannot write the shard" in err and "choose an output path in a folder you can write" in err)
    assert timed == []


def test_the_out_folder_is_made_and_left_clean(tmp_path):
    out = tmp_path / "new" / "deeper" / "bs8.parquet"
    from moekernel.tuning.shard import check_writable

    check_writable(out)
    assert out.parent.is_dir() and list(out.parent.iterdir()) == []


@pytest.mark.skipif(not NO_CUDA, reason="a GPU machine runs --backend cuda")
def test_backend_cuda_without_a_gpu_is_a_message(capsys):
    assert tune_cli("--key", TINY.key, "--batch-size", "8", "--out", "never.parquet", "--backend", "cuda") == 2
    err = capsys.readouterr().err
    assert "backend 'cuda', but torch" in err and "sees no CUDA device" in err and "Traceback" not in err


def test_a_seed_shard_that_is_not_parquet_is_named(tmp_path, capsys):
    seed = tmp_path / "seed.parquet"
    seed.write_text("not parquet")
    assert tune_cli("--key", TINY.key, "--batch-size", "8", "--out", str(tmp_path / "bs8.parquet"), "--space",
                    json.dumps(ONE), "--seed-from", str(seed), "--quiet") == 2
    assert f"--seed-from {seed}: not a readable shard" in capsys.readouterr().err


def test_jobs_must_be_positive(capsys):
    with pytest.raises(SystemExit) as exit_:
        tune_cli("--key", TINY.key, "--batch-size", "8", "--out", "x.parquet", "--jobs", "0")
    assert exit_.value.code == 2 and "--jobs: '0': expected a whole number >= 1" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- first contact without a GPU

FULL_SIZE = "E8-N7168-K4096-top2-bf16"  # the README's example


@needs_interpreter
def test_the_tuner_refuses_a_full_size_shape_it_fell_back_to_the_interpreter_for(tmp_path, capsys, timed):
    out = tmp_path / "bs64.parquet"
    assert tune_cli("--key", FULL_SIZE, "--batch-size", "64", "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"moekernel.tune: error: no CUDA device, and {FULL_SIZE} has 704,643,072 weight elements, "
                          "far more than Triton's CPU interpreter runs in reasonable time (at most 4,194,304): one "
                          "call of the op at M=64 would take about ")
    assert "--key E4-N64-K64-top2-fp16" in err and "--backend interpret to run this one anyway" in err
    assert timed == [] and not out.exists()
    with pytest.raises(ValueError, match=f"no CUDA device, and {FULL_SIZE} has"):  # the same from Python
        tune(FULL_SIZE, 64, progress=False)


@needs_interpreter
def test_the_benchmark_refuses_by_the_same_rule(capsys):
    from moekernel.bench import cli

    with pytest.raises(SystemExit) as exit_:
        cli.main(["--key", FULL_SIZE])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert f"no CUDA device, and {FULL_SIZE} has 704,643,072 weight elements, far more than" in err
    assert "try --key E4-N64-K64-top2-fp16 --batch-sizes 1,8" in err


def test_asking_for_the_interpreter_by_name_warns_how_long_it_may_take(caplog):
    from moekernel.tuning.job import TuneJob
    from moekernel.tuning.space import Candidate

    shape = KernelShape.from_key("E8-N512-K512-top2-bf16")  # 6.3M weights: over the limit, seconds a call
    job = TuneJob(shape, 64, TuneSettings(space=ONE, backend="interpret"), progress=False)
    configs = [{**{p: v[0] for p, v in ONE.items()}, "BLOCK_SIZE_N": n} for n in (32, 64)]
    with caplog.at_level(logging.WARNING, logger="moekernel.tuning.job"):
        job.warn_if_slow({Candidate.of(c, "both") for c in configs})
    (record,) = caplog.records
    assert record.getMessage().startswith("E8-N512-K512-top2-bf16 has 6,291,456 weight elements, far more than")
    assert "; at M=64, timing the 2 candidates left after pruning takes up to about " in record.getMessage()
    caplog.clear()
    TuneJob(TINY, 8, TuneSettings(space=ONE, backend="interpret"), progress=False).warn_if_slow(set())
    assert caplog.records == []  # a shape the interpreter runs in seconds needs no warning


def test_interpreter_estimates_read_as_durations():
    from moekernel.tuning.space import format_duration, interpreter_seconds

    assert [format_duration(s) for s in (40, 150, 1160, 5 * 3600, 3 * 86400)] == [
        "40 s", "2.5 min", "19 min", "5 h", "3 days"]
    config = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 64, "GROUP_SIZE_M": 1, "num_warps": 4,
              "num_stages": 2}
    # Measured: 15.8 s a call for this shape and config on the interpreter (see the constants' comment).
    assert 8 < interpreter_seconds(KernelShape.from_key("E8-N512-K512-top2-bf16"), 64, config) < 32


# ---------------------------------------------------------------------------------- the README's commands


def test_the_readme_opens_the_database_in_sql_from_the_shell(tmp_path, write_shard):
    from moekernel.pipeline import database

    readme = (REPO / "README.md").read_text()
    section = readme.split("## SQL over every measurement", 1)[1]
    (command,) = re.findall(r"```bash\n(.*?)```", section.split("\n## ", 1)[0], flags=re.S)
    config = {p: v[0] for p, v in ONE.items()}
    shard = write_shard(tmp_path / "bs8.parquet", TINY.key, 8, [(config, 12.5)])
    database.build(tmp_path / "results" / "tuning.duckdb", [shard], [], [])
    proc = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert TINY.key in proc.stdout and "12.5" in proc.stdout


def test_config_yaml_shows_the_defaults_it_says_it_shows():
    import yaml

    from moekernel.pipeline.plan import load_config

    text = (REPO / "config.yaml").read_text()
    shown = load_config(yaml.safe_load(text))
    defaults = load_config({"models": ["any"]})
    lines = {line.split(":", 1)[0]: line for line in text.splitlines() if line and line[0].isalpha()}
    assert lines["models"].endswith("# required")
    for key, value in shown.items():
        if key == "models" or value == defaults[key]:
            continue
        marker = re.search(r"# left out: (.*)$", lines[key])
        assert marker, f"config.yaml shows {key}: {value!r}, but a left-out {key} is {defaults[key]!r}"
        assert yaml.safe_load(marker.group(1)) == defaults[key], f"config.yaml's '# left out:' of {key} is wrong"
