"""Compiling candidates on all CPU cores before any is timed.

Compiling (~0.8 s a config, more with two kernels) dominates a tuning job, and it is CPU work the GPU need not wait
on one config at a time. Worker processes call ``moekernel.fused_moe.compile_config``, which fills Triton's
on-disk cache; when the tuner then launches a config, Triton loads the binary instead of compiling. Kernels do not
specialise on M, so one compile serves every batch size of a shape (and later jobs of the shape hit the cache:
their ``compile_s`` is the cost of a cache hit, i.e. what compiling cost that job).

Workers are spawned, not forked: the parent may hold a CUDA context, which a forked child cannot use.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from tqdm import tqdm

from ..shapes import KernelShape

#: Error texts are cut to this many characters: a compile error can carry a whole IR dump.
MAX_ERROR_CHARS = 4000


@dataclass(frozen=True)
class CompileResult:
    status: str  # ok, out_of_resources or compile_error
    seconds: float | None
    error: str | None = None


def default_jobs() -> int:
    """Compile workers: the CPUs this process may use (a cluster job's allocation), at most 16."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(16, cpus))


def error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    cut = " ... [truncated]"
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - len(cut)] + cut


def classify_error(exc: BaseException, default: str) -> str:
    """The shard status for an exception: ``out_of_resources``, ``compile_error``, or ``default`` for the rest
    (``compile_error`` while compiling, ``runtime_error`` while running)."""
    try:
        from triton.compiler.errors import CompilationError
        from triton.runtime.errors import OutOfResources
    except ImportError:  # pragma: no cover - triton is a dependency
        OutOfResources = CompilationError = ()  # type: ignore[assignment]
    if isinstance(exc, OutOfResources) or "out of resource" in str(exc).lower():
        return "out_of_resources"
    if isinstance(exc, CompilationError) or type(exc).__name__ == "PTXASError":
        return "compile_error"
    return default


def compile_one(shape: KernelShape, M: int, config: dict, gemm: str, device=None) -> CompileResult:
    """Compile one config for one GEMM scope; never raises (a failure is a result)."""
    fused_moe = importlib.import_module("moekernel.fused_moe")

    start = time.perf_counter()
    try:
        fused_moe.compile_config(shape, M, config, gemm=gemm, device=device)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a row, whatever it is
        return CompileResult(classify_error(exc, "compile_error"), time.perf_counter() - start, error_text(exc))
    return CompileResult("ok", time.perf_counter() - start)


def compile_configs(
    shape: KernelShape,
    M: int,
    items: Sequence[tuple[dict, str]],
    *,
    jobs: int | None = None,
    device=None,
    progress: bool = False,
    fn: Callable[..., CompileResult] = compile_one,
) -> list[CompileResult]:
    """Compile every ``(config, gemm)`` of ``items``; results in the same order.

    ``jobs=1`` compiles in this process (the baseline of the parallel-compile benchmark); otherwise ``jobs``
    spawned workers (default :func:`default_jobs`). ``fn`` is what each compile calls: a module-level function
    with :func:`compile_one`'s signature (tests swap it).
    """
    jobs = default_jobs() if jobs is None else int(jobs)
    results: list[CompileResult | None] = [None] * len(items)
    quiet = not progress or not items
    bar = tqdm(total=len(items), desc="compile", unit="cfg", file=sys.stderr, disable=quiet, leave=False)
    try:
        if jobs <= 1 or len(items) <= 1:
            for i, (config, gemm) in enumerate(items):
                results[i] = fn(shape, M, config, gemm, device)
                bar.update()
        else:
            _compile_in_pool(shape, M, items, jobs, device, fn, results, bar)
    finally:
        bar.close()
    return results  # type: ignore[return-value]


def _compile_in_pool(shape, M, items, jobs, device, fn, results, bar) -> None:
    context = multiprocessing.get_context("spawn")
    # One parallel attempt, then one worker at a time; each of those attempts settles at least one item.
    for attempt in range(len(items) + 1):
        todo = [i for i, r in enumerate(results) if r is None]
        if not todo:
            return
        # A broken pool fails every pending future alike, hiding which config killed its worker; after the first
        # break, one worker at a time, so the next break names its culprit and the rest still compile.
        workers = min(jobs, len(todo)) if attempt == 0 else 1
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=context)
        try:
            futures = {pool.submit(fn, shape, M, items[i][0], items[i][1], device): i for i in todo}
            for future in as_completed(futures):
                i = futures[future]
                try:
                    results[i] = future.result()
                except BrokenProcessPool:
                    if workers == 1:
                        results[i] = CompileResult("compile_error", None,
                                                   "compile worker process died (crash or out of memory)")
                        bar.update()
                        break  # this config killed the pool; the others go on in a fresh one
                    continue  # retried in a fresh pool below
                except Exception as exc:  # noqa: BLE001 - fn raised, or its result would not unpickle
                    results[i] = CompileResult(classify_error(exc, "compile_error"), None, error_text(exc))
                bar.update()
        except BrokenProcessPool:
            pass
        finally:
            # On an interrupt (SIGTERM from a cluster, ^C) do not wait for the queued compiles.
            pool.shutdown(wait=True, cancel_futures=True)
    for i, r in enumerate(results):
        if r is None:
            results[i] = CompileResult("compile_error", None, "compile worker process died (crash or out of memory)")
            bar.update()
