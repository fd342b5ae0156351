"""One tune job: a kernel shape at one batch size. Prune, explore, measure, select, write the shard."""

from __future__ import annotations

import logging
import sys
import time
from functools import cached_property
from pathlib import Path

import pandas as pd

from .. import provenance
from ..backend import interpreter_size_problem
from ..configs import interpreter_device_name
from ..launch_params import EXTENDED_PARAMS
from ..shapes import KernelShape
from . import shard as shard_io
from .compile import CompilePool
from .measure import Measurements, now
from .seeds import heuristic_seeds
from .select import Checker, Selection
from .settings import TuneSettings
from .space import (Candidate, config_str, device_smem_limit, extended_default, extended_variants, format_duration,
                    half_tail_variant, interpreter_seconds, persistent_variant, prune)
from .strategies import Fast

FAILED = ("out_of_resources", "compile_error", "runtime_error", "incorrect")
#: Finalists per group timed on every routing draw; the winner is one of them.
ROBUST_TOP = 4

log = logging.getLogger(__name__)


class TuneJob:
    """``settings.backend`` must be resolved (cuda or interpret) before a job is made."""

    def __init__(self, shape: KernelShape, M: int, settings: TuneSettings, *, out=None, jobs: int | None = None,
                 pool: CompilePool | None = None, progress: bool = True, seeds: set = frozenset(),
                 seeded_from: str | None = None):
        self.shape, self.M, self.settings = shape, M, settings
        self.shard_seeds, self.seeded_from = set(seeds), seeded_from
        self.backend = settings.backend
        self.device = "cuda" if self.backend == "cuda" else "cpu"
        self.out = Path(out) if out is not None else None
        self.progress = progress
        self.meas = Measurements(self, {}, out=self.out, jobs=jobs, pool=pool, progress=progress)

    @cached_property
    def inputs(self):
        from ..kernel import testing

        s = self.settings
        return testing.make_inputs(self.shape, self.M, routing=s.routing, seed=s.seed, device=self.device)

    def draw_inputs(self, draw: int):
        """The job's inputs with routing draw ``draw`` (0: :attr:`inputs`); one draw's kept at a time."""
        if draw == 0:
            return self.inputs
        if getattr(self, "_draw", (None,))[0] != draw:
            from ..kernel import testing

            s = self.settings
            self._draw = (draw, testing.redraw(self.inputs, self.shape, self.M, routing=s.routing, seed=s.seed,
                                               draw=draw))
        return self._draw[1]

    def base_row(self) -> dict:
        s = self.shape
        if self.backend == "cuda":
            import torch

            device = torch.cuda.get_device_name(self.device)
        else:
            device = interpreter_device_name()
        return {
            "key": s.key, "dtype": s.dtype, "E": s.E, "N": s.N, "K": s.K, "topk": s.topk,
            "block_shape": f"{s.block_shape[0]}x{s.block_shape[1]}" if s.block_shape else None,
            "batch_size": self.M, "status": "pruned", "time_us": None, "p20_us": None, "p80_us": None,
            "iters": None, "compile_s": None, "draw_us": None, "mean_us": None, "worst_us": None, "error": None,
            **EXTENDED_PARAMS, "winner": False, "extended_winner": False, "verified": False, "device": device,
            "backend": self.backend, **provenance.versions(),
            "kernel_hash": provenance.kernel_hash(), **self.settings.columns(), "seeded_from": self.seeded_from,
            "timestamp": now(),
        }  # fmt: skip

    def identity(self) -> dict:
        """Which job this is, as the shard records it (:func:`moekernel.tuning.shard.identity`)."""
        return shard_io.identity(self.base_row())

    def candidates(self) -> dict:
        """Rows for every (config, scope); returns the strategy's groups of the candidates that survive pruning."""
        base = self.base_row()
        limit = device_smem_limit(self.backend, self.device)
        groups: dict = {}
        for gemm in self.settings.scopes:
            for config, reason in prune(self.shape, self.M, self.settings.search_space, gemm=gemm, smem_limit=limit):
                cand = Candidate.of(config, gemm)
                self.meas.rows[cand] = {**base, **config, "gemm": gemm, "error": reason}
                if reason is None:
                    # Split winners are chosen per BLOCK_SIZE_M, so each BLOCK_SIZE_M is ranked on its own.
                    group = gemm if gemm == "both" else (gemm, config["BLOCK_SIZE_M"])
                    groups.setdefault(group, []).append(cand)
        return groups

    def warn_if_slow(self, survivors: set) -> None:
        """Asked for the interpreter by name on a shape too large for it: say how long it may take, up front."""
        from ..kernel.timing import INTERPRET_MAX_ITERS

        problem = interpreter_size_problem(self.shape) if self.backend == "interpret" else None
        if problem is None:
            return
        calls = min(self.settings.iters, INTERPRET_MAX_ITERS)
        total = sum(calls * interpreter_seconds(self.shape, self.M, c.config) for c in survivors)
        log.warning("%s; at M=%d, timing the %d candidates left after pruning takes up to about %s there (the fast "
                    "strategy times fewer). A GPU does it in minutes.", problem, self.M, len(survivors),
                    format_duration(total))

    def seeds(self) -> set:
        """Seeds from shards already measured (``seeds``), else (fast strategy only) the default rule's."""
        if self.shard_seeds or not isinstance(self.settings.strategy_obj, Fast):
            return set(self.shard_seeds)
        return heuristic_seeds(self.shape, self.M, self.settings.search_space, self.settings.scopes)

    def robust_finalists(self, groups: dict, finalists) -> list[Candidate]:
        """The best :data:`ROBUST_TOP` finalists of each group: those timed on every routing draw."""
        group_of = {c: g for g, members in groups.items() for c in members}
        ranked: dict = {}
        rows = self.meas.rows
        timed = [c for c in finalists if rows[c]["status"] == "ok" and rows[c]["time_us"] is not None]
        for cand in sorted(timed, key=lambda c: rows[c]["time_us"]):
            ranked.setdefault(group_of.get(cand), []).append(cand)
        return [c for members in ranked.values() for c in members[:ROBUST_TOP]]

    def run(self) -> pd.DataFrame:
        """The whole job: prune, explore, measure, time the finalists on every draw, select, write."""
        start = time.monotonic()
        strategy, rows = self.settings.strategy_obj, self.meas.rows
        self.inputs  # noqa: B018 - a bad routing file is the user's error, raised here, not every candidate's row
        groups = self.candidates()
        survivors = {c for members in groups.values() for c in members}
        self.warn_if_slow(survivors)
        # Every seed centres the search, even one pruned itself (say, as a duplicate launch); only the surviving
        # ones are kept through the strategy's rounds.
        seeds = self.seeds()
        explored, reason = strategy.explore(groups, seeds, self.settings.search_space)
        seeds &= survivors
        kept = {c for members in explored.values() for c in members}
        for cand in survivors - kept:
            rows[cand]["error"] = reason
        self.meas.load_checkpoint()
        for cand in kept:
            rows[cand]["status"] = "ok"  # provisional: measuring sets the outcome before anyone reads it
        try:
            finalists = strategy.run(explored, self.meas, iters=self.settings.iters, seeds=seeds)
            robust = self.robust_finalists(explored, finalists)
            self.meas.time_draws(robust)
            selection = Selection(self.meas, Checker(self))
            selection.pick(robust, split=self.settings.split)
            self.search_extended(selection, robust)
        except BaseException:
            self.meas.checkpoint(force=True)
            raise
        table = shard_io.to_table(rows.values())
        if self.out is not None:
            shard_io.write_shard(self.out, table)
            shard_io.partial_path(self.out).unlink(missing_ok=True)
        frame = shard_io.to_frame(table)
        frame.attrs["summary"] = self.summary(frame, time.monotonic() - start)
        if self.progress:
            print(frame.attrs["summary"], file=sys.stderr)
        return frame

    def search_extended(self, selection: Selection, finalists: list[Candidate]) -> None:
        """moekernel's own parameters around the engine search's result
        (:func:`moekernel.tuning.space.extended_variants`, pruned with reasons): TMA on the winner and on the other
        finalists timed on every draw beside it (same scope and BLOCK_SIZE_M), SPLIT_K (alone and with TMA) on the
        winner's down GEMM, and (for a whole-op winner) moekernel's extended default. The variants are timed like
        finalists, on every routing draw; the best of them and the winner (:meth:`Selection.pick_extended`), the
        winner itself where none pays, is then timed beside itself with half tiles for the blocks that are half
        padding (:func:`moekernel.tuning.space.half_tail_variant`) and with a persistent down GEMM where it drives
        one (:func:`moekernel.tuning.space.persistent_variant`): the extended winner is the fastest of the three."""
        rows, base = self.meas.rows, self.base_row()
        winners = {c.gemm: c for c in rows if rows[c]["winner"]}

        def add(config, reason, gemm) -> Candidate | None:
            """A row for a variant not seen yet; the candidate, if it is to be timed."""
            cand = Candidate.of(config, gemm)
            if cand in rows:
                return None
            rows[cand] = {**base, **config, "gemm": gemm, "error": reason, "status": "pruned" if reason else "ok"}
            return None if reason else cand

        def timed_pick(best: Candidate, variants: list, whole) -> Candidate:
            variants = [c for c in variants if c is not None]
            if not variants:
                return best
            self.meas(variants, self.settings.iters)
            # The best so far takes turns with its variants on every draw: one measurement decides between them.
            self.meas.time_draws([best, *variants], again=[best])
            return selection.pick_extended(best, variants, whole)

        for winner in winners.values():
            others = [c for c in finalists if c != winner and c.gemm == winner.gemm and c.cid[0] == winner.cid[0]
                      and rows[c]["status"] == "ok" and rows[c]["mean_us"] is not None]
            variants = [add(config, reason, winner.gemm)
                        for source in [winner, *others]
                        for config, reason in extended_variants(self.shape, self.M, source.config, winner.gemm,
                                                                winner=source == winner)]
            if winner.gemm == "both":
                variants.append(add(extended_default(self.shape, self.M), None, "both"))
            whole = self._whole_config(winner.gemm, winners)
            best = timed_pick(winner, variants, whole)
            # Neither changes the tiles: each is tried once, on the best so far (the kernel takes one or the other).
            last = [add(*half_tail_variant(best.config, winner.gemm), winner.gemm)]
            if winner.gemm != "up":
                last.append(add(persistent_variant(best.config), None, winner.gemm))
            best = timed_pick(best, last, whole)
            rows[best]["extended_winner"] = True
            self.meas.measured.add(best)
        self.meas.checkpoint(force=True)

    @staticmethod
    def _whole_config(gemm: str, winners: dict):
        """How a variant of the ``gemm`` winner runs in the whole op for its reference check: alone (``both``), or
        beside the other GEMM's engine winner it was tuned with (split)."""
        if gemm == "both":
            return lambda c: c.config
        other = winners["down" if gemm == "up" else "up"]
        return lambda c: {gemm: c.config, other.gemm: other.config}

    def summary(self, frame: pd.DataFrame, wall: float) -> str:
        own = shard_io.extended_rows(frame)
        variants, frame = frame[own], frame[~own]  # the engines' search; the variants are counted apart
        status = frame["status"]
        failed = int(status.isin(FAILED).sum())
        winners = frame[frame["winner"]]
        if winners.empty:
            best = "no winner"
        else:
            best = "; ".join(f"{r.gemm} {config_str(r._asdict())} {r.time_us:.1f} us" + (
                f" (mean {r.mean_us:.1f}, worst {r.worst_us:.1f} over {len(r.draw_us)} draws)"
                if r.draw_us is not None and len(r.draw_us) > 1 else "") for r in winners.itertuples(index=False))
        extended = variants[variants["extended_winner"].fillna(False).astype(bool)]
        if len(extended):
            best += "; with moekernel's own parameters " + "; ".join(
                f"{r.gemm} {config_str(r._asdict())} {r.mean_us:.1f} us mean" for r in extended.itertuples(index=False))
        timed = int(variants["time_us"].notna().sum())
        if timed:
            best += f" (variants with moekernel's own parameters: {timed} timed, {len(variants) - timed} pruned)"
        note = " [interpreter: times meaningless]" if self.backend == "interpret" else ""
        return (f"{self.shape.key} M={self.M}: {len(frame)} candidates, {int((status == 'pruned').sum())} pruned, "
                f"{failed} failed, {int((status == 'ok').sum())} ok; best {best}; {wall:.1f} s{note}")
