"""Search strategies, driven by a fake measure function (no kernel runs)."""

import random

import pytest

from moekernel.tuning.space import config_id, expand, load_space
from moekernel.tuning.strategies import Exhaustive, Fast, describe, get_strategy

SPACE = load_space({"BLOCK_SIZE_M": [16, 32], "GROUP_SIZE_M": [1], "num_warps": [4, 8]})  # 2*4*3*1*2*4 = 192


def _candidates():
    return [(config_id(c), "both") for c in expand(SPACE)]


class FakeMeasure:
    """True cost per candidate plus noise that shrinks with more iterations; records every call."""

    def __init__(self, cands, seed=0, fail=()):
        rng = random.Random(seed)
        self.true = {c: 10.0 + rng.random() * 10 for c in cands}
        self.fail, self.calls, self.rng = set(fail), [], rng

    def __call__(self, cands, iters):
        self.calls.append((list(cands), iters))
        noise = 0.2 / iters
        return {c: None if c in self.fail else self.true[c] * (1 + self.rng.uniform(-noise, noise)) for c in cands}


def test_exhaustive_times_everything_once_with_full_iters():
    cands = _candidates()
    measure = FakeMeasure(cands)
    finalists = Exhaustive().run({"both": cands}, measure, iters=20)
    assert measure.calls == [(cands, 20)]
    assert sorted(finalists) == sorted(cands)


def test_fast_halves_and_keeps_the_best():
    cands = _candidates()
    measure = FakeMeasure(cands, fail=cands[:5])
    finalists = Fast().run({"both": cands}, measure, iters=20)
    iters = [it for _, it in measure.calls]
    assert iters[0] == 3 and iters[-1] == 20 and iters == sorted(iters)
    assert len(measure.calls[0][0]) == len(cands)  # round one: everything
    assert len(measure.calls[-1][0]) <= len(cands) // 4  # the full-iteration round sees a fraction
    best = min((c for c in cands if c not in measure.fail), key=measure.true.get)
    assert best in finalists and not set(finalists) & measure.fail
    assert set(finalists) == set(measure.calls[-1][0]) - measure.fail


def test_fast_always_keeps_seeds():
    cands = _candidates()
    measure = FakeMeasure(cands)
    slowest = max(cands, key=measure.true.get)
    finalists = Fast().run({"both": cands}, measure, iters=20, seeds={slowest})
    assert slowest in finalists


def test_fast_ranks_groups_separately():
    cands = _candidates()
    groups = {bm: [c for c in cands if c[0][0] == bm] for bm in (16, 32)}
    measure = FakeMeasure(cands)
    for c in groups[32]:
        measure.true[c] += 100  # every BLOCK_SIZE_M=32 config is slower than every 16 one
    finalists = Fast(final_keep=2).run(groups, measure, iters=20)
    assert {c[0][0] for c in finalists} == {16, 32}


def test_fast_explores_near_seeds_only():
    cands = _candidates()
    seed = cands[len(cands) // 2]
    explored, reason = Fast(radius=1).explore({"both": cands}, {seed}, SPACE)
    near = explored["both"]
    assert seed in near and 1 < len(near) < len(cands)
    assert all(sum(a != b for a, b in zip(c[0], seed[0])) <= 1 for c in near)
    assert "1 steps" in reason
    # No seeds, or radius=None: everything.
    assert Fast().explore({"both": cands}, set(), SPACE)[0]["both"] == cands
    assert Fast(radius=None).explore({"both": cands}, {seed}, SPACE)[0]["both"] == cands


def test_get_strategy_parses_and_describes():
    assert isinstance(get_strategy("exhaustive"), Exhaustive)
    fast = get_strategy("fast:eta=3,radius=none")
    assert fast == Fast(eta=3, radius=None)
    assert describe(fast) == "fast:eta=3,radius=None"
    assert describe(get_strategy("fast")) == "fast"
    assert get_strategy(describe(Fast(eta=2, radius=3))) == Fast(eta=2, radius=3)
    for bad in ("greedy", "fast:speed=1", "exhaustive:x=1"):
        with pytest.raises(ValueError):
            get_strategy(bad)


@pytest.mark.parametrize(("spec", "message"), [
    ("fast:eta=1", "option eta must be >= 2, got 1"),  # would never raise the iterations: an endless job
    ("fast:eta=0", "option eta must be >= 2, got 0"),
    ("fast:first_iters=0", "option first_iters must be >= 1"),
    ("fast:radius=-1", "option radius must be >= 0"),
])
def test_fast_options_that_cannot_work_are_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        get_strategy(spec)
    assert get_strategy("fast:radius=none").radius is None
