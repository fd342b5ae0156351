"""Re-time the tuner's winners on routing draws it never saw, against the default config (and a baseline), and decide
what the engine file holds at each batch size.

For each batch size M of a (GPU model, key) the winner of its shard (``tuned``), the kernel's default config
(``default``) and, when given, the config an engine's shipped file picks for M (``baseline``, its nearest batch
size) run on the same inputs: the tuner's weights and activations (:func:`moekernel.kernel.testing.make_inputs`)
with ``draws`` routing draws from :data:`moekernel.kernel.testing.HELD_OUT_DRAW` on, which the tuner never times
on. Each draw is timed with the tuner's own helper (:mod:`moekernel.kernel.timing`, so times compare with the
shards'), the sources taking turns; each output is checked against the float32 reference on the first draw.

A winner fitted to the tuner's draws can lose elsewhere: where tuned is slower than the default by more than
``max_loss`` on any held-out draw (worst default/tuned ratio below 1 - max_loss), the engine file holds the default
for that size. The ``emitted`` column says which config the file holds; ``vs_default``/``vs_default_worst`` the
mean and worst default/tuned ratios. Where the tuner found a faster config with moekernel's own parameters
(``extended``: SPLIT_K or TMA on the winner or a finalist), it is timed too, and its ``emitted`` says whether
moekernel's own config file holds it (:func:`decide`); an engine file never can. Rows go to the database's
``comparisons`` table; in the Triton interpreter the timings are meaningless and rows say so in ``note``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pandas as pd

from moekernel.launch_params import EXTENDED_PARAMS, PARAMS
from moekernel.pipeline.database import COMPARISONS_SCHEMA
from moekernel.shapes import KernelShape

log = logging.getLogger(__name__)

COLUMNS = list(COMPARISONS_SCHEMA)

INTERPRETER_NOTE = "interpreter: timing meaningless"


def winners_by_size(shards: list) -> dict[int, dict]:
    """{batch size: the tuner's winning config} from a key's shards: six parameters, or {"up":, "down":} (split)."""
    from moekernel.pipeline import database

    return _configs_by_size(database.open_shards(shards), "SELECT * FROM winners ORDER BY batch_size, gemm")


def extended_by_size(shards: list) -> dict[int, dict]:
    """{batch size: the tuner's extended winner} from a key's shards, where it differs from the engine winner (a
    variant with moekernel's own parameters): its six parameters and those, or {"up":, "down":} (split)."""
    from moekernel.pipeline import database

    con = database.open_shards(shards)
    columns = {name for (name, *_) in con.execute("DESCRIBE timings").fetchall()}
    if "extended_winner" not in columns:  # shards from before the extended search: none
        return {}
    found = _configs_by_size(con, "SELECT * FROM timings WHERE extended_winner ORDER BY batch_size, gemm")
    def own(config: dict) -> bool:
        halves = (config["up"], config["down"]) if "up" in config else (config,)
        return any(p in half for half in halves for p in EXTENDED_PARAMS)

    return {m: c for m, c in found.items() if own(c)}


def _configs_by_size(con, sql: str) -> dict[int, dict]:
    """{batch size: config} from shard rows: a ``both`` row's config, or {"up":, "down":}; moekernel's own
    parameters where off their defaults."""
    found: dict[int, dict] = {}
    for row in con.execute(sql).df().itertuples(index=False):
        config = {p: int(getattr(row, p)) for p in PARAMS}
        for param, default in EXTENDED_PARAMS.items():
            value = getattr(row, param, None)  # null (or absent) in shards from before the parameter existed
            if value is not None and not pd.isna(value) and int(value) != default:
                config[param] = int(value)
        if row.gemm == "both":
            found[int(row.batch_size)] = config
        else:
            found.setdefault(int(row.batch_size), {})[row.gemm] = config
    return found


def load_file_configs(shape: KernelShape, folder, device_name: str) -> dict[int, dict] | None:
    """The configs of ``shape`` in ``folder`` exactly (no fallback to shipped files), or None."""
    from moekernel import configs

    if folder is None:
        return None
    return configs.load_configs(shape.E, shape.N, shape.config_dtype, shape.block_shape, device_name,
                                folders=[Path(folder)], fallback=False)


def verify_key(gpu: str, key: str, shards: dict[int, str], *, routing: str = "uniform", seed: int = 0,
               iters: int = 20, draws: int = 3, max_loss: float = 0.02, baseline_dir=None,
               backend: str = "cuda") -> pd.DataFrame:
    """One row per (batch size, source) for ``key`` on GPU model ``gpu``; see the module docstring.

    ``shards``: {batch size: shard path} of the key's tune job; the baseline folder is looked up under ``gpu``."""
    from moekernel import configs, roofline
    from moekernel.backend import torch_device
    from moekernel.kernel import testing
    from moekernel.kernel.moe import make_runner
    from moekernel.kernel.reference import fused_experts_ref, relative_error
    from moekernel.kernel.timing import time_interleaved

    shape = KernelShape.from_key(key)
    bound = shape.info.rel_error_bound  # the tuner's own bound: a winner it accepted passes here
    tuned = winners_by_size(list(shards.values()))
    extended = extended_by_size(list(shards.values()))
    baseline = load_file_configs(shape, baseline_dir, gpu) if baseline_dir is not None else None
    base = {"key": key, "device": gpu, "backend": backend}
    note = INTERPRETER_NOTE if backend == "interpret" else None

    def sources(M: int) -> dict[str, tuple[dict, int | None]]:
        """{source: (config, the batch size of the file entry it came from)} at batch size M."""
        found = {"default": (configs.default_config(M, shape.E, shape.N, shape.K, shape.topk, shape.dtype,
                                                    shape.block_shape), None)}
        if M in tuned:
            found["tuned"] = (tuned[M], M)
        if M in extended:
            found["extended"] = (extended[M], M)
        if baseline:
            m = configs.nearest_batch_size(baseline, M)
            found["baseline"] = (baseline[m], m)
        return found

    rows = []
    for M in sorted(shards):
        inputs = testing.make_inputs(shape, M, routing=routing, seed=seed, device=torch_device(backend))
        held_out = [testing.redraw(inputs, shape, M, routing=routing, seed=seed, draw=testing.HELD_OUT_DRAW + d)
                    for d in range(draws)]
        at_m = {**base, "batch_size": M, "hit_experts": roofline.hit_experts(held_out[0].topk_ids, shape.E)}
        candidates = sources(M)
        if "tuned" not in candidates:
            rows.append({**at_m, "source": "tuned", "ok": False, "emitted": False,
                         "note": "no winner in the shard (every candidate failed); the file holds the default"})
        if baseline_dir is not None and not baseline:
            rows.append({**at_m, "source": "baseline", "note": f"no baseline config file for device {gpu}"})

        results = {s: {**at_m, "source": s, "config": json.dumps(c, sort_keys=True), "config_batch_size": m,
                       "draw_us": [], "note": note} for s, (c, m) in candidates.items()}
        # Sources with the same config (the tuned winner is often the default, or the baseline's) are one
        # measurement: timed once per draw, shared by their rows.
        by_config: dict[str, list[dict]] = {}
        for row in results.values():
            by_config.setdefault(row["config"], []).append(row)
        ref = fused_experts_ref(**held_out[0].kwargs())

        def failed(same: list[dict], exc: Exception) -> None:
            # A config that fails here is a finding, not a pipeline crash.
            log.warning("%s M=%d %s config failed: %s", key, M, "/".join(r["source"] for r in same), exc)
            for row in same:
                row.update(ok=False, note=f"{type(exc).__name__}: {exc}"[:500])

        for d, draw_inputs in enumerate(held_out):
            runners = {}
            for text, same in by_config.items():
                if same[0].get("ok") is False:
                    continue
                try:
                    runner = make_runner(draw_inputs, json.loads(text))
                    if d == 0:
                        err = relative_error(runner(), ref)
                        for row in same:
                            row.update(rel_error=err, ok=err <= bound)
                            if err > bound:
                                row["note"] = f"relative error {err:.3g} above the {shape.dtype} bound {bound:g}"
                        if err > bound:
                            continue
                    runners[text] = runner
                except Exception as exc:  # noqa: BLE001
                    failed(same, exc)
            # The configs take turns on the GPU, so a drift of its clocks weighs on them alike.
            timings = time_interleaved(list(runners.values()), iters=iters, backend=backend)
            for text, timing in zip(runners, timings):
                if isinstance(timing, Exception):
                    failed(by_config[text], timing)
                    continue
                for row in by_config[text]:
                    row["draw_us"].append(timing.median_us)
            del runners, timings
        for row in results.values():
            if row["draw_us"] and len(row["draw_us"]) == draws:
                row["time_us"] = sum(row["draw_us"]) / draws
            else:
                row["draw_us"] = None
        decide(results, max_loss)
        rows += results.values()
        del inputs, held_out, ref
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.astype({"batch_size": "int64", "config_batch_size": "Int64", "time_us": "float64",
                         "rel_error": "float64", "ok": "boolean", "hit_experts": "Int64", "vs_default": "float64",
                         "vs_default_worst": "float64", "emitted": "boolean"})


def write(rows: pd.DataFrame, path) -> None:
    """The rows of one key as its Parquet file, written atomically (a half-written file is never a result)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    rows.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def describe(rows: pd.DataFrame) -> str:
    """``54 rows, 0 not ok, 3 size(s) keep the default``."""
    not_ok = int((rows["ok"] == False).sum())  # a nullable column: None is neither
    kept = int(((rows["source"] == "default") & rows["emitted"].fillna(False)).sum())
    return f"{len(rows)} rows, {not_ok} not ok, {kept} size(s) keep the default"


def decide(results: dict[str, dict], max_loss: float) -> None:
    """Mark which config the engine file holds at this batch size: the tuned one, unless it is wrong, missing, or
    slower than the default by more than ``max_loss`` on some held-out draw. Then whether moekernel's own file
    holds the extended winner (``emitted`` of the ``extended`` row): where it is correct, faster on average than
    what the engine file holds and never slower by more than ``max_loss`` on a held-out draw; else it holds what the
    engine file holds."""
    _decide_engine(results, max_loss)
    extended = results.get("extended")
    if extended is None:
        return
    extended["emitted"] = False
    engine = next(row for source, row in results.items() if source != "extended" and row.get("emitted"))
    if not extended.get("ok") or extended.get("time_us") is None or engine.get("time_us") is None:
        return
    default = results["default"]
    if default.get("time_us") is not None:
        extended["vs_default"] = default["time_us"] / extended["time_us"]
        extended["vs_default_worst"] = min(d / t for d, t in zip(default["draw_us"], extended["draw_us"]))
    ratios = [e / t for e, t in zip(engine["draw_us"], extended["draw_us"])]
    extended["emitted"] = engine["time_us"] > extended["time_us"] and min(ratios) >= 1 - max_loss
    if not extended["emitted"]:
        extended["note"] = _join(extended["note"], f"moekernel's own file holds the {engine['source']} config: this "
                                                   f"one was {engine['time_us'] / extended['time_us']:.3f}x its "
                                                   f"speed on average, {min(ratios):.3f}x on its worst draw")


def _decide_engine(results: dict[str, dict], max_loss: float) -> None:
    tuned, default = results.get("tuned"), results["default"]
    default["emitted"] = True
    if tuned is None:
        return
    tuned["emitted"] = False
    if not tuned.get("ok") or tuned.get("time_us") is None:
        default["note"] = _join(default["note"], "the file holds this config: the tuned one failed here")
        return
    if default.get("time_us") is not None:
        ratios = [d / t for d, t in zip(default["draw_us"], tuned["draw_us"])]
        tuned["vs_default"] = default["time_us"] / tuned["time_us"]
        tuned["vs_default_worst"] = min(ratios)
        if min(ratios) < 1 - max_loss:
            default["note"] = _join(default["note"], f"the file holds this config: tuned was {1 / min(ratios):.3f}x "
                                                     f"its time on a held-out draw (limit {1 + max_loss:.2f}x)")
            return
    tuned["emitted"], default["emitted"] = True, False


def _join(*parts) -> str:
    return "; ".join(p for p in parts if p)
