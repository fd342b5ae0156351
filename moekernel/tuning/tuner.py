"""Tuning one kernel shape at one batch size (or several, one after the other): prune, compile, time, verify the
best, write the shard.

Failures are data: a config that does not compile, runs out of resources, raises, or computes the wrong answer
becomes a row with its status and message, and the job goes on. One failure the job cannot go on from is a CUDA
error that poisons the context (an illegal memory access): every later CUDA call in the process fails. The tuner
then records the culprit as ``runtime_error``, saves the checkpoint and raises :class:`ContextPoisoned`; running
the same job again resumes from the checkpoint in a fresh process, skipping the culprit (the CLI exits with
:data:`EXIT_RESUME` so a workflow manager's retry does exactly that).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from ..configs import CPU_DEVICE
from ..shapes import KernelShape
from . import shard as shard_io
from .compile import CompilePool, classify_error, compile_configs, default_jobs, error_text
from .space import PARAMS, config_id, config_str, device_smem_limit, load_space, prune
from .strategies import Candidate, Fast, describe, get_strategy
from .timing import INTERPRET_MAX_ITERS, time_callable

#: Largest accepted ‖out − ref‖ / ‖ref‖; the reference quantizes like the kernel, so quantized modes only add
#: rounding of the quantized activations.
REL_ERROR_BOUND = {"bf16": 2e-2, "fp16": 2e-2, "fp8_w8a8": 5e-2, "int8_w8a16": 5e-2, "int8_w8a8": 5e-2}
VERIFY_TOP = 3  # candidates checked against the reference (``both``); the fastest correct one wins
MAX_VERIFY_FAILURES = 10  # a kernel wrong this often is broken for the shape: stop looking for a winner
CHECKPOINT_EVERY = 25  # timed candidates between checkpoints
CHECKPOINT_SECONDS = 60.0
SLOW_FIRST_CALL_S = 1.0  # a first launch this slow compiled (the disk cache missed)
EXIT_RESUME = 75  # EX_TEMPFAIL: run the same command again to resume
KERNEL_MODULES = ("_kernels", "fused_moe", "routing", "quant")  # the sources a timing depends on

log = logging.getLogger(__name__)


class ContextPoisoned(RuntimeError):
    """A CUDA error left the context unusable; the checkpoint is saved, rerun the job to resume."""


def kernels_mode() -> str | None:
    """How the imported kernel module's Triton functions were defined: ``interpret``, ``cuda``, or None if the
    kernels are not imported yet. Triton fixes this when a kernel is defined, from TRITON_INTERPRET."""
    module = sys.modules.get("moekernel._kernels")
    if module is None:
        return None
    kinds = {type(v).__name__ for v in vars(module).values()}
    return "interpret" if "InterpretedFunction" in kinds else "cuda"


def wanted_backend(backend: str = "auto") -> str:
    """``cuda`` or ``interpret``, before any check against the imported kernels. ``auto``: interpret if
    TRITON_INTERPRET=1, the kernels were defined for the interpreter, or there is no GPU; else cuda."""
    if backend not in ("auto", "cuda", "interpret"):
        raise ValueError(f"backend must be auto, cuda or interpret, got {backend!r}")
    if backend != "auto":
        return backend
    import torch

    interpret = (os.environ.get("TRITON_INTERPRET") == "1" or kernels_mode() == "interpret"
                 or not torch.cuda.is_available())
    return "interpret" if interpret else "cuda"


def resolve_backend(backend: str = "auto") -> str:
    """:func:`wanted_backend`, checked against the kernels if they are imported.

    For ``interpret`` TRITON_INTERPRET is set here, which works only if the kernel modules are not imported yet
    (``import moekernel`` imports them): set it before importing moekernel (the CLI re-executes itself).
    """
    backend = wanted_backend(backend)
    mode = kernels_mode()
    if mode is not None and mode != backend:
        raise RuntimeError(
            f"backend {backend!r} but the kernels were imported for {mode!r}: set TRITON_INTERPRET="
            f"{'1' if backend == 'interpret' else '0'} before importing moekernel"
        )
    if backend == "interpret":
        os.environ["TRITON_INTERPRET"] = "1"
    return backend


def kernel_hash() -> str:
    """Hash of the kernel sources, so timings of different kernel code are never mixed up."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent.parent
    for name in KERNEL_MODULES:
        path = package / f"{name}.py"
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _versions() -> dict[str, str]:
    import torch
    import triton

    try:
        ours = importlib.metadata.version("moekernel")
    except importlib.metadata.PackageNotFoundError:
        from .. import __version__ as ours
    return {"triton_version": triton.__version__, "torch_version": torch.__version__, "moekernel_version": ours}


