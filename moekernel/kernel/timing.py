"""Timing one zero-argument callable: the one method the tuner, the benchmarks and the pipeline's verify share.

On CUDA, up to ``calls_per_graph`` calls are captured in one CUDA graph, so launch overhead (large next to a
few-microsecond kernel at small batch sizes) is not timed; the graph is replayed ``iters`` times, each replay
between its own pair of events, and a replay's time divided by its calls is one sample. A call long enough to hide
that overhead on its own (a replay of :data:`REPLAY_US` or more) is captured fewer times: at prefill sizes, ten
calls per replay would only multiply the seconds spent timing (most of the tuner's and verify's GPU time there).
The median is the figure, p20/p80 the spread. The kernels see the same inputs every call (inputs stay in L2 when
they fit, as in the engines' tuners).

Callables compared with each other are timed together (:func:`time_interleaved`): each is captured and warmed up
alone, then they take turns, a few replays each, until each has its samples. An H200's clocks drift by several per
cent over the seconds a comparison takes under sustained load (BENCHMARKS.md: one config 1771 to 1945 µs between
routing draws timed one after another); timed one after another, whichever ran at the better moment wins, while
taking turns puts the same drift on every one. Each round of turns starts one callable later: in a fixed order the
one listed first had an edge (three runners of one config, M >= 256 on an H200: the later two slower in 24 of 30
comparisons, by up to 5%; rotated, in 14 of 30). The spread between identical runners, up to 5% at prefill sizes,
stays: a difference that small is not a finding.

With the Triton interpreter the kernel runs through NumPy on the CPU: the figures only keep the code path alive
and mean nothing; the tuner labels such rows ``backend=interpret``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

#: The interpreter is slow and its timings meaningless: never time it more than this.
INTERPRET_MAX_ITERS = 2

#: A replay at least this long (µs) hides its launch overhead (a few µs: well under 1%), so calls are captured per
#: graph only until a replay lasts this long, at most ``calls_per_graph``.
REPLAY_US = 1000.0


@dataclass(frozen=True)
class Timing:
    """Microseconds per call: median and the 20th/80th percentiles over ``iters`` samples."""

    median_us: float
    p20_us: float
    p80_us: float
    iters: int
    first_call_s: float | None = None  # the untimed eager call; seconds there mean the kernel was compiled then
    calls_per_replay: int = 1  # calls in the CUDA graph one sample was a replay of

    @classmethod
    def from_samples(cls, samples_us, first_call_s: float | None = None, calls_per_replay: int = 1) -> "Timing":
        x = np.asarray(samples_us, dtype=np.float64)
        p20, median, p80 = np.percentile(x, [20, 50, 80])
        return cls(float(median), float(p20), float(p80), int(x.size), first_call_s, calls_per_replay)


def time_callable(
    fn: Callable[[], object],
    *,
    iters: int = 20,
    calls_per_graph: int = 10,
    warmup: int = 2,
    backend: str = "cuda",
) -> Timing:
    """Time ``fn`` (which must only launch work on preallocated buffers, so a CUDA graph can hold it).

    ``warmup`` graph replays run untimed after one eager call (which loads, or compiles, the kernels: that must
    never happen inside a capture). Exceptions from ``fn`` propagate; a CUDA error may leave the context unusable
    (see :mod:`moekernel.tuning.measure`).
    """
    if iters < 1 or calls_per_graph < 1:
        raise ValueError("iters and calls_per_graph must be >= 1")
    if backend == "interpret":
        return _time_interpreted(fn, min(iters, INTERPRET_MAX_ITERS))
    if backend != "cuda":
        raise ValueError(f"backend must be 'cuda' or 'interpret', got {backend!r}")
    return _time_cuda_graph(fn, iters, calls_per_graph, warmup)


def _time_interpreted(fn: Callable[[], object], iters: int) -> Timing:
    return Timing.from_samples(_Interpreted(fn).samples(iters))


def time_interleaved(
    fns: Sequence[Callable[[], object]],
    *,
    iters: int = 20,
    calls_per_graph: int = 10,
    warmup: int = 2,
    backend: str = "cuda",
    turn: int = 4,
) -> list[Timing | Exception]:
    """Time ``fns`` against each other: each captured and warmed up as :func:`time_callable` does, then replayed in
    turns of ``turn`` replays until each has ``iters`` samples (see the module docstring for why).

    One result per callable, in order: its Timing, or the exception its first call or capture raised (the others are
    timed all the same). An error while replaying propagates: it may have broken the CUDA context for all of them.
    """
    if iters < 1 or calls_per_graph < 1 or turn < 1:
        raise ValueError("iters, calls_per_graph and turn must be >= 1")
    if backend == "interpret":
        iters = min(iters, INTERPRET_MAX_ITERS)
        captured = [_attempt(lambda fn=fn: _Interpreted(fn)) for fn in fns]
    elif backend == "cuda":
        captured = [_attempt(lambda fn=fn: _Captured(fn, calls_per_graph, warmup)) for fn in fns]
    else:
        raise ValueError(f"backend must be 'cuda' or 'interpret', got {backend!r}")
    try:
        live = [c for c in captured if not isinstance(c, Exception)]
        samples: dict[int, list[float]] = {id(c): [] for c in live}
        rounds = 0
        while any(len(samples[id(c)]) < iters for c in live):
            # Each round starts one callable later, so that no one of them always comes first.
            first = rounds % len(live)
            for c in live[first:] + live[:first]:
                left = iters - len(samples[id(c)])
                if left > 0:
                    samples[id(c)] += c.samples(min(turn, left))
            rounds += 1
    finally:
        for c in captured:
            if not isinstance(c, Exception):
                c.close()
    return [c if isinstance(c, Exception) else Timing.from_samples(samples[id(c)], c.first_call_s, c.calls)
            for c in captured]


def _attempt(make):
    try:
        return make()
    except Exception as exc:  # noqa: BLE001 - the caller gets each callable's own failure
        return exc


class _Interpreted:
    """A callable timed by the wall clock (the interpreter's figures only keep the code path alive). Its first sample
    is taken at once, so that a callable that fails does so here, as a captured one fails at its first call."""

    first_call_s, calls = None, 1

    def __init__(self, fn: Callable[[], object]):
        self.fn = fn
        self._taken = self._time(1)

    def _time(self, n: int) -> list[float]:
        out = []
        for _ in range(n):
            start = time.perf_counter()
            self.fn()
            out.append((time.perf_counter() - start) * 1e6)
        return out

    def samples(self, n: int) -> list[float]:
        taken, self._taken = self._taken[:n], self._taken[n:]
        return taken + self._time(n - len(taken))

    def close(self) -> None:
        pass


class _Captured:
    """A callable ready to be timed: called once eagerly, captured in a CUDA graph of ``calls`` calls, warmed up."""

    def __init__(self, fn: Callable[[], object], calls_per_graph: int, warmup: int):
        import torch

        # Eager first call on a side stream, as torch recommends before capturing: kernels get loaded, lazy
        # workspaces allocated, and errors surface here rather than as an invalidated capture.
        start = time.perf_counter()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        self.first_call_s = time.perf_counter() - start
        self.fn, self.graphs = fn, []
        try:
            # The first replay, of the full graph, is a warm-up and tells how long a call is (GPU time only, unlike
            # an eager call's); a call that long needs fewer calls per replay, so the graph is captured again.
            self.graph = self._capture(calls_per_graph)
            self.calls = calls_for(_time_replays(self.graph, 1)[0] / calls_per_graph, calls_per_graph)
            settled = 1  # replays the timed graph has had
            if self.calls < calls_per_graph:
                self.graph, settled = self._capture(self.calls), 0
            for _ in range(max(0, warmup - settled)):
                self.graph.replay()
        except BaseException:
            self.close()
            raise

    def _capture(self, calls: int):
        import torch

        graph = torch.cuda.CUDAGraph()
        self.graphs.append(graph)
        with torch.cuda.graph(graph):
            for _ in range(calls):
                self.fn()
        return graph

    def samples(self, n: int) -> list[float]:
        """Microseconds per call of each of ``n`` replays."""
        return [us / self.calls for us in _time_replays(self.graph, n)]

    def close(self) -> None:
        # Free the graphs' private memory pools now: a tuning job captures hundreds of graphs. After a failed
        # capture reset may raise as well; the first error is the one to report.
        for graph in self.graphs:
            try:
                graph.reset()
            except Exception:  # noqa: BLE001
                pass
        self.graphs = []


def _time_cuda_graph(fn: Callable[[], object], iters: int, calls_per_graph: int, warmup: int) -> Timing:
    captured = _Captured(fn, calls_per_graph, warmup)
    try:
        samples = captured.samples(iters)
    finally:
        captured.close()
    return Timing.from_samples(samples, captured.first_call_s, captured.calls)


def _time_replays(graph, n: int) -> list[float]:
    """Microseconds of each of ``n`` replays of ``graph``, each between its own pair of events."""
    import torch

    pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    for start, end in pairs:
        start.record()
        graph.replay()
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) * 1e3 for start, end in pairs]


def calls_for(call_us: float, calls_per_graph: int) -> int:
    """Calls per replay: enough for a replay of :data:`REPLAY_US`, at least 1, at most ``calls_per_graph``."""
    return max(1, min(calls_per_graph, math.ceil(REPLAY_US / max(call_us, 1e-3))))


def time_with_events(fn: Callable[[], object], iters: int, warmup: int = 3) -> Timing:
    """For callables a CUDA graph cannot hold (they sync with the host): each call between its own pair of events."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for start, end in pairs:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return Timing.from_samples([s.elapsed_time(e) * 1e3 for s, e in pairs])
