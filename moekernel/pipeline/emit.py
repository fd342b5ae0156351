"""Winners → engine config files (results/configs/*.json), and moekernel's own files beside them.

One file per (E, N, device, dtype, block shape), keyed by batch size, formatted only by
:func:`moekernel.configs.format_config_file` and named only by :func:`moekernel.configs.config_file_name`,
so the bytes are the same whenever the data are. Split tuning's up configs go to the usual name and its
down configs to the ``gemm="down"`` twin. In the pipeline the configs are the ones verify chose
(:func:`emit_from_verify`: the tuned winner, or the default where the winner lost on held-out routing). Where verify
also chose a config with moekernel's own parameters (SPLIT_K, TMA) at some size, moekernel's own file
(``…,moekernel.json``, :func:`moekernel.configs.extended_config_file_name`) holds every size of the engine file with
those configs in place; moekernel's runtime reads it first, engines never see it.

The file name carries neither K nor top-k: two kernel keys that differ only there would land in one
file. That stops the run (:class:`EmitError`) instead of one silently overwriting the other.

Files are published (:func:`publish`) so that nothing of the user's is lost: every file is written whole or not
at all (temporary name, then rename), nothing is touched before all contents are known, a file that differs from
what the pipeline last wrote there (a hand edit) is backed up before it is replaced, and files the pipeline did
not write are left alone. ``.moekernel-written`` in the folder records what the pipeline wrote.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from packaging.version import Version

from moekernel import configs
from moekernel.pipeline import database
from moekernel.launch_params import PARAMS
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


def file_texts(winners: pd.DataFrame) -> dict[str, str]:
    """{file name: its exact text} for every file of :func:`plan_files`."""
    files = plan_files(winners)
    # The version the timings were made with, not whatever is installed now: rebuilds stay identical.
    triton_version = max(set(winners["triton_version"].dropna()), key=Version) if len(winners) else None
    return {name: configs.format_config_file(entries, triton_version) for name, entries in files.items()}


def write_configs(winners: pd.DataFrame, out_dir) -> list[Path]:
    """Write every file of :func:`plan_files` into ``out_dir``; returns the paths, sorted."""
    out_dir = Path(out_dir)
    published = publish(file_texts(winners), out_dir)
    return sorted(out_dir / name for name in published["written"] + published["unchanged"])


RECORD = ".moekernel-written"  # what the pipeline wrote into a configs folder (JSON: {file name: sha256})


def _sha(text: bytes) -> str:
    return hashlib.sha256(text).hexdigest()


def publish(texts: dict[str, str], out_dir) -> dict[str, list]:
    """Write ``texts`` into ``out_dir`` without losing anything of the user's (see the module docstring).

    Returns what happened: ``written``, ``unchanged``, ``backed_up`` ([file, backup]), ``removed`` (files this
    pipeline wrote before and no longer produces), ``kept`` (such files edited by hand, left in place)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record_path = out_dir / RECORD
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        record = {}
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    done: dict[str, list] = {"written": [], "unchanged": [], "backed_up": [], "removed": [], "kept": []}
    for name, text in sorted(texts.items()):
        path, data = out_dir / name, text.encode()
        if path.is_file():
            current = path.read_bytes()
            if current == data:
                done["unchanged"].append(name)
                record[name] = _sha(data)
                continue
            if record.get(name) != _sha(current):  # not what we wrote last: a hand edit, or someone else's file
                backup = path.with_name(f"{name}.edited-{stamp}")
                os.replace(path, backup)
                done["backed_up"].append([name, backup.name])
                log.warning("%s differs from what the pipeline wrote there (edited by hand?): kept as %s",
                            path, backup.name)
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        record[name] = _sha(data)
        done["written"].append(name)
    for name in sorted(set(record) - set(texts)):
        path = out_dir / name
        if path.is_file() and _sha(path.read_bytes()) != record[name]:
            done["kept"].append(name)
            log.warning("%s is no longer produced but was edited by hand: left in place", path)
        else:
            path.unlink(missing_ok=True)
            done["removed"].append(name)
        del record[name]
    tmp = record_path.with_name(record_path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, record_path)
    return done


