"""results/tuning.duckdb: every timing ever measured, queryable with SQL.

Parquet shards (one per tune job and batch size) and the verify results are the source of truth;
:func:`build` turns them into a fresh database file in one go (written beside the target, then renamed),
so the pipeline has exactly one writer and the database can always be rebuilt. Shards that newer jobs
superseded (another Triton, an edited kernel, other settings) are kept in ``timings`` with
``current = false``: the ``versions`` views compare them. :func:`open_shards` gives the
``timings``/``winners`` relations over shard files without a database file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import duckdb
import pandas as pd

#: Views created in every database; the README's SQL examples build on them.
VIEWS = {
    # The tuner's verified choices: one `both` row per (key, batch size, device), or an `up` and a `down` row.
    "winners": "SELECT * FROM timings WHERE winner AND current",
    # The best with moekernel's own parameters too (SPLIT_K, TMA): the winner itself where no variant paid.
    "extended_winners": "SELECT * FROM timings WHERE extended_winner AND current",
    # Every config of the search within 2% of the fastest one (how flat the optimum is).
    "near_best": """
        SELECT * FROM (
            SELECT *, time_us / min(time_us) OVER (PARTITION BY key, batch_size, gemm, device) AS slowdown
            FROM timings WHERE status = 'ok' AND current
        ) WHERE slowdown <= 1.02""",
    "failures": """
        SELECT key, status, count(*) AS n, any_value(error) AS example_error
        FROM timings WHERE status <> 'ok' AND current GROUP BY key, status""",
    # Tuned against the kernel's default config and the baseline files, per key, batch size and device, on the
    # held-out routing draws; `emitted` says whether the engine file holds the tuned config or the default;
    # extended_us: the tuner's extended winner where it found one, extended_emitted: moekernel's own file holds it.
    "speedup": """
        SELECT t.key, t.batch_size, t.device, t.backend, t.time_us AS tuned_us,
               d.time_us AS default_us, b.time_us AS baseline_us,
               d.time_us / t.time_us AS speedup_vs_default,
               b.time_us / t.time_us AS speedup_vs_baseline,
               t.vs_default_worst AS worst_draw_vs_default,
               CASE WHEN t.emitted THEN 'tuned' WHEN d.emitted THEN 'default' END AS emitted,
               t.ok AS tuned_ok, t.rel_error AS tuned_rel_error,
               x.time_us AS extended_us, coalesce(x.emitted, false) AS extended_emitted
        FROM comparisons t
        LEFT JOIN comparisons d ON d.key = t.key AND d.batch_size = t.batch_size AND d.device = t.device
                                   AND d.source = 'default'
        LEFT JOIN comparisons b ON b.key = t.key AND b.batch_size = t.batch_size AND b.device = t.device
                                   AND b.source = 'baseline'
        LEFT JOIN comparisons x ON x.key = t.key AND x.batch_size = t.batch_size AND x.device = t.device
                                   AND x.source = 'extended'
        WHERE t.source = 'tuned'""",
    # The winner's time of every version a (key, batch size, device) was tuned with: Triton, torch, kernel source.
    "versions": """
        SELECT key, batch_size, device, triton_version, torch_version, kernel_hash, current,
               sum(coalesce(mean_us, time_us)) AS winner_us, count(*) AS winner_rows, max(timestamp) AS tuned_at
        FROM timings WHERE winner
        GROUP BY key, batch_size, device, triton_version, torch_version, kernel_hash, current""",
    # The current winners against each superseded version's: how much a Triton upgrade or a kernel edit moved them.
    "version_speedup": """
        SELECT c.key, c.batch_size, c.device, o.triton_version AS old_triton, c.triton_version AS new_triton,
               o.torch_version AS old_torch, c.torch_version AS new_torch, o.kernel_hash AS old_kernel,
               c.kernel_hash AS new_kernel, o.winner_us AS old_us, c.winner_us AS new_us,
               o.winner_us / c.winner_us AS speedup
        FROM versions c JOIN versions o USING (key, batch_size, device)
        WHERE c.current AND NOT o.current""",
    # Which model/tp/dtype each winner serves (a key may serve several).
    "model_configs": """
        SELECT s.model, s.tp, s.ep, s.dtype AS requested_dtype, w.*
        FROM shapes s JOIN winners w USING (key)""",
}

#: The comparisons table as verify writes it (moekernel.pipeline.verify.COLUMNS keeps the same order).
COMPARISONS_SCHEMA = {
    "key": "VARCHAR", "batch_size": "BIGINT", "source": "VARCHAR", "time_us": "DOUBLE",
    "rel_error": "DOUBLE", "ok": "BOOLEAN", "config": "VARCHAR", "config_batch_size": "BIGINT",
    "device": "VARCHAR", "backend": "VARCHAR", "note": "VARCHAR",
    "hit_experts": "BIGINT",  # experts the routing sent tokens to (what the roofline floor counts)
    "draw_us": "DOUBLE[]",  # the median on each held-out routing draw; time_us is their mean
    "vs_default": "DOUBLE", "vs_default_worst": "DOUBLE",  # tuned rows: default / tuned, mean and worst draw
    "emitted": "BOOLEAN",  # the engine file holds this source's config here (source extended: moekernel's own file)
}

SHAPES_SCHEMA = {
    "model": "VARCHAR", "tp": "BIGINT", "ep": "BOOLEAN", "dtype": "VARCHAR", "key": "VARCHAR", "E": "BIGINT",
    "N": "BIGINT", "K": "BIGINT", "topk": "BIGINT", "kernel_dtype": "VARCHAR", "block_shape": "VARCHAR",
    "note": "VARCHAR",  # what dtype=auto could not follow, from moekernel.models
}


def _read_shards(shards: Iterable, superseded: Iterable = ()) -> str:
    """SQL reading every shard as one relation (columns matched by name, so older shards still fit), with
    ``current`` false for the superseded ones."""
    def read(paths, current: bool) -> str | None:
        files = ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths)
        return f"SELECT *, {current} AS current FROM read_parquet([{files}], union_by_name = true)" if files else None

    parts = [q for q in (read(shards, True), read(superseded, False)) if q]
    return " UNION ALL BY NAME ".join(parts)


def _create_table(con, name: str, rows: pd.DataFrame | list[dict], schema: dict) -> None:
    """A typed table, so it exists with its columns even when there are no rows."""
    cols = ", ".join(f'"{c}" {t}' for c, t in schema.items())
    con.execute(f"CREATE TABLE {name} ({cols})")
    df = pd.DataFrame(rows, columns=list(schema))
    if len(df):
        con.register("_rows", df)
        con.execute(f"INSERT INTO {name} BY NAME SELECT * FROM _rows")
        con.unregister("_rows")


def open_shards(shards: list) -> duckdb.DuckDBPyConnection:
    """An in-memory connection with ``timings`` and ``winners`` views over the shard files."""
    con = duckdb.connect()
    con.execute(f"CREATE VIEW timings AS {_read_shards(shards)}")
    con.execute(f"CREATE VIEW winners AS {VIEWS['winners']}")
    return con


def build(db_path, shards: list, shapes: list[dict], comparisons: list | None = None,
          meta: dict | None = None, superseded: list = ()) -> Path:
    """Write a fresh database: tables shapes, timings, comparisons, meta, and the :data:`VIEWS`."""
    db_path = Path(db_path)
    tmp = db_path.with_name(db_path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(tmp))
    try:
        con.execute(f"CREATE TABLE timings AS {_read_shards(shards, superseded)} "
                    "ORDER BY key, batch_size, device, current DESC, gemm, time_us NULLS LAST")
        _add_missing_columns(con)
        _create_table(con, "shapes", shapes, SHAPES_SCHEMA)
        _create_table(con, "comparisons", _comparisons(comparisons or []), COMPARISONS_SCHEMA)
        meta_rows = [{"name": k, "value": str(v)} for k, v in sorted((meta or {}).items())]
        _create_table(con, "meta", meta_rows, {"name": "VARCHAR", "value": "VARCHAR"})
        for name, sql in VIEWS.items():
            con.execute(f"CREATE VIEW {name} AS {sql}")
        con.execute("CHECKPOINT")
    finally:
        con.close()
    os.replace(tmp, db_path)
    return db_path


def _add_missing_columns(con) -> None:
    """Shards written before a column existed leave it out of ``timings`` when none has it: add it as nulls, so
    the views (and the README's queries) work on any mix of old and new shards."""
    import pyarrow as pa

    from moekernel.tuning.shard import ADDED_COLUMNS, SCHEMA

    sql_type = {pa.int64(): "BIGINT", pa.float64(): "DOUBLE", pa.string(): "VARCHAR", pa.bool_(): "BOOLEAN",
                pa.list_(pa.float64()): "DOUBLE[]"}
    present = {name for (name, *_) in con.execute("DESCRIBE timings").fetchall()}
    for name in ADDED_COLUMNS:
        if name not in present:
            con.execute(f'ALTER TABLE timings ADD COLUMN "{name}" {sql_type[SCHEMA.field(name).type]}')


def _comparisons(files: list) -> pd.DataFrame:
    # Columns by name: verify files written before a column was added still fit (its values null).
    frames = [df for df in map(pd.read_parquet, files) if len(df)]
    return pd.concat(frames, ignore_index=True).reindex(columns=list(COMPARISONS_SCHEMA)) if frames else []
