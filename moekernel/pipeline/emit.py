"""Winners → engine config files (results/configs/*.json).

One file per (E, N, device, dtype, block shape), keyed by batch size, written only through
:func:`moekernel.configs.write_config_file` and named only by :func:`moekernel.configs.config_file_name`,
so the bytes are the same whenever the data are. Split tuning's up configs go to the usual name and its
down configs to the ``gemm="down"`` twin.

The file name carries neither K nor top-k: two kernel keys that differ only there would land in one
file. That stops the run (:class:`EmitError`) instead of one silently overwriting the other.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from packaging.version import Version

from moekernel import configs
from moekernel.pipeline import database
from moekernel.heuristics import PARAMS
from moekernel.shapes import KernelShape

log = logging.getLogger(__name__)


class EmitError(Exception):
    """The winners cannot be written as engine files without losing or overwriting some."""


def plan_files(winners: pd.DataFrame) -> dict[str, dict[int, dict]]:
    """File name → {batch size: config} for every winner row; raises EmitError on any clash."""
    files: dict[str, dict[int, dict]] = {}
    owner: dict[str, str] = {}  # file name -> the key that filled it
    gemms: dict[str, set] = {}  # key -> gemm scopes seen, to catch split and unsplit winners mixed
    for (key, device, gemm), group in winners.groupby(["key", "device", "gemm"], sort=True):
        gemms.setdefault(key, set()).add(gemm)
        shape = KernelShape.from_key(key)
        name = configs.config_file_name(shape.E, shape.N, shape.config_dtype, shape.block_shape,
                                        device_name=configs.engine_device_name(device),
                                        gemm="down" if gemm == "down" else None)
        if owner.setdefault(name, key) != key:
            raise EmitError(
                f"kernel keys {owner[name]} and {key} both map to engine config file {name} "
                "(the name has no K or top-k); tune them in separate runs.")
        entries = files.setdefault(name, {})
        for row in group.itertuples(index=False):
            m = int(row.batch_size)
            if m in entries:
                raise EmitError(f"{key}: more than one {gemm} winner for batch size {m} on {device}")
            entries[m] = {p: int(getattr(row, p)) for p in PARAMS}
    for key, seen in gemms.items():
        if "both" in seen and seen & {"up", "down"}:
            raise EmitError(f"{key}: shards mix split (up/down) and whole-op winners; re-tune with one setting")
    return files


def write_configs(winners: pd.DataFrame, out_dir) -> list[Path]:
    """Write every file of :func:`plan_files` into ``out_dir``; returns the paths, sorted."""
    files = plan_files(winners)
    # The version the timings were made with, not whatever is installed now: rebuilds stay identical.
    triton_version = max(set(winners["triton_version"].dropna()), key=Version) if len(winners) else None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return sorted(configs.write_config_file(out_dir / name, entries, triton_version)
                  for name, entries in files.items())


def emit_from_shards(shards: list, out_dir) -> list[Path]:
    """The select step: read the tuner's winners from the shards and write the engine files."""
    con = database.open_shards(shards)
    winners = con.execute("SELECT * FROM winners ORDER BY key, device, gemm, batch_size").df()
    missing = con.execute("""
        SELECT key, batch_size FROM timings GROUP BY key, batch_size
        HAVING NOT bool_or(coalesce(winner, false)) ORDER BY key, batch_size""").fetchall()
    for key, m in missing:
        log.warning("%s: no winner at batch size %d (every candidate failed); the file skips it", key, m)
    return write_configs(winners, out_dir)
