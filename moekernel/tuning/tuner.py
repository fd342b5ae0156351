"""The tuner's entry points: one kernel shape at one batch size (:func:`tune`) or several in one process
(:func:`tune_batch_sizes`), and :func:`precompile`. The work of one job is :class:`moekernel.tuning.job.TuneJob`.

Settings come as a :class:`TuneSettings` or as its fields by keyword (``tune(shape, 64, strategy="exhaustive")``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from ..backend import INTERPRETER_EXAMPLE_KEY, interpreter_size_problem, resolve_backend
from ..heuristics import default_config
from ..shapes import KernelShape
from . import shard as shard_io
from .compile import CompilePool, compile_configs, default_jobs
from .job import TuneJob
from .seeds import nearest_key_shard, seeds_from_other_key, seeds_from_shard
from .settings import TuneSettings
from .space import PARAMS, device_smem_limit, format_duration, interpreter_seconds, prune


def _settings(shape: KernelShape, settings: TuneSettings | None, overrides: dict,
              batch_sizes: Iterable[int] = ()) -> TuneSettings:
    """The settings to run with: ``settings`` (or the defaults) with ``overrides`` applied, backend resolved; checked
    against ``shape`` (:meth:`TuneSettings.check_fits`) and, to tune ``batch_sizes``, the interpreter's size rule
    (:func:`interpreter_refusal`)."""
    settings = (settings or TuneSettings()).replace(**overrides)
    settings.check_fits(shape)
    resolved = settings.replace(backend=resolve_backend(settings.backend))
    refusal = interpreter_refusal(shape, batch_sizes, settings.backend, resolved.backend) if batch_sizes else None
    if refusal:
        raise ValueError(refusal)
    return resolved


def interpreter_refusal(shape: KernelShape, batch_sizes: Iterable[int], requested: str, backend: str) -> str | None:
    """Why the tuner will not run ``shape``: with no GPU, backend ``requested`` "auto" fell back to the interpreter,
    and the shape is too large for it (``moekernel.backend.interpreter_size_problem``, the benchmark's rule too).
    None if it may run; asking for ``interpret`` by name runs any shape (the job warns how long it may take)."""
    problem = interpreter_size_problem(shape)
    if requested != "auto" or backend != "interpret" or problem is None:
        return None
    M = min(batch_sizes)
    config = default_config(M, shape.E, shape.N, shape.K, shape.topk, shape.quant_dtype, shape.block_shape)
    return (f"no CUDA device, and {problem}: one call of the op at M={M} would take about "
            f"{format_duration(interpreter_seconds(shape, M, config))} there, and every candidate is timed with "
            "several. Tune this shape on a GPU machine; to try the tuner here, use a small shape "
            f"(--key {INTERPRETER_EXAMPLE_KEY}), or pass --backend interpret to run this one anyway")


def tune(shape: KernelShape | str, batch_size: int, settings: TuneSettings | None = None, *,
         out: str | os.PathLike | None = None, jobs: int | None = None, seed_from: Iterable = (),
         seed_keys: str | os.PathLike | None = None, progress: bool = True, **overrides) -> pd.DataFrame:
    """Tune ``shape`` at ``batch_size``; one row per candidate and gemm scope (the shard's schema).

    ``out``: write the shard there (atomically), checkpointing to ``<out>.partial`` as the job goes and resuming
    from it; a shard already there is superseded (kept under ``superseded/``), never overwritten. ``seed_from``:
    shards of the same key at other batch sizes, whose best configs seed the fast strategy; ``seed_keys``: a folder
    of other keys' shards (``<folder>/<key>/bs<M>.parquet``), the nearest of which seeds it when ``seed_from`` gives
    nothing. ``jobs``: compile workers (1: compile in this process). The one-line summary is in
    ``df.attrs["summary"]`` (and printed to stderr when ``progress``).
    """
    frames = tune_batch_sizes(shape, [batch_size], settings, out=out, jobs=jobs, seed_from=seed_from,
                              seed_keys=seed_keys, progress=progress, skip_existing=False, **overrides)
    return frames[int(batch_size)]


def tune_batch_sizes(shape: KernelShape | str, batch_sizes: Iterable[int], settings: TuneSettings | None = None, *,
                     out: str | os.PathLike | None = None, jobs: int | None = None, seed_from: Iterable = (),
                     seed_keys: str | os.PathLike | None = None, progress: bool = True, skip_existing: bool = True,
                     **overrides) -> dict[int, pd.DataFrame]:
    """:func:`tune` at each of ``batch_sizes`` in one process: the compile workers start once, and a candidate
    compiled for one batch size is cached for the rest (kernels do not specialise on M). Each batch size is its own
    job with its own shard, exactly as if tuned alone.

    ``out``: a path with ``{batch_size}`` in it (optional for a single batch size). ``skip_existing``: a batch size
    whose shard is already written by the same job (same settings, kernel, software and device:
    :func:`moekernel.tuning.shard.identity`) is read back, not tuned again, so rerunning an interrupted run resumes
    it; a shard of another job there is superseded and the size re-tuned. Returns {batch size: frame}.
    """
    shape = KernelShape.from_key(shape) if isinstance(shape, str) else shape
    paths = shard_paths(out, batch_sizes)
    settings = _settings(shape, settings, overrides, paths)
    for path in paths.values():  # before anything is measured: an unusable output must not cost the results
        if path is not None and not (skip_existing and path.is_file()):
            shard_io.check_writable(path)
    seed_from = list(seed_from)
    shard_seeds: set | None = None  # read once, at the first batch size actually tuned
    frames: dict[int, pd.DataFrame] = {}
    # Only real compiles need workers; with one job they compile in this process.
    workers = default_jobs() if jobs is None else int(jobs)
    pool = CompilePool(workers) if settings.backend == "cuda" and workers > 1 else None
    say = (lambda text: print(text, file=sys.stderr)) if progress else (lambda text: None)
    try:
        for M, path in paths.items():
            if shard_seeds is None:
                shard_seeds = set().union(*(seeds_from_shard(p, shape, settings.scopes) for p in seed_from))
            seeds, seeded_from = set(shard_seeds), "shards: " + ", ".join(map(str, seed_from)) if seed_from else None
            if not seeds and seed_keys is not None:
                other = nearest_key_shard(seed_keys, shape, M)
                if other is not None:
                    seeds, seeded_from = seeds_from_other_key(other, settings.scopes), f"{other.parent.name} M={M}"
            job = TuneJob(shape, M, settings, out=path, jobs=jobs, pool=pool, progress=progress, seeds=seeds,
                          seeded_from=seeded_from)
            if path is not None and path.exists():
                wanted, found = job.identity(), shard_io.shard_identity(path)
                if skip_existing and found == wanted:
                    frames[M] = shard_io.to_frame(shard_io.read_shard(path))
                    frames[M].attrs["summary"] = (f"{shape.key} M={M}: {path} already written, not tuned again "
                                                  "(delete it to re-tune)")
                    say(frames[M].attrs["summary"])
                    continue
                kept = shard_io.supersede(path, shard_io.identity_change(found, wanted))
                say(f"{shape.key} M={M}: {path} was tuned by another job ({shard_io.identity_change(found, wanted)});"
                    f" kept as {kept}, tuning again")
            frames[M] = job.run()
            del job  # free this batch size's inputs before the next one allocates its own
    finally:
        if pool is not None:
            pool.close()
    return frames


def shard_paths(out: str | os.PathLike | None, batch_sizes: Iterable[int]) -> dict[int, Path | None]:
    """{batch size: its shard path}, ascending; ``out`` holds ``{batch_size}``, required for more than one size."""
    given = list(batch_sizes)
    sizes = sorted({int(m) for m in given})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"batch sizes are token counts, at least 1; got {given}")
    if out is not None and len(sizes) > 1 and "{batch_size}" not in str(out):
        raise ValueError(f"{len(sizes)} batch sizes write one shard each: the output path needs {{batch_size}} in "
                         f"it, e.g. results/bs{{batch_size}}.parquet (got {out})")
    return {m: None if out is None else Path(str(out).replace("{batch_size}", str(m))) for m in sizes}


def precompile(shape: KernelShape | str, batch_size: int, settings: TuneSettings | None = None, *,
               jobs: int | None = None, progress: bool = True, **overrides) -> pd.DataFrame:
    """Compile every candidate that survives pruning at ``batch_size`` into Triton's disk cache, and nothing else.

    Kernels do not specialise on M, and the candidates of the largest batch size include those of every smaller
    one (pruning only gets stricter as M shrinks), so one such run per shape and machine, before its tune jobs,
    leaves them nothing to compile. Returns one row per compiled (config, gemm): the six parameters, ``gemm``,
    ``status``, ``compile_s``, ``error``. The interpreter compiles nothing (an empty frame).
    """
    shape = KernelShape.from_key(shape) if isinstance(shape, str) else shape
    settings = _settings(shape, settings, overrides)
    items = []
    if settings.backend == "cuda":
        limit = device_smem_limit("cuda", "cuda")
        for gemm in settings.scopes:
            items += [(c, gemm) for c, reason in prune(shape, batch_size, settings.search_space, gemm=gemm,
                                                        smem_limit=limit) if reason is None]
    results = compile_configs(shape, batch_size, items, jobs=jobs, device="cuda", progress=progress)
    return pd.DataFrame(
        [{**config, "gemm": gemm, "status": r.status, "compile_s": r.seconds, "error": r.error}
         for (config, gemm), r in zip(items, results)],
        columns=[*PARAMS, "gemm", "status", "compile_s", "error"],
    )
