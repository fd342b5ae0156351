"""``python -m moekernel.tune`` end to end, in a fresh process as a pipeline job runs it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from moekernel.tuning.shard import SCHEMA, extended_rows

ROOT = Path(__file__).resolve().parents[1]
SPACE = {"BLOCK_SIZE_M": [16, 32], "BLOCK_SIZE_N": [32], "BLOCK_SIZE_K": [64], "GROUP_SIZE_M": [1, 16],
         "num_warps": [4], "num_stages": [2]}


def cli(*args, env_extra=None):
    # Without TRITON_INTERPRET, as a user would type it: on a CPU the CLI must switch to the interpreter itself.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "moekernel.tune", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_writes_a_complete_shard(tmp_path):
    out = tmp_path / "timings" / "E4-N64-K64-top2-fp16" / "bs8.parquet"
    space = tmp_path / "space.json"
    space.write_text(json.dumps(SPACE))
    proc = cli("--key", "E4-N64-K64-top2-fp16", "--batch-size", "8", "--out", str(out), "--space", str(space),
               "--strategy", "exhaustive", "--iters", "1", "--jobs", "1", "--quiet")
    assert proc.returncode == 0, proc.stderr
    table = pq.read_table(out)
    assert table.schema.equals(SCHEMA)
    frame = table.to_pandas()
    # The engines' four, and variants with moekernel's own parameters of the winner and finalists.
    assert len(frame[~extended_rows(frame)]) == 4 and frame["winner"].sum() == 1
    assert set(frame["status"]) == {"ok", "pruned"}
    summary = proc.stderr.strip().splitlines()[-1]
    assert summary.startswith("E4-N64-K64-top2-fp16 M=8: 4 candidates, 2 pruned, 0 failed, 2 ok; best both M16")
    assert list(out.parent.iterdir()) == [out]  # no checkpoint or temporary file left


def test_cli_rejects_bad_arguments(tmp_path):
    out = tmp_path / "bs8.parquet"
    proc = cli("--key", "E4-N64-top2", "--batch-size", "8", "--out", str(out), "--backend", "interpret")
    assert proc.returncode == 2 and "not a kernel key" in proc.stderr
    proc = cli("--key", "E4-N64-K64-top2-fp16", "--batch-size", "8", "--out", str(out), "--space", "nope.json",
               "--backend", "interpret")
    assert proc.returncode == 2 and "--space" in proc.stderr
    assert not out.exists()


def test_cli_in_process_compile_only_and_missing_out(capsys):
    from moekernel.tune import main

    args = ["--key", "E4-N64-K64-top2-fp16", "--batch-size", "8", "--backend", "auto", "--quiet"]
    assert main(args) == 2 and "--out is required" in capsys.readouterr().err
    assert main([*args, "--compile-only", "--space", json.dumps(SPACE), "--jobs", "1"]) == 0
    err = capsys.readouterr().err
    if os.environ.get("TRITON_INTERPRET") == "1":
        assert "compiled 0 candidates (nothing to do)" in err  # the interpreter compiles nothing
    else:
        assert "compiled 2 candidates (2 ok)" in err


def test_cli_tunes_several_batch_sizes_and_resumes_from_their_shards(tmp_path):
    out = tmp_path / "bs{batch_size}.parquet"
    # One routing draw: resuming does not depend on how many the finalists are timed on, and each costs seconds here.
    args = ["--key", "E4-N64-K64-top2-fp16", "--batch-size", "8,2", "--out", str(out), "--space", json.dumps(SPACE),
            "--strategy", "exhaustive", "--iters", "1", "--draws", "1", "--jobs", "1", "--quiet"]
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    shards = {m: tmp_path / f"bs{m}.parquet" for m in (2, 8)}
    assert sorted(tmp_path.iterdir()) == sorted(shards.values())
    for m, path in shards.items():
        assert set(pq.read_table(path).column("batch_size").to_pylist()) == {m}
    lines = proc.stderr.strip().splitlines()
    assert any(line.startswith("E4-N64-K64-top2-fp16 M=2:") for line in lines)
    assert any(line.startswith("E4-N64-K64-top2-fp16 M=8:") for line in lines)
    assert lines[-1].startswith("E4-N64-K64-top2-fp16: 2 batch sizes in")

    # The same command again: the written shards are kept, and only a missing one is tuned.
    kept = shards[8].read_bytes()
    shards[2].unlink()
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert "M=8: " in proc.stderr and "already written, not tuned again" in proc.stderr
    assert shards[8].read_bytes() == kept and shards[2].is_file()


def test_cli_batch_size_lists_need_a_shard_per_size(tmp_path):
    from moekernel.configs import STANDARD_BATCH_SIZES
    from moekernel.tune import batch_sizes

    assert batch_sizes("standard") == list(STANDARD_BATCH_SIZES) and batch_sizes("64,1,64") == [1, 64]
    proc = cli("--key", "E4-N64-K64-top2-fp16", "--batch-size", "1,64", "--out", str(tmp_path / "x.parquet"))
    assert proc.returncode == 2 and "{batch_size}" in proc.stderr
    for bad in ("0", "1,x"):
        proc = cli("--key", "E4-N64-K64-top2-fp16", "--batch-size", bad, "--out", str(tmp_path / "x.parquet"))
        assert proc.returncode == 2 and "--batch-size" in proc.stderr
    assert not list(tmp_path.iterdir())
