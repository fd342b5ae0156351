"""Choosing a job's winner: the best finalists over the routing draws, checked against the float32 reference.

The finalists are timed on several routing draws (``draw_us``). With 24 tokens per expert on average, a config
tuned on one draw can depend on whether one expert drew more than BLOCK_SIZE_M tokens in that sample, so a
finalist is ranked by both its mean and its worst draw: its score is the larger of mean / best mean and worst /
best worst among its group (:func:`robust_scores`), lowest wins. A winner must also compute the right answer: the
best :data:`VERIFY_TOP` run the whole op against the reference (split jobs: the best up/down pair of each
BLOCK_SIZE_M), and a config that fails becomes ``incorrect``.
"""

from __future__ import annotations

from collections.abc import Iterable

from .compile import error_text
from .measure import ContextPoisoned, Measurements, context_error
from .space import Candidate

VERIFY_TOP = 3  # candidates checked against the reference (``both``); the fastest correct one wins
#: What a config with moekernel's own parameters must gain over the engine winner (mean over the draws) to be the
#: extended winner: less is within the timing spread, not worth a second config file entry that differs.
EXTENDED_MIN_GAIN = 0.01
MAX_VERIFY_FAILURES = 10  # a kernel wrong this often is broken for the shape: stop looking for a winner


class Checker:
    """Runs the full op with a config on the job's inputs and compares it with the float32 reference."""

    def __init__(self, job):
        self.job = job
        self._ref = None

    def __call__(self, config) -> tuple[bool, str]:
        import moekernel
        from ..kernel import reference

        job = self.job
        if self._ref is None:
            self._ref = reference.fused_experts_ref(**job.inputs.kwargs())
        bound = job.shape.info.rel_error_bound
        try:
            out = moekernel.fused_experts(**job.inputs.kwargs(), config=config)
            err = reference.relative_error(out, self._ref)
        except Exception as exc:  # noqa: BLE001
            lost = context_error(job.backend)
            if lost is not None:
                # Not this config's fault alone, and nothing after it could run: resume in a fresh process.
                raise ContextPoisoned(f"verifying {config} broke the CUDA context ({lost}); checkpoint saved, run "
                                      "the job again to resume") from exc
            return False, f"verification run failed: {error_text(exc)}"
        return err <= bound, f"relative error {err:.3g} vs reference (bound {bound:g} for {job.shape.dtype})"


def robust_scores(rows: dict) -> dict:
    """{candidate: score} over the rows timed on every draw (``mean_us``/``worst_us`` set): max(mean / best mean,
    worst / best worst); 1.0 is best on both counts."""
    timed = {c: r for c, r in rows.items() if r.get("mean_us") is not None and r.get("worst_us") is not None}
    if not timed:
        return {}
    best_mean = min(r["mean_us"] for r in timed.values())
    best_worst = min(r["worst_us"] for r in timed.values())
    return {c: max(r["mean_us"] / best_mean, r["worst_us"] / best_worst) for c, r in timed.items()}


class Selection:
    """Marks the winner rows of a job's :class:`Measurements`."""

    def __init__(self, meas: Measurements, check: Checker):
        self.meas, self.rows, self.check = meas, meas.rows, check

    def ordered(self, cands: Iterable[Candidate], finalists: set) -> list[Candidate]:
        """ok candidates, best first: finalists by their score over the draws, then the rest by time (a fallback)."""
        ok = [c for c in cands if self.rows[c]["status"] == "ok" and self.rows[c]["time_us"] is not None]
        scores = robust_scores({c: self.rows[c] for c in ok if c in finalists})
        return sorted(ok, key=lambda c: (c not in finalists, scores.get(c, float("inf")),
                                         self.rows[c]["mean_us"] or self.rows[c]["time_us"], self.rows[c]["time_us"]))

    def cost(self, cand: Candidate) -> float:
        """What a candidate costs in a split pair: its mean over the draws where it has one, else its time."""
        return self.rows[cand]["mean_us"] or self.rows[cand]["time_us"]

    def passes(self, cand: Candidate) -> bool:
        row = self.rows[cand]
        if row["verified"]:
            return True  # resumed from the checkpoint
        ok, message = self.check(cand.config)
        if ok:
            row["verified"] = True
        else:
            row.update(status="incorrect", error=message)
        self.meas.measured.add(cand)
        return ok

    def pick(self, finalists, split: bool) -> None:
        (self.pick_split if split else self.pick_whole)(set(finalists))
        self.meas.checkpoint(force=True)

    def pick_whole(self, finalists: set) -> None:
        passed = failures = 0
        for cand in self.ordered(self.rows, finalists):
            if passed >= VERIFY_TOP or failures >= MAX_VERIFY_FAILURES:
                break
            if self.passes(cand):
                self.rows[cand]["winner"] = passed == 0
                passed += 1
            else:
                failures += 1

    def pick_extended(self, winner: Candidate, variants: list[Candidate], whole) -> Candidate:
        """The extended winner: the best of ``winner`` and its ``variants`` over the draws (as :meth:`ordered`
        ranks them) that is at least :data:`EXTENDED_MIN_GAIN` faster than ``winner`` on mean and passes the
        reference check (``whole(cand)``: the config of the whole op), else ``winner``."""
        limit = self.cost(winner) * (1 - EXTENDED_MIN_GAIN)
        for cand in self.ordered([winner, *variants], {winner, *variants}):
            if cand == winner:
                break
            if self.cost(cand) > limit:
                continue
            ok, message = self.check(whole(cand))
            self.meas.measured.add(cand)
            if ok:
                self.rows[cand]["verified"] = True
                return cand
            self.rows[cand].update(status="incorrect", error=message)
        return winner

    def pick_split(self, finalists: set) -> None:
        """The BLOCK_SIZE_M with the least best_up + best_down, whose pair passes the full-op check."""
        failures = 0
        while failures < MAX_VERIFY_FAILURES:
            best = {}
            for bm in sorted({c.cid[0] for c in self.rows}):
                ups = self.ordered((c for c in self.rows if c.gemm == "up" and c.cid[0] == bm), finalists)
                downs = self.ordered((c for c in self.rows if c.gemm == "down" and c.cid[0] == bm), finalists)
                if ups and downs:
                    best[bm] = (self.cost(ups[0]) + self.cost(downs[0]), ups, downs)
            if not best:
                break
            _, ups, downs = min(best.values(), key=lambda v: v[0])
            if self._pair_passes(ups, downs):
                self.rows[ups[0]]["winner"] = self.rows[downs[0]]["winner"] = True
                break
            failures += 1

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
        ok, message = self.check({"up": u.config, "down": d.config})
        self.meas.measured.update((u, d))
        if ok:
            self.rows[u]["verified"] = self.rows[d]["verified"] = True
            return None
        return f"wrong as a split pair (up {u}, down {d}): {message}"