def emit_from_verify(shards: list, verify_files: list, out_dir) -> dict[str, list]:
    """The select step: at each (key, device, batch size) the config verify chose (``emitted``: the tuned winner, or
    the default), as engine files, and moekernel's own file beside each engine file where verify chose a config with
    moekernel's own parameters at some size (:func:`extended_texts`); the shards give the Triton version. Returns
    :func:`publish`'s account."""
    con = database.open_shards(shards)
    versions = con.execute("SELECT DISTINCT key, triton_version FROM winners").df()
    rows = [row for frame in map(pd.read_parquet, verify_files)
            for row in frame[frame["emitted"].fillna(False).astype(bool)].itertuples(index=False)]
    picked = [row for row in rows if row.source != "extended"]
    # A key tuned split (up and down apart) gets split files throughout: a default kept at some size drives both.
    split_keys = {row.key for row in picked if "up" in json.loads(row.config)}
    chosen = []
    for row in picked:
        config = json.loads(row.config)
        if "up" not in config and row.key in split_keys:
            config = {"up": config, "down": config}
        parts = config.items() if "up" in config else [("both", config)]
        for gemm, part in parts:
            chosen.append({"key": row.key, "device": row.device, "gemm": gemm, "batch_size": row.batch_size,
                           "source": row.source, **part})
    winners = pd.DataFrame(chosen, columns=["key", "device", "gemm", "batch_size", "source", *PARAMS])
    winners = winners.merge(versions, on="key", how="left")
    for row in winners[winners["source"] == "default"].itertuples(index=False):
        log.info("%s on %s at batch size %d: the file holds the default config (see the comparisons table)",
                 row.key, row.device, row.batch_size)
    texts = file_texts(winners)
    texts.update(extended_texts(picked, [row for row in rows if row.source == "extended"], versions))
    return publish(texts, out_dir)


def extended_texts(engine_rows: list, extended_rows: list, versions: pd.DataFrame) -> dict[str, str]:
    """moekernel's own files ({name: text}): per (key, device) with an ``extended`` row verify chose, every batch
    size the engine file holds, with the extended config where verify chose one. (Where it chose none, the engine
    file says everything and no own file is written; publish removes one an earlier run wrote.)"""
    version = dict(zip(versions["key"], versions["triton_version"]))
    chosen: dict[tuple, dict[int, dict]] = {}
    for row in engine_rows:
        chosen.setdefault((row.key, row.device), {})[int(row.batch_size)] = json.loads(row.config)
    texts = {}
    for (key, device), entries in sorted(chosen.items()):
        better = {int(r.batch_size): json.loads(r.config) for r in extended_rows if (r.key, r.device) == (key, device)}
        if not better:
            continue
        shape = KernelShape.from_key(key)
        name = configs.extended_config_file_name(shape.E, shape.N, shape.config_dtype, shape.block_shape,
                                                 device_name=configs.engine_device_name(device))
        texts[name] = configs.format_extended_config_file({**entries, **better}, version.get(key))
    return texts


def emit_from_shards(shards: list, out_dir) -> list[Path]:
    """The tuner's winners straight from shards, as engine files (without a verify step)."""
    con = database.open_shards(shards)
    winners = con.execute("SELECT * FROM winners ORDER BY key, device, gemm, batch_size").df()
    missing = con.execute("""
        SELECT key, batch_size FROM timings GROUP BY key, batch_size
        HAVING NOT bool_or(coalesce(winner, false)) ORDER BY key, batch_size""").fetchall()
    for key, m in missing:
        log.warning("%s: no winner at batch size %d (every candidate failed); the file skips it", key, m)
    return write_configs(winners, out_dir)