def tune(
    shape: KernelShape | str,
    batch_size: int,
    *,
    out: str | os.PathLike | None = None,
    strategy="fast",
    space="vllm",
    split: bool = False,
    iters: int = 20,
    routing: str = "uniform",
    seed: int = 0,
    backend: str = "auto",
    jobs: int | None = None,
    seed_from: Iterable[str | os.PathLike] = (),
    progress: bool = True,
) -> pd.DataFrame:
    """Tune ``shape`` at ``batch_size``; one row per candidate and gemm scope (the shard's schema).

    ``out``: write the shard there (atomically), checkpointing to ``<out>.partial`` as the job goes and resuming
    from it. ``split``: tune the up and down GEMMs separately (winners share BLOCK_SIZE_M). ``seed_from``: shards
    of the same key at other batch sizes, whose best configs seed the fast strategy. The one-line summary is in
    ``df.attrs["summary"]`` (and printed to stderr when ``progress``).
    """
    frames = tune_batch_sizes(shape, [batch_size], out=out, strategy=strategy, space=space, split=split,
                              iters=iters, routing=routing, seed=seed, backend=backend, jobs=jobs,
                              seed_from=seed_from, progress=progress, skip_existing=False)
    return frames[int(batch_size)]


def tune_batch_sizes(
    shape: KernelShape | str,
    batch_sizes: Iterable[int],
    *,
    out: str | os.PathLike | None = None,
    strategy="fast",
    space="vllm",
    split: bool = False,
    iters: int = 20,
    routing: str = "uniform",
    seed: int = 0,
    backend: str = "auto",
    jobs: int | None = None,
    seed_from: Iterable[str | os.PathLike] = (),
    progress: bool = True,
    skip_existing: bool = True,
) -> dict[int, pd.DataFrame]:
    """:func:`tune` at each of ``batch_sizes`` in one process: the compile workers start once, and a candidate
    compiled for one batch size is cached for the rest (kernels do not specialise on M). Each batch size is its own
    job with its own shard, exactly as if tuned alone.

    ``out``: a path with ``{batch_size}`` in it (optional for a single batch size). ``skip_existing``: a batch size
    whose shard is already written is read back, not tuned again, so rerunning an interrupted run resumes it.
    Returns {batch size: frame}.
    """
    shape = KernelShape.from_key(shape) if isinstance(shape, str) else shape
    if int(iters) < 1:
        raise ValueError("iters must be >= 1")
    paths = shard_paths(out, batch_sizes)
    strategy, space, backend = get_strategy(strategy), load_space(space), resolve_backend(backend)
    seed_from = list(seed_from)
    shard_seeds: set | None = None  # read once, at the first batch size actually tuned
    frames: dict[int, pd.DataFrame] = {}
    # Only real compiles need workers; with one job they compile in this process.
    workers = default_jobs() if jobs is None else int(jobs)
    pool = CompilePool(workers) if backend == "cuda" and workers > 1 else None
    try:
        for M, path in paths.items():
            if skip_existing and path is not None and path.is_file():
                frames[M] = shard_io.to_frame(shard_io.read_shard(path))
                frames[M].attrs["summary"] = (f"{shape.key} M={M}: {path} already written, not tuned again "
                                              "(delete it to re-tune)")
                if progress:
                    print(frames[M].attrs["summary"], file=sys.stderr)
                continue
            if shard_seeds is None:
                shard_seeds = set().union(*(seeds_from_shard(p, shape, _scopes(split)) for p in seed_from))
            job = _Job(shape, M, out=path, strategy=strategy, space=space, split=split, iters=int(iters),
                       routing=routing, seed=int(seed), backend=backend, jobs=jobs, progress=progress, pool=pool)
            frames[M] = job.run(set(shard_seeds))
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


