"""The shard format: exact columns and types, atomic writes, checkpoints."""

from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from moekernel.tuning import shard

# docs/ARCHITECTURE.md, "Shard columns", spelled out again on purpose: a change must be made in both places.
EXPECTED = [
    ("key", pa.string()), ("dtype", pa.string()), ("E", pa.int64()), ("N", pa.int64()), ("K", pa.int64()),
    ("topk", pa.int64()), ("block_shape", pa.string()), ("batch_size", pa.int64()),
    ("BLOCK_SIZE_M", pa.int64()), ("BLOCK_SIZE_N", pa.int64()), ("BLOCK_SIZE_K", pa.int64()),
    ("GROUP_SIZE_M", pa.int64()), ("num_warps", pa.int64()), ("num_stages", pa.int64()), ("SPLIT_K", pa.int64()),
    ("TMA", pa.int64()), ("PERSISTENT", pa.int64()), ("HALF_TAIL", pa.int64()),
    ("gemm", pa.string()), ("status", pa.string()),
    ("time_us", pa.float64()), ("p20_us", pa.float64()), ("p80_us", pa.float64()), ("iters", pa.int64()),
    ("compile_s", pa.float64()), ("draw_us", pa.list_(pa.float64())), ("mean_us", pa.float64()),
    ("worst_us", pa.float64()), ("error", pa.string()), ("winner", pa.bool_()), ("verified", pa.bool_()),
    ("extended_winner", pa.bool_()), ("device", pa.string()), ("backend", pa.string()), ("triton_version", pa.string()),
    ("torch_version", pa.string()), ("moekernel_version", pa.string()), ("kernel_hash", pa.string()),
    ("routing", pa.string()), ("strategy", pa.string()), ("seed", pa.int64()), ("settings", pa.string()),
    ("seeded_from", pa.string()), ("timestamp", pa.timestamp("us", tz="UTC")),
]  # fmt: skip


def row(**overrides):
    base = dict(key="E4-N64-K64-top2-fp16", dtype="fp16", E=4, N=64, K=64, topk=2, block_shape=None, batch_size=8,
                BLOCK_SIZE_M=16, BLOCK_SIZE_N=32, BLOCK_SIZE_K=64, GROUP_SIZE_M=1, num_warps=4, num_stages=2,
                SPLIT_K=1, TMA=0, PERSISTENT=0, HALF_TAIL=0, gemm="both", status="ok", time_us=1.5, p20_us=1.4, p80_us=1.6, iters=20, compile_s=0.8,
                draw_us=[1.5, 1.6, 1.4], mean_us=1.5, worst_us=1.6, error=None,
                winner=True, verified=True, extended_winner=True, device="cpu-interpreter", backend="interpret", triton_version="3.9.0",
                torch_version="2.13", moekernel_version="0.1.0", kernel_hash="abc", routing="uniform",
                strategy="fast", seed=0, settings='{"draws": 3}', seeded_from=None,
                timestamp=datetime(2026, 1, 1, tzinfo=timezone.utc))
    return {**base, **overrides}


def test_schema_is_the_documented_one():
    assert [(f.name, f.type) for f in shard.SCHEMA] == EXPECTED
    assert set(shard.STATUSES) == {"ok", "out_of_resources", "compile_error", "runtime_error", "incorrect", "pruned"}


def test_write_read_roundtrip_keeps_types(tmp_path):
    rows = [row(), row(status="pruned", time_us=None, p20_us=None, p80_us=None, iters=None, compile_s=None,
                       error="why", winner=False, verified=False)]
    path = shard.write_shard(tmp_path / "sub" / "bs8.parquet", rows)
    table = shard.read_shard(path)
    assert [(f.name, f.type) for f in table.schema] == EXPECTED
    frame = shard.to_frame(table)
    assert str(frame["iters"].dtype) == "Int64" and frame["iters"].isna().tolist() == [False, True]
    assert frame["winner"].tolist() == [True, False]
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # no temporary file left


def test_rows_must_be_complete_and_valid():
    with pytest.raises(ValueError, match="lacks"):
        shard.to_table([{k: v for k, v in row().items() if k != "seed"}])
    with pytest.raises(ValueError, match="status"):
        shard.to_table([row(status="fine")])


def test_failed_write_leaves_the_old_shard_and_no_temp(tmp_path, monkeypatch):
    path = shard.write_shard(tmp_path / "bs8.parquet", [row()])

    def broken(table, where, **kw):
        open(where, "wb").write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", broken)
    with pytest.raises(OSError):
        shard.write_shard(path, [row(time_us=9.0)])
    assert shard.read_shard(path).column("time_us").to_pylist() == [1.5]
    assert list(tmp_path.iterdir()) == [path]


def test_read_shard_rejects_other_schemas(tmp_path):
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"key": ["a"]}), path)
    with pytest.raises(ValueError):
        shard.read_shard(path)


def test_checkpoint_reuse_needs_equal_settings(tmp_path):
    out = tmp_path / "bs8.parquet"
    part = shard.partial_path(out)
    assert part.name == "bs8.parquet.partial" and part.suffix != ".parquet"  # shard globs never see it
    shard.write_shard(part, [row(), row(BLOCK_SIZE_N=64, status="compile_error", error="boom"),
                             row(BLOCK_SIZE_N=128, status="pruned"), row(SPLIT_K=2, time_us=1.2),
                             row(TMA=2, time_us=1.1), row(PERSISTENT=1, time_us=1.0), row(HALF_TAIL=1, time_us=0.9),
                             row(SPLIT_K=None, TMA=None, PERSISTENT=None, HALF_TAIL=None, BLOCK_SIZE_K=32)])
    reused = shard.load_checkpoint(part, row())
    # Keyed as the tuner's candidates are (config id, gemm, (SPLIT_K, TMA, PERSISTENT, HALF_TAIL)), nulls (older
    # shards) as the defaults; pruned rows are recomputed.
    six = (16, 32, 64, 1, 4, 2)
    assert set(reused) == {(six, "both", (1, 0, 0, 0)), ((16, 64, 64, 1, 4, 2), "both", (1, 0, 0, 0)),
                           (six, "both", (2, 0, 0, 0)), (six, "both", (1, 2, 0, 0)), (six, "both", (1, 0, 1, 0)),
                           (six, "both", (1, 0, 0, 1)), ((16, 32, 32, 1, 4, 2), "both", (1, 0, 0, 0))}
    assert shard.load_checkpoint(part, row(seed=1)) == {}
    assert shard.load_checkpoint(part, row(kernel_hash="other")) == {}
    part.write_bytes(b"truncated")
    assert shard.load_checkpoint(part, row()) == {}
    assert shard.load_checkpoint(tmp_path / "missing", row()) == {}
