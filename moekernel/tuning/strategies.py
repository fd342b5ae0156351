"""Which candidates to time, and how often.

A strategy sees candidates as ``(config_id, gemm)`` tuples (:class:`moekernel.tuning.space.Candidate`) arranged in
groups that are ranked separately (one group for ``gemm=both``; one per gemm and BLOCK_SIZE_M in split mode,
because the split winner is chosen per BLOCK_SIZE_M). It calls ``measure(candidates, iters)``, which compiles what it must, times, and returns each
candidate's median in µs (None for a failure), and returns the finalists: the candidates timed in its last round,
the only ones whose times are comparable with each other and so the only ones that may win.

- :class:`Exhaustive` times every candidate with full ``iters``: the engines' sweep.
- :class:`Fast` is successive halving: time all cheaply, keep the best ``1/eta`` of each group, re-time with more
  iterations, until few are left and those have full ``iters``. Seeds (top configs of neighbouring batch sizes)
  always survive a round; with seeds, only configs near a seed are explored at all (``radius`` steps through the
  space's lists, summed over the six parameters), which also means only those get compiled.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, fields

from .space import PARAMS, Candidate

Measure = Callable[[Sequence[Candidate], int], Mapping[Candidate, float | None]]


@dataclass(frozen=True)
class Exhaustive:
    def explore(self, groups, seeds, space) -> tuple[dict[Hashable, list[Candidate]], str | None]:
        return groups, None

    def run(self, groups: Mapping[Hashable, list[Candidate]], measure: Measure, *, iters: int, seeds=()) -> list:
        everything = [c for members in groups.values() for c in members]
        measure(everything, iters)
        return everything


@dataclass(frozen=True)
class Fast:
    eta: int = 4  # keep the best 1/eta of a group each round
    first_iters: int = 3  # replays per candidate in the first round
    final_keep: int = 4  # per group, at most this many reach the full-iters round (and at least)
    radius: int | None = 2  # with seeds: explore configs within this many steps of one (None: explore all)

    def __post_init__(self):
        # eta 1 would never raise the iterations (an endless loop), eta 0 divides by zero: say so before any job.
        least = {"eta": 2, "first_iters": 1, "final_keep": 1, "radius": 0}
        for name, minimum in least.items():
            value = getattr(self, name)
            if value is not None and value < minimum:
                raise ValueError(f"fast-strategy option {name} must be >= {minimum}, got {value}")

    def explore(self, groups, seeds, space) -> tuple[dict[Hashable, list[Candidate]], str | None]:
        """The candidates worth timing at all, and the prune reason for the others."""
        if self.radius is None or not seeds:
            return groups, None
        seed_points = {_position(cid, space) for cid, *_ in seeds}
        near = {
            g: [c for c in members if c in seeds or _near(_position(c[0], space), seed_points, self.radius)]
            for g, members in groups.items()
        }
        return near, f"fast strategy: more than {self.radius} steps from every seed config"

    def run(self, groups: Mapping[Hashable, list[Candidate]], measure: Measure, *, iters: int, seeds=()) -> list:
        alive = {g: list(members) for g, members in groups.items() if members}
        round_iters = min(self.first_iters, iters)
        times = dict(measure([c for m in alive.values() for c in m], round_iters))
        while round_iters < iters:
            alive = {g: self._survivors(members, times, seeds) for g, members in alive.items()}
            alive = {g: m for g, m in alive.items() if m}
            small = all(len(m) <= self.final_keep for m in alive.values())
            round_iters = iters if small else min(iters, round_iters * self.eta)
            times.update(measure([c for m in alive.values() for c in m], round_iters))
        return [c for m in alive.values() for c in m if times.get(c) is not None]

    def _survivors(self, members: list[Candidate], times, seeds) -> list[Candidate]:
        ranked = sorted((c for c in members if times.get(c) is not None), key=times.__getitem__)
        keep = max(self.final_keep, math.ceil(len(ranked) / self.eta))
        chosen = set(ranked[:keep]) | {c for c in ranked if c in seeds}
        return [c for c in ranked if c in chosen]


def _position(cid: tuple[int, ...], space: Mapping[str, list[int]]) -> tuple[int, ...]:
    """Index of each parameter value in the space's sorted list (nearest, for a seed from another space)."""
    return tuple(min(bisect.bisect_left(space[p], v), len(space[p]) - 1) for p, v in zip(PARAMS, cid))


def _near(point: tuple[int, ...], seeds: set[tuple[int, ...]], radius: int) -> bool:
    return any(sum(abs(a - b) for a, b in zip(point, s)) <= radius for s in seeds)


#: Every strategy by name: the one list the CLI, the pipeline's config and the shard's ``strategy`` column use.
#: A strategy is a frozen dataclass with ``explore`` and ``run``; its fields are the ``name:field=value`` options.
STRATEGIES = {"fast": Fast, "exhaustive": Exhaustive}


def get_strategy(spec: str | Exhaustive | Fast) -> Exhaustive | Fast:
    """``exhaustive``, ``fast``, or ``fast:eta=4,radius=3`` (``radius=none`` explores everything)."""
    if not isinstance(spec, str):
        return spec
    name, _, args = spec.partition(":")
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {spec!r}; known: {', '.join(STRATEGIES)} (with options as in "
                         "fast:eta=4,radius=2)")
    cls = STRATEGIES[name]
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, int | None] = {}
    for item in filter(None, args.split(",")):
        key, _, value = item.partition("=")
        if key not in known:
            options = ", ".join(sorted(known)) or "none"
            raise ValueError(f"unknown {name}-strategy option {key!r}; known: {options}")
        optional = "None" in str(known[key].type)  # e.g. radius: int | None
        try:
            kwargs[key] = None if optional and value.lower() == "none" else int(value)
        except ValueError:
            raise ValueError(f"strategy {spec!r}: option {key} needs an integer, got {value!r}") from None
    return cls(**kwargs)


def describe(strategy: Exhaustive | Fast) -> str:
    """The text stored in the shard's ``strategy`` column: enough to rebuild the strategy."""
    name = next(n for n, cls in STRATEGIES.items() if isinstance(strategy, cls))
    changed = [f"{f.name}={getattr(strategy, f.name)}" for f in fields(strategy)
               if getattr(strategy, f.name) != f.default]
    return name + (":" + ",".join(changed) if changed else "")
