"""The timing shard: one Parquet file per (kernel key, batch size), one row per candidate and gemm scope.

The schema is fixed here (see docs/ARCHITECTURE.md); the database builds its ``timings`` table from shards, so a
column change is a change there too. Shards are written under a temporary name and renamed: a shard that exists
is complete. A running job also keeps a checkpoint beside the shard (:func:`partial_path`) from which a killed job
resumes; its name does not end in ``.parquet`` so globbing shards never picks it up.

A shard answers one tune job: its :func:`identity` (settings, kernel source, software, device) says which. A shard
of another identity at the same path (a newer Triton, an edited kernel, other settings) is never overwritten: it is
moved to ``superseded/`` beside it (:func:`supersede`) and stays in the database, marked by its versions.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..launch_params import EXTENDED_PARAMS
from .space import PARAMS, extended_id

STATUSES = ("ok", "out_of_resources", "compile_error", "runtime_error", "incorrect", "pruned")

_str, _int, _float, _bool = pa.string(), pa.int64(), pa.float64(), pa.bool_()
SCHEMA = pa.schema(
    [("key", _str), ("dtype", _str)]
    + [(name, _int) for name in ("E", "N", "K", "topk")]
    + [("block_shape", _str), ("batch_size", _int)]
    + [(name, _int) for name in PARAMS]
    # moekernel's own parameters (at their defaults: the engines' kernel); only the extended search sets them.
    + [(name, _int) for name in EXTENDED_PARAMS]
    + [("gemm", _str), ("status", _str)]
    + [("time_us", _float), ("p20_us", _float), ("p80_us", _float), ("iters", _int), ("compile_s", _float)]
    # Finalists re-timed on several routing draws (draw 0 is time_us's): per-draw medians, their mean and worst.
    + [("draw_us", pa.list_(_float)), ("mean_us", _float), ("worst_us", _float)]
    + [("error", _str), ("winner", _bool), ("verified", _bool)]
    # winner: the best of the engines' six parameters (what an engine file can hold); extended_winner: the best with
    # moekernel's own parameters too (what moekernel's own file holds), which may be the winner itself.
    + [("extended_winner", _bool)]
    + [(name, _str) for name in ("device", "backend", "triton_version", "torch_version", "moekernel_version")]
    + [("kernel_hash", _str), ("routing", _str), ("strategy", _str), ("seed", _int)]
    + [("settings", _str)]  # the job's TuneSettings as JSON (moekernel.tuning.settings)
    + [("seeded_from", _str)]  # where the fast search started: another key's shard, --seed-from shards, or null
    + [("timestamp", pa.timestamp("us", tz="UTC"))]
)
COLUMNS = tuple(SCHEMA.names)

#: Columns that must be equal for a checkpointed measurement to be reused: what the timing depends on.
RESUME_COLUMNS = (
    "key", "batch_size", "routing", "seed", "backend", "device", "triton_version", "torch_version", "kernel_hash",
)  # fmt: skip
#: Columns that say which job a finished shard answers: what a timing depends on, and the job's settings.
IDENTITY_COLUMNS = (*RESUME_COLUMNS, "settings")


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


#: Columns a shard written before they existed lacks; read back as nulls.
ADDED_COLUMNS = ("draw_us", "mean_us", "worst_us", "settings", "seeded_from", "SPLIT_K", "extended_winner", "TMA",
                 "PERSISTENT", "HALF_TAIL")


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


def _is_shard_schema(names: list[str]) -> bool:
    """The shard's columns in order, of this schema or one written before :data:`ADDED_COLUMNS` existed."""
    return [c for c in COLUMNS if c in names] == names and not set(COLUMNS) - set(names) - set(ADDED_COLUMNS)


def read_shard(path: str | os.PathLike) -> pa.Table:
    """A shard, as :data:`SCHEMA` (an older shard's missing :data:`ADDED_COLUMNS` are nulls)."""
    table = pq.read_table(path)
    names = table.schema.names
    if not _is_shard_schema(names):
        raise ValueError(f"{path}: columns {names} are not the shard schema")
    for column in COLUMNS:
        if column not in names:
            table = table.append_column(column, pa.nulls(table.num_rows, SCHEMA.field(column).type))
    return table.select(list(COLUMNS)).cast(SCHEMA)


def partial_path(out: str | os.PathLike) -> Path:
    """The checkpoint of a running job: ``<out>.partial``."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def load_checkpoint(path: str | os.PathLike, settings: Mapping) -> dict[tuple, dict]:
    """Measured rows of a checkpoint whose :data:`RESUME_COLUMNS` equal ``settings``, keyed as
    :class:`moekernel.tuning.space.Candidate` tuples (config id, gemm, moekernel's own parameters).

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
        reusable[(tuple(row[p] for p in PARAMS), row["gemm"], extended_id(row))] = row
    return reusable


def extended_rows(frame: pd.DataFrame) -> pd.Series:
    """Which rows of a shard frame set one of moekernel's own parameters (variants no engine file can hold); a
    null (a shard from before the parameter existed) is its default."""
    mask = pd.Series(False, index=frame.index)
    for param, default in EXTENDED_PARAMS.items():
        if param in frame:
            mask |= frame[param].fillna(default) != default
    return mask


def identity(row: Mapping) -> dict:
    """The :data:`IDENTITY_COLUMNS` of a shard row (every row of one shard shares them)."""
    return {c: row.get(c) for c in IDENTITY_COLUMNS}


def shard_identity(path: str | os.PathLike) -> dict | None:
    """The identity of the shard at ``path``, or None if it cannot be read as a shard. Reads the schema and the
    identity columns only: every run checks every shard this way (moekernel.pipeline.recover)."""
    try:
        names = pq.read_schema(path).names
        if not _is_shard_schema(names):
            return None
        table = pq.read_table(path, columns=[c for c in IDENTITY_COLUMNS if c in names])
    except (OSError, ValueError, pa.ArrowException):
        return None
    if table.num_rows == 0:
        return None
    return identity(table.slice(0, 1).to_pylist()[0])


def identity_change(old: Mapping | None, new: Mapping) -> str:
    """Why a shard of identity ``old`` does not answer the job ``new``, in words."""
    if old is None:
        return "not readable as a shard"
    changed = [f"{c} {old.get(c)!r} -> {new.get(c)!r}" for c in IDENTITY_COLUMNS if old.get(c) != new.get(c)]
    return "; ".join(changed) or "same job"


def supersede(path: str | os.PathLike, reason: str) -> Path:
    """Move a finished shard out of the way, kept: ``superseded/<name>.<UTC time>.parquet`` beside it (a file that is
    not a readable shard: ``.corrupt``), with a ``.why`` note. The database still reads the shards there (their rows
    carry their versions)."""
    path = Path(path)
    folder = path.parent / "superseded"
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    suffix = ".parquet" if shard_identity(path) is not None else ".corrupt"
    target = folder / f"{path.stem}.{stamp}{suffix}"
    os.replace(path, target)
    target.with_suffix(".why").write_text(json.dumps({"was": str(path), "reason": reason}) + "\n")
    return target


def superseded_shards(folder: str | os.PathLike) -> list[Path]:
    """The shards once at ``folder`` that newer jobs replaced (:func:`supersede`)."""
    return sorted((Path(folder) / "superseded").glob("*.parquet"))
