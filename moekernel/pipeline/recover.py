"""Before a run: look at what earlier runs left, and set aside what is broken so this run rebuilds it.

Snakemake trusts a file that exists. A tune job's record (``tuned.json``) exists only if every shard it names was
complete when it was written, but a shard can be deleted or damaged since: then its record (bookkeeping, not a
measurement) is removed, so the tune job runs again and tunes only what is missing (the shards it finds whole are
kept). A shard that cannot be read is moved to ``superseded/`` as ``.corrupt`` (kept for a look, never read again),
and a database that DuckDB cannot open is renamed (``tuning.duckdb.corrupt-<time>``) and rebuilt from the shards.
No measurement is ever deleted.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from moekernel.pipeline.jobs import read_record
from moekernel.tuning import shard as shard_io


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def check_tune_records(records: list[str]) -> list[str]:
    """Records whose shards are missing or unreadable are removed (their jobs run again); returns what was done."""
    said = []
    for record in map(Path, records):
        if not record.is_file():
            continue
        try:
            shards = read_record(record)["shards"].values()
        except (OSError, ValueError, KeyError, AttributeError):
            shards, problems = [], [f"{record} cannot be read"]
        else:
            problems = []
        for shard in map(Path, shards):
            if not shard.is_file():
                problems.append(f"{shard} is missing")
            elif shard_io.shard_identity(shard) is None:
                kept = shard_io.supersede(shard, "not readable as a shard")
                problems.append(f"{shard} cannot be read (set aside as {kept})")
        if problems:
            record.unlink()
            said.append("; ".join(problems) + f": its tune job runs again ({record.parent.name}), keeping its "
                        "complete shards")
    return said


def check_database(path: str) -> list[str]:
    """A database DuckDB cannot open is renamed, so the database rule rebuilds it; returns what was done."""
    path = Path(path)
    if not path.is_file():
        return []
    import duckdb

    try:
        duckdb.connect(str(path), read_only=True).close()
    except duckdb.Error as exc:
        kept = path.with_name(f"{path.name}.corrupt-{_stamp()}")
        path.rename(kept)
        return [f"{path} cannot be opened ({str(exc).splitlines()[0]}): set aside as {kept.name}, rebuilt from the "
                "shards"]
    return []
