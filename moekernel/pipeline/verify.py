"""Check an emitted config file the way an engine would use it, and time it against the alternatives.

For each batch size M the engine picks the file's entry nearest to M. That config (``tuned``), the
kernel's own default (``default``) and, when given, an engine's shipped file (``baseline``) each run
on the same inputs (:func:`moekernel.kernel.testing.make_inputs`); the output is compared with the float32
reference and timed with the tuner's own helper (:mod:`moekernel.kernel.timing`), so the figures are
comparable with the tuning shards. Rows go to the database's ``comparisons`` table.

In the Triton interpreter the timings are meaningless: rows say so in ``note``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from moekernel.pipeline.database import COMPARISONS_SCHEMA
from moekernel.shapes import KernelShape

log = logging.getLogger(__name__)

COLUMNS = list(COMPARISONS_SCHEMA)

INTERPRETER_NOTE = "interpreter: timing meaningless"


def tuned_device(shards: list) -> str | None:
    """The device a key's shards were timed on, spelt as in the emitted file names (see moekernel.emit).

    Several devices (a mixed cluster): the one this job runs on if it is among them, else the first.
    """
    from moekernel import configs
    from moekernel.pipeline import database

    con = database.open_shards(shards)
    devices = sorted({configs.engine_device_name(d) for (d,) in con.execute("SELECT DISTINCT device FROM timings").fetchall()})
    if len(devices) > 1:
        log.warning("shards were timed on several devices: %s", ", ".join(devices))
        here = configs.device_name()
        return here if here in devices else devices[0]
    return devices[0] if devices else None


def load_file_configs(shape: KernelShape, folder, device_name: str) -> dict[int, dict] | None:
    """The configs of ``shape`` in ``folder`` exactly (no fallback to shipped files), or None."""
    from moekernel import configs

    if folder is None:
        return None
    return configs.load_configs(shape.E, shape.N, shape.config_dtype, shape.block_shape, device_name,
                                folders=[Path(folder)], fallback=False)


def verify_key(key: str, batch_sizes: list[int], config_dir, device_name: str, *, routing: str = "uniform",
               seed: int = 0, iters: int = 20, baseline_dir=None, backend: str = "cuda") -> pd.DataFrame:
    """One row per (batch size, source) for ``key``; see the module docstring.

    ``device_name``: whose files to check (the device the key was tuned on, :func:`tuned_device`); the
    baseline folder is looked up under the same name.
    """
    from moekernel import configs, roofline
    from moekernel.backend import torch_device
    from moekernel.kernel import testing
    from moekernel.kernel.moe import make_runner
    from moekernel.kernel.reference import fused_experts_ref, relative_error
    from moekernel.kernel.timing import time_callable  # the tuner's, with its graph size: times compare with shards'

    shape = KernelShape.from_key(key)
    bound = shape.info.rel_error_bound  # the tuner's own bound: a winner it accepted passes here
    sources = {"tuned": load_file_configs(shape, config_dir, device_name)}
    if baseline_dir is not None:
        sources["baseline"] = load_file_configs(shape, baseline_dir, device_name)
    base = {"key": key, "device": device_name, "backend": backend}

    rows = []
    for M in batch_sizes:
        inputs = testing.make_inputs(shape, M, routing=routing, seed=seed, device=torch_device(backend))
        ref = fused_experts_ref(**inputs.kwargs())
        at_m = {**base, "batch_size": M, "hit_experts": roofline.hit_experts(inputs.topk_ids, shape.E)}
        candidates = {"default": (configs.default_config(M, shape.E, shape.N, shape.K, shape.topk, shape.dtype,
                                                         shape.block_shape), None)}
        for source, table in sources.items():
            if table:
                m = configs.nearest_batch_size(table, M)
                candidates[source] = (table[m], m)
            else:
                # A missing tuned file is a failure; a baseline folder without this shape is just no data.
                rows.append({**at_m, "source": source, "ok": False if source == "tuned" else None,
                             "note": f"no {source} config file for device {device_name}"})
        for source, (config, config_m) in candidates.items():
            row = {**at_m, "source": source, "config": json.dumps(config, sort_keys=True),
                   "config_batch_size": config_m}
            try:
                runner = make_runner(inputs, config)
                err = relative_error(runner(), ref)
                timing = time_callable(runner, iters=iters, backend=backend)
                row.update(time_us=timing.median_us, rel_error=err, ok=err <= bound,
                           note=INTERPRETER_NOTE if backend == "interpret" else None)
                if err > bound:
                    row["note"] = f"relative error {err:.3g} above the {shape.dtype} bound {bound:g}"
            except Exception as exc:  # a config that fails here is a finding, not a pipeline crash
                log.warning("%s M=%d %s config failed: %s", key, M, source, exc)
                row.update(ok=False, note=f"{type(exc).__name__}: {exc}"[:500])
            rows.append(row)
        del inputs, ref
    return pd.DataFrame(rows, columns=COLUMNS).astype(
        {"batch_size": "int64", "config_batch_size": "Int64", "time_us": "float64", "rel_error": "float64",
         "ok": "boolean", "hit_experts": "Int64"})