def precompile(
    shape: KernelShape | str,
    batch_size: int,
    *,
    space="vllm",
    split: bool = False,
    backend: str = "auto",
    jobs: int | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Compile every candidate that survives pruning at ``batch_size`` into Triton's disk cache, and nothing else.

    Kernels do not specialise on M, and the candidates of the largest batch size include those of every smaller
    one (pruning only gets stricter as M shrinks), so one such run per shape and machine, before its tune jobs,
    leaves them nothing to compile. Returns one row per compiled (config, gemm): the six parameters, ``gemm``,
    ``status``, ``compile_s``, ``error``. The interpreter compiles nothing (an empty frame).
    """
    shape = KernelShape.from_key(shape) if isinstance(shape, str) else shape
    backend = resolve_backend(backend)
    items = []
    if backend == "cuda":
        limit = device_smem_limit(backend, "cuda")
        for gemm in ("up", "down") if split else ("both",):
            items += [(c, gemm) for c, reason in prune(shape, batch_size, load_space(space), gemm=gemm,
                                                        smem_limit=limit) if reason is None]
    results = compile_configs(shape, batch_size, items, jobs=jobs, device="cuda", progress=progress)
    return pd.DataFrame(
        [{**config, "gemm": gemm, "status": r.status, "compile_s": r.seconds, "error": r.error}
         for (config, gemm), r in zip(items, results)],
        columns=[*PARAMS, "gemm", "status", "compile_s", "error"],
    )


def _scopes(split: bool) -> tuple[str, ...]:
    """The gemm scopes a job tunes: the whole op, or the up and down GEMMs separately."""
    return ("up", "down") if split else ("both",)


class _Job:
    def __init__(self, shape, M, *, out, strategy, space, split, iters, routing, seed, backend, jobs, progress,
                 pool=None):
        self.pool = pool
        self.shape, self.M, self.space, self.iters, self.backend = shape, M, space, iters, backend
        self.strategy, self.routing, self.seed, self.jobs, self.progress = strategy, routing, seed, jobs, progress
        self.scopes = _scopes(split)
        self.out = Path(out) if out is not None else None
        self.device = "cuda" if backend == "cuda" else "cpu"
        self.rows: dict[Candidate, dict] = {}
        self.measured: set[Candidate] = set()  # rows holding a real outcome (checkpointed)
        self.compiled: set[Candidate] = set()
        self.resume: dict[Candidate, dict] = {}
        self._since_checkpoint, self._last_checkpoint = 0, time.monotonic()
        self._inputs = self._ref = None
        self._slow_first_calls = 0

    # -- setup ---------------------------------------------------------------------------------------------------

    def _base_row(self) -> dict:
        import torch

        s = self.shape
        device = torch.cuda.get_device_name(self.device) if self.backend == "cuda" else CPU_DEVICE
        return {
            "key": s.key, "dtype": s.dtype, "E": s.E, "N": s.N, "K": s.K, "topk": s.topk,
            "block_shape": f"{s.block_shape[0]}x{s.block_shape[1]}" if s.block_shape else None,
            "batch_size": self.M, "status": "pruned", "time_us": None, "p20_us": None, "p80_us": None,
            "iters": None, "compile_s": None, "error": None, "winner": False, "verified": False,
            "device": device, "backend": self.backend, **_versions(), "kernel_hash": kernel_hash(),
            "routing": str(self.routing), "strategy": describe(self.strategy), "seed": self.seed,
            "timestamp": datetime.now(timezone.utc),
        }  # fmt: skip

    def _candidates(self) -> dict:
        """Rows for every (config, scope); returns the strategy's groups of the candidates that survive pruning."""
        base = self._base_row()
        limit = device_smem_limit(self.backend, self.device)
        groups: dict = {}
        for gemm in self.scopes:
            for config, reason in prune(self.shape, self.M, self.space, gemm=gemm, smem_limit=limit):
                cand = (config_id(config), gemm)
                self.rows[cand] = {**base, **config, "gemm": gemm, "error": reason}
                if reason is None:
                    # Split winners are chosen per BLOCK_SIZE_M, so each BLOCK_SIZE_M is ranked on its own.
                    group = gemm if gemm == "both" else (gemm, config["BLOCK_SIZE_M"])
                    groups.setdefault(group, []).append(cand)
        return groups

    def _seeds(self, from_shards: set) -> set:
        """Seeds from neighbouring shards, else (fast strategy only) the default rule's."""
        if from_shards or not isinstance(self.strategy, Fast):
            return from_shards
        return heuristic_seeds(self.shape, self.M, self.space, self.scopes)

    @property
    def inputs(self):
        if self._inputs is None:
            from .. import testing

            self._inputs = testing.make_inputs(self.shape, self.M, routing=self.routing, seed=self.seed,
                                               device=self.device)
        return self._inputs

    # -- the job -------------------------------------------------------------------------------------------------

    def run(self, shard_seeds: set) -> pd.DataFrame:
        """The whole job; ``shard_seeds``: the fast strategy's seeds from neighbouring shards (may be empty)."""
        start = time.monotonic()
        groups = self._candidates()
        survivors = {c for members in groups.values() for c in members}
        # Every seed centres the search, even one pruned itself (say, as a duplicate launch); only the surviving
        # ones are kept through the strategy's rounds.
        seeds = self._seeds(shard_seeds)
        explored, reason = self.strategy.explore(groups, seeds, self.space)
        seeds &= survivors
        kept = {c for members in explored.values() for c in members}
        for cand in survivors - kept:
            self.rows[cand]["error"] = reason
        if self.out is not None:
            first = next(iter(self.rows.values()))
            self.resume = shard_io.load_checkpoint(shard_io.partial_path(self.out), first)
        for cand in kept:
            self.rows[cand]["status"] = "ok"  # provisional: measure() sets the outcome before anyone reads it
        try:
            finalists = self.strategy.run(explored, self.measure, iters=self.iters, seeds=seeds)
            if self.scopes == ("both",):
                self._pick_winner(finalists)
            else:
                self._pick_split_winners(finalists)
        except BaseException:
            self._checkpoint(force=True)
            raise
        table = shard_io.to_table(self.rows.values())
        if self.out is not None:
            shard_io.write_shard(self.out, table)
            shard_io.partial_path(self.out).unlink(missing_ok=True)
        frame = shard_io.to_frame(table)
        frame.attrs["summary"] = self._summary(frame, time.monotonic() - start)
        if self.progress:
            print(frame.attrs["summary"], file=sys.stderr)
        return frame

    def measure(self, cands: Sequence[Candidate], iters: int) -> dict[Candidate, float | None]:
        """Compile (once per job) and time ``cands`` with ``iters`` replays; reuse checkpointed measurements."""
        if self.backend == "interpret":
            iters = min(iters, INTERPRET_MAX_ITERS)
        todo = []
        for cand in cands:
            done = self.resume.get(cand)
            if done is not None and (done["status"] != "ok" or done["iters"] >= iters):
                # Winners are chosen anew; the row now belongs to this job's strategy (its timestamp stays).
                self.rows[cand] = dict(done, winner=False, strategy=self.rows[cand]["strategy"])
                self.measured.add(cand)
            elif self.rows[cand]["status"] == "ok" and (cand not in self.measured or self.rows[cand]["iters"] < iters):
                todo.append(cand)
        self._compile([c for c in todo if c not in self.compiled])
        todo = [c for c in todo if self.rows[c]["status"] == "ok"]
        from tqdm import tqdm

        desc = f"time x{iters}" + (" (interpreter)" if self.backend == "interpret" else "")
        quiet = not self.progress or not todo
        for cand in tqdm(todo, desc=desc, unit="cfg", file=sys.stderr, disable=quiet, leave=False):
            self._time(cand, iters)
            self._since_checkpoint += 1
            self._checkpoint()
        self._checkpoint(force=True)
        return {c: self.rows[c]["time_us"] if self.rows[c]["status"] == "ok" else None for c in cands}

    def _compile(self, cands: list[Candidate]) -> None:
        if not cands:
            return
        self.compiled.update(cands)
        if self.backend == "interpret":
            return  # nothing to compile: compile_s stays null
        items = [(dict(zip(PARAMS, cid)), gemm) for cid, gemm in cands]
        results = compile_configs(self.shape, self.M, items, jobs=self.jobs, device=self.device,
                                  progress=self.progress, pool=self.pool)
        for cand, result in zip(cands, results):
            row = self.rows[cand]
            if row["compile_s"] is None:  # keep the first figure: a recompile after resume is a cache hit
                row["compile_s"] = result.seconds
            if result.status != "ok":
                self._fail(cand, result.status, result.error)

    def _fail(self, cand: Candidate, status: str, error: str) -> None:
        self.rows[cand].update(status=status, error=error, time_us=None, p20_us=None, p80_us=None, iters=None,
                               timestamp=datetime.now(timezone.utc))
        self.measured.add(cand)

    def _time(self, cand: Candidate, iters: int) -> None:
        fused_moe = importlib.import_module("moekernel.fused_moe")

        cid, gemm = cand
        runner = None
        try:
            runner = fused_moe.make_runner(self.inputs, dict(zip(PARAMS, cid)), gemm=gemm)
            # A screening round (fewer iterations than the final one) needs less settling than the final.
            warmup = 2 if iters >= self.iters else 1
            t = time_callable(runner, iters=iters, warmup=warmup, backend=self.backend)
        except Exception as exc:  # noqa: BLE001 - any failure of one config is that config's row
            self._fail(cand, classify_error(exc, "runtime_error"), error_text(exc))
            del runner
            self._check_context(cand)
            return
        del runner
        self.rows[cand].update(status="ok", error=None, time_us=t.median_us, p20_us=t.p20_us, p80_us=t.p80_us,
                               iters=t.iters, timestamp=datetime.now(timezone.utc))
        self.measured.add(cand)
        if self.backend == "cuda" and (t.first_call_s or 0) > SLOW_FIRST_CALL_S:
            # Once per process is expected (kernels that do not depend on the config, e.g. the fp8 activation
            # quantization, compile at their first launch); twice means the precompiled binaries are not used.
            self._slow_first_calls += 1
            if self._slow_first_calls == 2:
                log.warning("first launch of precompiled %s (%s) took %.1f s: compile_config did not fill the cache "
                            "entry the launch uses, so compiling happens here, one config at a time",
                            config_str(dict(zip(PARAMS, cid))), gemm, t.first_call_s)

    def _context_error(self) -> Exception | None:
        """The error a synchronisation raises if an earlier launch broke the CUDA context, else None."""
        if self.backend != "cuda":
            return None
        import torch

        try:
            torch.cuda.synchronize()
        except Exception as exc:  # noqa: BLE001
            return exc
        return None

    def _check_context(self, cand: Candidate) -> None:
        exc = self._context_error()
        if exc is not None:
            self.rows[cand]["error"] += " [CUDA context lost: rerun the job to resume]"
            raise ContextPoisoned(f"{config_str(dict(zip(PARAMS, cand[0])))} ({cand[1]}) broke the CUDA "
                                  f"context ({exc}); checkpoint saved, run the job again to resume") from exc

    def _checkpoint(self, force: bool = False) -> None:
        if self.out is None or not self.measured:
            return
        stale = time.monotonic() - self._last_checkpoint > CHECKPOINT_SECONDS
        if not (force or stale or self._since_checkpoint >= CHECKPOINT_EVERY):
            return
        shard_io.write_shard(shard_io.partial_path(self.out), [self.rows[c] for c in self.rows if c in self.measured])
        self._since_checkpoint, self._last_checkpoint = 0, time.monotonic()

    # -- verification and winners --------------------------------------------------------------------------------

    def _ordered(self, cands: Iterable[Candidate], finalists: set) -> list[Candidate]:
        """ok candidates, fastest first: finalists (comparable times), then the rest as a fallback."""
        ok = [c for c in cands if self.rows[c]["status"] == "ok" and self.rows[c]["time_us"] is not None]
        return sorted(ok, key=lambda c: (c not in finalists, self.rows[c]["time_us"]))

    def _check(self, config) -> tuple[bool, str]:
        """Run the full op with ``config`` and compare with the float32 reference."""
        import moekernel
        from .. import reference

        if self._ref is None:
            self._ref = reference.fused_experts_ref(**self.inputs.kwargs())
        bound = REL_ERROR_BOUND[self.shape.dtype]
        try:
            out = moekernel.fused_experts(**self.inputs.kwargs(), config=config)
            err = reference.relative_error(out, self._ref)
        except Exception as exc:  # noqa: BLE001
            lost = self._context_error()
            if lost is not None:
                # Not this config's fault alone, and nothing after it could run: resume in a fresh process.
                raise ContextPoisoned(f"verifying {config} broke the CUDA context ({lost}); checkpoint saved, run "
                                      "the job again to resume") from exc
            return False, f"verification run failed: {error_text(exc)}"
        return err <= bound, f"relative error {err:.3g} vs reference (bound {bound:g} for {self.shape.dtype})"

    def _passes(self, cand: Candidate) -> bool:
        row = self.rows[cand]
        if row["verified"]:
            return True  # resumed from the checkpoint
        ok, message = self._check(dict(zip(PARAMS, cand[0])))
        if ok:
            row["verified"] = True
        else:
            row.update(status="incorrect", error=message)
        self.measured.add(cand)
        return ok

    def _pick_winner(self, finalists) -> None:
        finalists, passed, failures = set(finalists), 0, 0
        for cand in self._ordered(self.rows, finalists):
            if passed >= VERIFY_TOP or failures >= MAX_VERIFY_FAILURES:
                break
            if self._passes(cand):
                self.rows[cand]["winner"] = passed == 0
                passed += 1
            else:
                failures += 1
        self._checkpoint(force=True)

    def _pick_split_winners(self, finalists) -> None:
        """The BLOCK_SIZE_M with the least best_up + best_down, whose pair passes the full-op check."""
        finalists, failures = set(finalists), 0
        while failures < MAX_VERIFY_FAILURES:
            best = {}
            for bm in sorted({c[0][0] for c in self.rows}):
                ups = self._ordered((c for c in self.rows if c[1] == "up" and c[0][0] == bm), finalists)
                downs = self._ordered((c for c in self.rows if c[1] == "down" and c[0][0] == bm), finalists)
                if ups and downs:
                    best[bm] = (self.rows[ups[0]]["time_us"] + self.rows[downs[0]]["time_us"], ups, downs)
            if not best:
                break
            _, ups, downs = min(best.values(), key=lambda v: v[0])
            if self._pair_passes(ups, downs):
                self.rows[ups[0]]["winner"] = self.rows[downs[0]]["winner"] = True
                break
            failures += 1
        self._checkpoint(force=True)

    def _pair_passes(self, ups: list[Candidate], downs: list[Candidate]) -> bool:
        """Check the best up with the best down; if the pair is wrong, find out which half is (a pair that passes
        clears both of its halves), so a correct config is not condemned for its partner."""
        u, d = ups[0], downs[0]
        error = self._pair_error(u, d)
        if error is None:
            return True
        if len(downs) > 1 and self._pair_error(u, downs[1]) is None:
            bad = [d]
        elif len(ups) > 1 and self._pair_error(ups[1], d) is None:
            bad = [u]
        else:
            bad = [u, d]  # neither half could be cleared
        for cand in bad:
            self.rows[cand].update(status="incorrect", verified=False, error=error)
        return False

    def _pair_error(self, u: Candidate, d: Candidate) -> str | None:
        """None if the full op with up config ``u`` and down config ``d`` matches the reference, else why not."""
        if self.rows[u]["verified"] and self.rows[d]["verified"]:
            return None
        up, down = dict(zip(PARAMS, u[0])), dict(zip(PARAMS, d[0]))
        ok, message = self._check({"up": up, "down": down})
        self.measured.update((u, d))
        if ok:
            self.rows[u]["verified"] = self.rows[d]["verified"] = True
            return None
        return f"wrong as a split pair (up {config_str(up)}, down {config_str(down)}): {message}"

    # -- report --------------------------------------------------------------------------------------------------

    def _summary(self, frame: pd.DataFrame, wall: float) -> str:
        status = frame["status"]
        failed = int(status.isin(["out_of_resources", "compile_error", "runtime_error", "incorrect"]).sum())
        winners = frame[frame["winner"]]
        if winners.empty:
            best = "no winner"
        else:
            best = "; ".join(
                f"{r.gemm} {config_str(r._asdict())} {r.time_us:.1f} us" for r in winners.itertuples(index=False)
            )
        note = " [interpreter: times meaningless]" if self.backend == "interpret" else ""
        return (f"{self.shape.key} M={self.M}: {len(frame)} candidates, {int((status == 'pruned').sum())} pruned, "
                f"{failed} failed, {int((status == 'ok').sum())} ok; best {best}; {wall:.1f} s{note}")


def seeds_from_shard(path, shape: KernelShape, scopes: Sequence[str], top: int = 3) -> set[Candidate]:
    """The winners and the ``top`` fastest finalists of each gemm scope of a shard of the same key.

    A seed from a ``both`` shard seeds the up and down GEMMs of a split job and vice versa.
    """
    if not Path(path).is_file():
        raise ValueError(f"--seed-from {path}: no such shard")
    frame = shard_io.to_frame(shard_io.read_shard(path))
    if not (frame["key"] == shape.key).all():
        raise ValueError(f"--seed-from {path}: not a shard of {shape.key}")
    seeds = set()
    ok = frame[frame["status"] == "ok"]
    for gemm, part in ok.groupby("gemm"):
        final = part[part["iters"] == part["iters"].max()].nsmallest(top, "time_us")
        picks = pd.concat([part[part["winner"]], final])
        targets = [gemm] if gemm in scopes else list(scopes)
        for row in picks[list(PARAMS)].itertuples(index=False):
            seeds.update((tuple(int(v) for v in row), t) for t in targets)
    return seeds


def heuristic_seeds(shape: KernelShape, M: int, space, scopes: Sequence[str]) -> set[Candidate]:
    """Seeds for a fast job with no neighbouring shard: the default rule at M and at the neighbouring regimes
    (M/4, 4M), and the engines' default, each snapped onto the search space."""
    from ..heuristics import default_config, engine_default_config

    args = (shape.E, shape.N, shape.K, shape.topk, shape.quant_dtype, shape.block_shape)
    configs = [default_config(max(1, m), *args) for m in (M // 4, M, 4 * M)]
    configs.append(engine_default_config(M, *args))
    seeds = set()
    for config in configs:
        snapped = tuple(min(space[p], key=lambda v: (abs(math.log2(v) - math.log2(config[p])), v)) for p in PARAMS)
        seeds.update((snapped, gemm) for gemm in scopes)
    return seeds
