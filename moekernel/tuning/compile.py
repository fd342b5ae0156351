"""Compiling candidates on all CPU cores before any is timed.

Compiling (~0.8 s a config, more with two kernels) dominates a tuning job, and it is CPU work the GPU need not wait
on one config at a time. Worker processes call ``moekernel.kernel.moe.compile_config``, which fills Triton's
on-disk cache; when the tuner then launches a config, Triton loads the binary instead of compiling. Kernels do not
specialise on M, so one compile serves every batch size of a shape (and later jobs of the shape hit the cache:
their ``compile_s`` is the cost of a cache hit, i.e. what compiling cost that job).

Workers are spawned, not forked: the parent may hold a CUDA context, which a forked child cannot use. Spawning
16 workers that each import torch and triton takes seconds, so a :class:`CompilePool` starts them once, early (while
the tuner prunes and builds its inputs), and keeps them for every compile of a job or of a run over batch sizes.
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
    moe = importlib.import_module("moekernel.kernel.moe")  # looked up at call time, so a test can stand in for it

    start = time.perf_counter()
    try:
        moe.compile_config(shape, M, config, gemm=gemm, device=device)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a row, whatever it is
        return CompileResult(classify_error(exc, "compile_error"), time.perf_counter() - start, error_text(exc))
    return CompileResult("ok", time.perf_counter() - start)


def _import_kernels() -> None:
    """A worker's first task: the imports every compile needs, done while the parent is still busy elsewhere."""
    importlib.import_module("moekernel.kernel.moe")


class CompilePool:
    """Spawned compile workers that outlive one :func:`compile_configs` call.

    Workers start (and import the kernels) as soon as the pool is made; a pool broken by a crashing worker is
    replaced by a fresh one on its next use. Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, jobs: int | None = None):
        self.jobs = default_jobs() if jobs is None else int(jobs)
        self._executor: ProcessPoolExecutor | None = None
        self.executor()

    def executor(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(max_workers=self.jobs,
                                                 mp_context=multiprocessing.get_context("spawn"))
            for _ in range(self.jobs):  # each submit starts one more worker, until there are ``jobs``
                self._executor.submit(_import_kernels)
        return self._executor

    def discard(self) -> None:
        """Stop the workers now (queued compiles are cancelled); the next use starts fresh ones."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    close = discard

    def __enter__(self) -> "CompilePool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def compile_configs(
    shape: KernelShape,
    M: int,
    items: Sequence[tuple[dict, str]],
    *,
    jobs: int | None = None,
    device=None,
    progress: bool = False,
    fn: Callable[..., CompileResult] = compile_one,
    pool: CompilePool | None = None,
) -> list[CompileResult]:
    """Compile every ``(config, gemm)`` of ``items``; results in the same order.

    ``jobs=1`` compiles in this process (the baseline of the parallel-compile benchmark); otherwise ``pool``'s
    workers, or ``jobs`` spawned for this call (default :func:`default_jobs`). ``fn`` is what each compile calls: a
    module-level function with :func:`compile_one`'s signature (tests swap it).
    """
    jobs = (pool.jobs if pool is not None else default_jobs()) if jobs is None else int(jobs)
    results: list[CompileResult | None] = [None] * len(items)
    quiet = not progress or not items
    bar = tqdm(total=len(items), desc="compile", unit="cfg", file=sys.stderr, disable=quiet, leave=False)
    try:
        if jobs <= 1 or (len(items) <= 1 and pool is None):
            for i, (config, gemm) in enumerate(items):
                results[i] = fn(shape, M, config, gemm, device)
                bar.update()
        else:
            _compile_in_pool(shape, M, items, jobs, device, fn, results, bar, pool)
    finally:
        bar.close()
    return results  # type: ignore[return-value]


def _compile_in_pool(shape, M, items, jobs, device, fn, results, bar, shared: CompilePool | None) -> None:
    context = multiprocessing.get_context("spawn")
    # One parallel attempt, then one worker at a time; each of those attempts settles at least one item.
    for attempt in range(len(items) + 1):
        todo = [i for i, r in enumerate(results) if r is None]
        if not todo:
            return
        # A broken pool fails every pending future alike, hiding which config killed its worker; after the first
        # break, one worker at a time, so the next break names its culprit and the rest still compile.
        own = shared is None or attempt > 0
        workers = 1 if attempt > 0 else min(jobs, len(todo)) if own else shared.jobs
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=context) if own else shared.executor()
        broken = False
        try:
            futures = {pool.submit(fn, shape, M, items[i][0], items[i][1], device): i for i in todo}
            for future in as_completed(futures):
                i = futures[future]
                try:
                    results[i] = future.result()
                except BrokenProcessPool:
                    broken = True
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
            broken = True
        except BaseException:
            # On an interrupt (SIGTERM from a cluster, ^C) do not wait for the queued compiles.
            if not own:
                shared.discard()
            raise
        finally:
            if own:
                pool.shutdown(wait=True, cancel_futures=True)
        if broken and not own:
            shared.discard()  # its next user gets healthy workers
    for i, r in enumerate(results):
        if r is None:
            results[i] = CompileResult("compile_error", None, "compile worker process died (crash or out of memory)")
            bar.update()
