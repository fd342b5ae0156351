"""Timing every source at every batch size on the same inputs, each checked against the float32 reference.

At each batch size the sources a CUDA graph can hold take turns on the GPU (moekernel.kernel.timing.time_interleaved),
so a drift of its clocks weighs on them alike; one a graph cannot hold (torch's baseline where capture fails) is timed
on its own after them.
"""

from __future__ import annotations

from .. import roofline
from ..backend import torch_device
from ..roofline import Ceilings
from ..shapes import KernelShape
from .sources import Source, torch_baseline
from .table import fmt_time


def _time_sources(ready: list, backend: str, iters: int) -> list[tuple]:
    """(Timing or the exception, method) for each (callable, graph) of ``ready``: those a CUDA graph holds
    (``graph`` True, or any in the interpreter) taking turns, then each of the others on its own
    (:func:`_time_uncapturable`)."""
    from ..kernel.timing import time_interleaved

    found: list = [None] * len(ready)
    turns = [i for i, (_, graph) in enumerate(ready) if graph is True or backend != "cuda"]
    method = "cuda graph" if backend == "cuda" else "cpu wall clock"
    for i, timing in zip(turns, time_interleaved([ready[i][0] for i in turns], iters=iters, backend=backend)):
        found[i] = (timing, method)
    for i, (fn, graph) in enumerate(ready):
        if found[i] is None:
            try:
                found[i] = _time_uncapturable(fn, iters, graph)
            except Exception as exc:  # noqa: BLE001 - the caller records it as the source's error
                found[i] = (exc, None)
    return found


def _time_uncapturable(fn, iters: int, graph):
    """(Timing, method) on CUDA for a callable a graph may not hold: ``graph`` "try" (a graph, else events) or
    False (events)."""
    from ..kernel.timing import time_callable, time_with_events

    if graph == "try":
        try:
            return time_callable(fn, iters=iters), "cuda graph"
        except RuntimeError:
            import torch

            torch.cuda.synchronize()  # not capturable after all: time it call by call
    return time_with_events(fn, iters), "cuda events (not graph-capturable)"


def bench(shape: KernelShape, batch_sizes, sources: list[Source], ceilings: Ceilings, *, backend: str,
          iters: int = 20, seed: int = 0, routing: str = "uniform", log=None) -> list[dict]:
    """One row per (batch size, source) with its time, fraction of the floor and output check."""
    import torch

    from ..kernel.moe import make_runner
    from ..kernel.reference import fused_experts_ref, relative_error
    from ..kernel.testing import make_inputs

    bound = shape.info.rel_error_bound
    device = torch_device(backend)
    rows = []

    def failed(row, exc):  # a config that fails is a finding, not a crash
        row["error"] = f"{type(exc).__name__}: {exc}"[:300]
        if backend == "cuda":
            torch.cuda.synchronize()

    for M in batch_sizes:
        inputs = make_inputs(shape, M, routing=routing, seed=seed, device=device)
        roof = roofline.estimate(shape, M, roofline.hit_experts(inputs.topk_ids, shape.E), ceilings.bandwidth,
                                 ceilings.peak(shape.dtype))
        ready = []  # (row, source, callable, how a graph can hold it) of every source that could be set up
        for src in sources:
            row = {"batch_size": M, "source": src.name, **roof, "config": None, "config_batch_size": None,
                   "method": None, "time_us": None, "p20_us": None, "p80_us": None, "iters": None,
                   "fraction": None, "mismatch": None, "ref_error": None, "error": None, "skipped": None}
            rows.append(row)
            if src.kind == "file" and not src.table:
                row["skipped"] = src.note
                continue
            try:
                if src.kind == "torch":
                    fn, src.note, capturable = torch_baseline(inputs, shape)
                    graph = "try" if capturable else False
                else:
                    config, row["config_batch_size"] = src.config(shape, M)
                    row["config"] = config
                    fn, graph = make_runner(inputs, config, "both"), True
            except Exception as exc:  # noqa: BLE001
                failed(row, exc)
                continue
            ready.append((row, src, fn, graph))
        timings = _time_sources([(fn, graph) for _, _, fn, graph in ready], backend, iters)
        reference = None  # the float32 reference, computed once per batch size when a source first needs it
        for (row, src, fn, _), (timing, method) in zip(ready, timings):
            if isinstance(timing, Exception):
                failed(row, timing)
                continue
            try:
                out = fn().clone()
            except Exception as exc:  # noqa: BLE001
                failed(row, exc)
                continue
            row.update(method=method, time_us=timing.median_us, p20_us=timing.p20_us, p80_us=timing.p80_us,
                       iters=timing.iters)
            if roof["floor_us"] is not None:
                row["fraction"] = roof["floor_us"] / timing.median_us
            # Every source against the float32 reference itself, so one failing source hides no other's error.
            if reference is None:
                reference = fused_experts_ref(**inputs.kwargs())
            row["ref_error"] = relative_error(out, reference)
            # torch does not quantize the activations of w8a8 dtypes: a few per cent apart is expected.
            loose = src.kind == "torch" and shape.info.quantizes_activations
            row["mismatch"] = row["ref_error"] > bound * (2 if loose else 1)
            del out
        del ready, timings
        if log:
            log(f"M={M}: " + ", ".join(
                f"{r['source']} {fmt_time(r['time_us'])}" for r in rows if r["batch_size"] == M))
        del inputs, reference
    return rows

