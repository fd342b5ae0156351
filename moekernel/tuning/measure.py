"""Measuring one job's candidates: compile once, time, keep every outcome as a row, checkpoint as it goes.

:class:`Measurements` owns the job's rows (one per candidate, shard columns) and is the ``measure`` callable a
strategy drives. Failures are data: a config that does not compile, runs out of resources or raises becomes a row
with its status and message. One failure the job cannot go on from is a CUDA error that poisons the context (an
illegal memory access): every later CUDA call in the process fails. The culprit is then recorded as
``runtime_error``, the checkpoint saved and :class:`ContextPoisoned` raised; running the same job again resumes from
the checkpoint in a fresh process, skipping the culprit.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from . import shard as shard_io
from .compile import CompilePool, classify_error, compile_configs, error_text
from .space import Candidate

CHECKPOINT_EVERY = 25  # timed candidates between checkpoints
CHECKPOINT_SECONDS = 60.0
SLOW_FIRST_CALL_S = 1.0  # a first launch this slow compiled (the disk cache missed)
EXIT_RESUME = 75  # EX_TEMPFAIL: run the same command again to resume

log = logging.getLogger(__name__)


class ContextPoisoned(RuntimeError):
    """A CUDA error left the context unusable; the checkpoint is saved, rerun the job to resume."""


def context_error(backend: str) -> Exception | None:
    """The error a synchronisation raises if an earlier launch broke the CUDA context, else None."""
    if backend != "cuda":
        return None
    import torch

    try:
        torch.cuda.synchronize()
    except Exception as exc:  # noqa: BLE001
        return exc
    return None


def now() -> datetime:
    return datetime.now(timezone.utc)


class Measurements:
    """The rows of one job, and the compile-and-time step that fills them."""

    def __init__(self, job, rows: dict[Candidate, dict], *, out: Path | None, jobs: int | None,
                 pool: CompilePool | None, progress: bool):
        self.job, self.rows, self.out = job, rows, out
        self.jobs, self.pool, self.progress = jobs, pool, progress
        self.measured: set[Candidate] = set()  # rows holding a real outcome (checkpointed)
        self.compiled: set[Candidate] = set()
        self.resume: dict[tuple, dict] = {}
        self._since_checkpoint, self._last_checkpoint = 0, time.monotonic()
        self._slow_first_calls = 0

    def load_checkpoint(self) -> None:
        """Reuse what a killed run of this same job measured (its ``<out>.partial``)."""
        if self.out is not None and self.rows:
            self.resume = shard_io.load_checkpoint(shard_io.partial_path(self.out), next(iter(self.rows.values())))

    # -- the strategy's measure callable --------------------------------------------------------------------------

    def __call__(self, cands: Sequence[Candidate], iters: int) -> dict[Candidate, float | None]:
        """Compile (once per job) and time ``cands`` with ``iters`` replays; reuse checkpointed measurements."""
        from ..kernel.timing import INTERPRET_MAX_ITERS

        backend = self.job.backend
        if backend == "interpret":
            iters = min(iters, INTERPRET_MAX_ITERS)
        todo = []
        for cand in cands:
            row = self.rows[cand]
            done = self.resume.get(tuple(cand))
            if done is not None and (done["status"] != "ok" or done["iters"] >= iters):
                # Winners are chosen anew; the row now belongs to this job's strategy (its timestamp stays).
                self.rows[cand] = dict(done, winner=False, extended_winner=False, strategy=row["strategy"])
                self.measured.add(cand)
            elif row["status"] == "ok" and (cand not in self.measured or row["iters"] < iters):
                todo.append(cand)
        self._compile([c for c in todo if c not in self.compiled])
        todo = [c for c in todo if self.rows[c]["status"] == "ok"]
        from tqdm import tqdm

        desc = f"time x{iters}" + (" (interpreter)" if backend == "interpret" else "")
        quiet = not self.progress or not todo
        for cand in tqdm(todo, desc=desc, unit="cfg", file=sys.stderr, disable=quiet, leave=False):
            self._time(cand, iters)
            self._since_checkpoint += 1
            self.checkpoint()
        self.checkpoint(force=True)
        return {c: self.rows[c]["time_us"] if self.rows[c]["status"] == "ok" else None for c in cands}

    def _compile(self, cands: list[Candidate]) -> None:
        if not cands:
            return
        self.compiled.update(cands)
        if self.job.backend == "interpret":
            return  # nothing to compile: compile_s stays null
        items = [(cand.config, cand.gemm) for cand in cands]
        results = compile_configs(self.job.shape, self.job.M, items, jobs=self.jobs, device=self.job.device,
                                  progress=self.progress, pool=self.pool)
        for cand, result in zip(cands, results):
            row = self.rows[cand]
            if row["compile_s"] is None:  # keep the first figure: a recompile after resume is a cache hit
                row["compile_s"] = result.seconds
            if result.status != "ok":
                self.fail(cand, result.status, result.error)

    def fail(self, cand: Candidate, status: str, error: str) -> None:
        self.rows[cand].update(status=status, error=error, time_us=None, p20_us=None, p80_us=None, iters=None,
                               draw_us=None, mean_us=None, worst_us=None, timestamp=now())
        self.measured.add(cand)

    def time_draws(self, cands: Sequence[Candidate], again: Sequence[Candidate] = ()) -> None:
        """Time ``cands`` against each other on every routing draw of the job, taking turns
        (:func:`moekernel.kernel.timing.time_interleaved`); each row gets ``draw_us`` (one median per draw),
        ``mean_us`` and ``worst_us``. A candidate that has them already (from a checkpoint, or an earlier
        comparison) is skipped, unless it is in ``again``: timed anew beside the others, so that the figures a
        choice compares come from one interleaved measurement. With one draw (the tuning draw only) the figure is
        the row's own time. The draws are checkpointed when all are timed: a job killed before times them again
        on resume, so a comparison is never pieced together from two processes."""
        from tqdm import tqdm

        from ..kernel.moe import make_runner
        from ..kernel.timing import time_interleaved

        job, draws = self.job, self.job.settings.draws
        if draws == 1:
            for cand in cands:
                row = self.rows[cand]
                if row["status"] == "ok" and row["time_us"] is not None:
                    row.update(draw_us=[row["time_us"]], mean_us=row["time_us"], worst_us=row["time_us"])
                    self.measured.add(cand)
            self.checkpoint(force=True)
            return
        todo = [c for c in dict.fromkeys(cands) if self.rows[c]["status"] == "ok"
                and (c in again or len(self.rows[c]["draw_us"] or ()) < draws)]
        times: dict[Candidate, list[float]] = {c: [] for c in todo}
        quiet = not self.progress or not todo
        for draw in tqdm(range(draws), desc=f"{len(todo)} cfg x {draws} draws", file=sys.stderr, disable=quiet,
                         leave=False):
            where = f" (routing draw {draw})" if draw else ""
            runners = {}
            for cand in todo:
                if self.rows[cand]["status"] != "ok":
                    continue  # failed on an earlier draw: its row says why
                try:
                    runners[cand] = make_runner(job.draw_inputs(draw), cand.config, gemm=cand.gemm)
                except Exception as exc:  # noqa: BLE001 - any failure of one config is that config's row
                    self.fail(cand, classify_error(exc, "runtime_error"), error_text(exc) + where)
                    self.check_context(cand)
            results = time_interleaved(list(runners.values()), iters=job.settings.iters, backend=job.backend)
            for cand, result in zip(runners, results):
                if isinstance(result, Exception):
                    self.fail(cand, classify_error(result, "runtime_error"), error_text(result) + where)
                    self.check_context(cand)
                else:
                    times[cand].append(result.median_us)
            del runners, results
        for cand, found in times.items():
            if self.rows[cand]["status"] == "ok" and len(found) == draws:
                self.rows[cand].update(draw_us=found, mean_us=sum(found) / draws, worst_us=max(found))
                self.measured.add(cand)
        self._since_checkpoint += len(todo)
        self.checkpoint(force=True)

    def _time(self, cand: Candidate, iters: int, draw: int = 0):
        """Time one candidate on one routing draw; draw 0 fills its row, and a failure on any draw does too.
        Returns the Timing, or None if it failed."""
        from ..kernel.moe import make_runner
        from ..kernel.timing import time_callable

        job = self.job
        runner = None
        try:
            runner = make_runner(job.draw_inputs(draw), cand.config, gemm=cand.gemm)
            # A screening round (fewer iterations than the final one) needs less settling than the final.
            warmup = 2 if iters >= job.settings.iters else 1
            t = time_callable(runner, iters=iters, warmup=warmup, backend=job.backend)
        except Exception as exc:  # noqa: BLE001 - any failure of one config is that config's row
            where = f" (routing draw {draw})" if draw else ""
            self.fail(cand, classify_error(exc, "runtime_error"), error_text(exc) + where)
            del runner
            self.check_context(cand)
            return None
        del runner
        if draw:
            return t
        self.rows[cand].update(status="ok", error=None, time_us=t.median_us, p20_us=t.p20_us, p80_us=t.p80_us,
                               iters=t.iters, draw_us=None, mean_us=None, worst_us=None, timestamp=now())
        self.measured.add(cand)
        if job.backend == "cuda" and (t.first_call_s or 0) > SLOW_FIRST_CALL_S:
            # Once per process is expected (kernels that do not depend on the config, e.g. the fp8 activation
            # quantization, compile at their first launch); twice means the precompiled binaries are not used.
            self._slow_first_calls += 1
            if self._slow_first_calls == 2:
                log.warning("first launch of precompiled %s took %.1f s: compile_config did not fill the cache "
                            "entry the launch uses, so compiling happens here, one config at a time",
                            cand, t.first_call_s)
        return t

    def check_context(self, cand: Candidate) -> None:
        exc = context_error(self.job.backend)
        if exc is not None:
            self.rows[cand]["error"] += " [CUDA context lost: rerun the job to resume]"
            raise ContextPoisoned(f"{cand} broke the CUDA context ({exc}); checkpoint saved, run the job again to "
                                  "resume") from exc

    def checkpoint(self, force: bool = False) -> None:
        if self.out is None or not self.measured:
            return
        stale = time.monotonic() - self._last_checkpoint > CHECKPOINT_SECONDS
        if not (force or stale or self._since_checkpoint >= CHECKPOINT_EVERY):
            return
        shard_io.write_shard(shard_io.partial_path(self.out), [self.rows[c] for c in self.rows if c in self.measured])
        self._since_checkpoint, self._last_checkpoint = 0, time.monotonic()
