"""The timing shard: one Parquet file per (kernel key, batch size), one row per candidate and gemm scope.

The schema is fixed here (see docs/ARCHITECTURE.md); the database builds its ``timings`` table from shards, so a
column change is a change there too. Shards are written under a temporary name and renamed: a shard that exists
is complete. A running job also keeps a checkpoint beside the shard (:func:`partial_path`) from which a killed job
resumes; its name does not end in ``.parquet`` so globbing shards never picks it up.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .space import PARAMS

STATUSES = ("ok", "out_of_resources", "compile_error", "runtime_error", "incorrect", "pruned")

_str, _int, _float, _bool = pa.string(), pa.int64(), pa.float64(), pa.bool_()
SCHEMA = pa.schema(
    [("key", _str), ("dtype", _str)]
    + [(name, _int) for name in ("E", "N", "K", "topk")]
    + [("block_shape", _str), ("batch_size", _int)]
    + [(name, _int) for name in PARAMS]
    + [("gemm", _str), ("status", _str)]
    + [("time_us", _float), ("p20_us", _float), ("p80_us", _float), ("iters", _int), ("compile_s", _float)]
    + [("error", _str), ("winner", _bool), ("verified", _bool)]
    + [(name, _str) for name in ("device", "backend", "triton_version", "torch_version", "moekernel_version")]
    + [("kernel_hash", _str), ("routing", _str), ("strategy", _str), ("seed", _int)]
    + [("timestamp", pa.timestamp("us", tz="UTC"))]
)
COLUMNS = tuple(SCHEMA.names)

#: Columns that must be equal for a checkpointed measurement to be reused: what the timing depends on.
RESUME_COLUMNS = (
    "key", "batch_size", "routing", "seed", "backend", "device", "triton_version", "torch_version", "kernel_hash",
)  # fmt: skip


def to_table(rows: Iterable[Mapping]) -> pa.Table:
    """Rows (dicts with every column) as a table of exactly :data:`SCHEMA`."""
    rows = list(rows)
    for row in rows:
        missing = set(COLUMNS) - set(row)
        if missing:
            raise ValueError(f"shard row lacks column(s) {sorted(missing)}")
        if row["status"] not in STATUSES:
            raise ValueError(f"unknown status {row['status']!r}")
    return pa.Table.from_pylist([{c: row[c] for c in COLUMNS} for row in rows], schema=SCHEMA)


def to_frame(table: pa.Table) -> pd.DataFrame:
    """A shard as pandas, keeping integer columns integer where they hold nulls (``iters`` of pruned rows)."""
    return table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)


def write_shard(path: str | os.PathLike, rows: Iterable[Mapping] | pa.Table) -> Path:
    """Write atomically: a temporary file in the same directory, flushed to disk, then renamed over ``path``."""
    path = Path(path)
    table = rows if isinstance(rows, pa.Table) else to_table(rows)
    if table.schema != SCHEMA:
        raise ValueError("table does not have the shard schema")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def check_writable(path: str | os.PathLike) -> None:
    """ValueError unless the shard ``path`` can be written: its folder is made if missing and a file written there
    and removed (the shard, its checkpoint and temporary file all live in it). A job checks this before measuring
    anything, so a bad output path never costs the measurements."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"output {path} is a folder; give the shard's file name, e.g. {path / 'bs64.parquet'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        raise ValueError(f"cannot write the shard {path}: {exc.strerror or exc} ({exc.filename or path.parent}); "
                         "choose an output path in a folder you can write") from None


def read_shard(path: str | os.PathLike) -> pa.Table:
    """A shard, checked against :data:`SCHEMA` (same names, order and types)."""
    table = pq.read_table(path)
    if table.schema.names != list(COLUMNS):
        raise ValueError(f"{path}: columns {table.schema.names} are not the shard schema")
    return table.cast(SCHEMA)


def partial_path(out: str | os.PathLike) -> Path:
    """The checkpoint of a running job: ``<out>.partial``."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def load_checkpoint(path: str | os.PathLike, settings: Mapping) -> dict[tuple, dict]:
    """Measured rows of a checkpoint whose :data:`RESUME_COLUMNS` equal ``settings``, keyed by (config id, gemm).

    A checkpoint that cannot be read (cut short by the kill) or was made with other settings gives nothing.
    """
    try:
        rows = read_shard(path).to_pylist()
    except (OSError, ValueError, pa.ArrowException):
        return {}
    reusable = {}
    for row in rows:
        if row["status"] == "pruned" or any(row[c] != settings[c] for c in RESUME_COLUMNS):
            continue
        reusable[(tuple(row[p] for p in PARAMS), row["gemm"])] = row
    return reusable
