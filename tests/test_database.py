"""moekernel.pipeline.database: results/tuning.duckdb built from shards, shapes and verify rows (no kernels run)."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from moekernel.pipeline import database

REPO = Path(__file__).resolve().parent.parent
KEY = "E8-N7168-K4096-top2-bf16"


def cfg(bm, bn=64, bk=64, g=1, w=4, s=3):
    return dict(BLOCK_SIZE_M=bm, BLOCK_SIZE_N=bn, BLOCK_SIZE_K=bk, GROUP_SIZE_M=g, num_warps=w, num_stages=s)


@pytest.fixture
def sources(tmp_path, write_shard):
    """Two shards (one failure among them), one shapes row per model, one verify file."""
    shards = [
        write_shard(tmp_path / "bs1.parquet", KEY, 1, [(cfg(16), 10.0), (cfg(32), 10.1), (cfg(64), 12.0),
                                                       (cfg(128), None, "out_of_resources")]),
        write_shard(tmp_path / "bs64.parquet", KEY, 64, [(cfg(16), 30.0), (cfg(64), 20.0)], winner=1),
    ]
    shapes = [
        {"model": m, "tp": 2, "ep": False, "dtype": "auto", "key": KEY, "E": 8, "N": 7168, "K": 4096, "topk": 2,
         "kernel_dtype": "bf16", "block_shape": None, "note": None}
        for m in ("mixtral-8x7b", "mixtral-8x7b-instruct")
    ]
    rows = [{"key": KEY, "batch_size": m, "source": src, "time_us": t, "rel_error": 1e-3, "ok": True,
             "config": "{}", "config_batch_size": m, "device": "NVIDIA_H100_80GB_HBM3", "backend": "cuda",
             "note": None}
            for m, src, t in [(1, "tuned", 10.0), (1, "default", 15.0), (64, "tuned", 20.0), (64, "default", 20.0),
                              (64, "baseline", 25.0)]]
    verify = tmp_path / "verify.parquet"
    pd.DataFrame(rows).to_parquet(verify)
    return shards, shapes, [verify]


@pytest.fixture
def db(tmp_path, sources):
    shards, shapes, comparisons = sources
    path = database.build(tmp_path / "results" / "tuning.duckdb", shards, shapes, comparisons, meta={"backend": "cuda"})
    con = duckdb.connect(str(path), read_only=True)
    yield con
    con.close()


def test_tables_and_views(db):
    names = {r[0] for r in db.execute("SHOW TABLES").fetchall()}
    assert {"shapes", "timings", "comparisons", "meta", "winners", "speedup", "failures", "near_best",
            "model_configs"} <= names
    assert db.execute("SELECT count(*) FROM timings").fetchone()[0] == 6
    cols = {r[0] for r in db.execute("DESCRIBE timings").fetchall()}
    assert {"E", "N", "K", "topk", "dtype", "block_shape", "batch_size", "BLOCK_SIZE_M", "num_stages", "status",
            "time_us", "winner", "device", "kernel_hash"} <= cols
    assert db.execute("SELECT key, E, N, K, topk FROM shapes").fetchall() == [(KEY, 8, 7168, 4096, 2)] * 2


def test_winners_are_the_tuners_choice(db):
    rows = db.execute("SELECT batch_size, BLOCK_SIZE_M, time_us FROM winners ORDER BY batch_size").fetchall()
    assert rows == [(1, 16, 10.0), (64, 64, 20.0)]
    # model_configs: one row per model the winner serves
    assert db.execute("SELECT count(*) FROM model_configs").fetchone()[0] == 4


def test_speedup_failures_and_near_best(db):
    speed = db.execute("SELECT batch_size, speedup_vs_default, speedup_vs_baseline FROM speedup ORDER BY 1").fetchall()
    assert speed[0][:2] == (1, 1.5) and speed[0][2] is None
    assert speed[1] == (64, 1.0, 1.25)
    assert db.execute("SELECT status, n FROM failures").fetchall() == [("out_of_resources", 1)]
    near = db.execute("SELECT batch_size, BLOCK_SIZE_M FROM near_best ORDER BY 1, 2").fetchall()
    assert near == [(1, 16), (1, 32), (64, 64)]  # 10.1 is within 2% of 10.0; 12.0 is not


def test_rebuild_replaces_the_file(tmp_path, sources):
    shards, shapes, comparisons = sources
    path = tmp_path / "db.duckdb"
    database.build(path, shards, shapes, comparisons)
    database.build(path, shards[:1], [], [])  # rebuilt from fewer sources: no stale rows survive
    con = duckdb.connect(str(path), read_only=True)
    assert con.execute("SELECT count(*) FROM timings").fetchone()[0] == 4
    assert con.execute("SELECT count(*) FROM comparisons").fetchone()[0] == 0  # empty, but the table exists
    assert not path.with_name(path.name + ".tmp").exists()


def test_open_shards_without_a_database(sources):
    con = database.open_shards(sources[0])
    assert con.execute("SELECT count(*) FROM winners").fetchone()[0] == 2


def test_readme_sql_examples_run(db):
    """Every ```sql block of the README runs against a real database and returns rows."""
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```sql\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 4
    for sql in blocks:
        assert db.execute(sql).fetchall(), sql


def test_shards_from_before_the_split_k_search_still_build(tmp_path, sources):
    # Written before SPLIT_K and extended_winner existed: the columns are nulls, every view works, none is extended.
    shards, shapes, comparisons = sources
    old = tmp_path / "old.parquet"
    pd.read_parquet(shards[0]).drop(columns=["SPLIT_K", "extended_winner"]).to_parquet(old)
    path = database.build(tmp_path / "old.duckdb", [old], shapes, comparisons)
    con = duckdb.connect(str(path), read_only=True)
    assert con.execute("SELECT count(*) FROM winners").fetchone()[0] == 1
    assert con.execute("SELECT count(*) FROM extended_winners").fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM speedup").fetchone()[0] == 2


def test_the_end_of_run_summary_counts_moekernels_own_files_apart(tmp_path, sources):
    from moekernel.pipeline.summary import summary

    shards, shapes, comparisons = sources
    extended = tmp_path / "extended.parquet"
    pd.DataFrame([{"key": KEY, "batch_size": 1, "source": "extended", "time_us": 9.0, "ok": True, "emitted": True,
                   "config": "{}", "device": "NVIDIA_H100_80GB_HBM3", "backend": "cuda"}]).to_parquet(extended)
    path = database.build(tmp_path / "s.duckdb", shards, shapes, comparisons + [extended])
    selected = tmp_path / "selected.json"
    selected.write_text('{"written": ["E=8,N=7168,device_name=NVIDIA_H100_80GB_HBM3.json", '
                        '"E=8,N=7168,device_name=NVIDIA_H100_80GB_HBM3.moekernel.json"], "unchanged": []}')
    text = summary(path, selected, tmp_path / "configs")
    assert "1 engine config file(s) in" in text and "and 1 of moekernel's own" in text
    assert "moekernel's own file holds its own parameters at 1 size(s)" in text
