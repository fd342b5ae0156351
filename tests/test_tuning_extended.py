"""moekernel's own launch parameters in the tuner: TMA, SPLIT_K, HALF_TAIL and PERSISTENT searched around the engine
search's result (interpreter)."""

import importlib
import time

import pytest

from moekernel.backend import kernels_mode
from moekernel.heuristics import HOPPER_SMS, default_config
from moekernel.shapes import KernelShape
from moekernel.tuning import read_shard, tune
from moekernel.tuning.space import config_str, extended_default, extended_variants, split_k_reason

moe = importlib.import_module("moekernel.kernel.moe")
BACKEND = "cuda" if kernels_mode() == "cuda" else "interpret"
interpreter_only = pytest.mark.skipif(BACKEND != "interpret", reason="fake runners are timed as CPU sleeps")
# Long enough a reduction (N=512: 8 K steps of 64) for SPLIT_K=2 to be worth timing, small enough to interpret.
SHAPE = KernelShape(4, 512, 64, 2, "fp16")
SPACE = {"BLOCK_SIZE_M": [16], "BLOCK_SIZE_N": [32], "BLOCK_SIZE_K": [64], "GROUP_SIZE_M": [1], "num_warps": [4],
         "num_stages": [2, 3]}


def test_split_k_is_tried_only_where_the_down_grid_leaves_sms_idle():
    mixtral = KernelShape(8, 7168, 4096, 2, "bf16")
    small = default_config(1, 8, 7168, 4096, 2, "bf16")
    # M=1: 2 experts x 32 column tiles = 64 programs; 2 and 4 keep it within two waves, 8 does not.
    assert [split_k_reason(mixtral, 1, small, s) is None for s in (2, 4, 8)] == [True, True, False]
    assert "more than two waves" in split_k_reason(mixtral, 1, small, 8)
    prefill = default_config(4096, 8, 7168, 4096, 2, "bf16")
    assert f"fill the {HOPPER_SMS} SMs" in split_k_reason(mixtral, 4096, prefill, 2)
    short = dict(SPACE, BLOCK_SIZE_M=16, BLOCK_SIZE_N=32, BLOCK_SIZE_K=64, GROUP_SIZE_M=1, num_warps=4, num_stages=2)
    assert "K steps" in split_k_reason(KernelShape(4, 64, 64, 2, "fp16"), 2, short, 2)


def own(config):
    return config.get("SPLIT_K", 1), config.get("TMA", 0)


def test_every_finalist_gets_tma_and_the_winner_split_k_too():
    mixtral = KernelShape(8, 7168, 4096, 2, "bf16")
    six = default_config(1, 8, 7168, 4096, 2, "bf16")
    found = extended_variants(mixtral, 1, six, "both")
    assert [own(c) for c, _ in found] == [(1, 1), (1, 2), (2, 0), (2, 1), (2, 2), (4, 0), (4, 1), (4, 2), (8, 0)]
    assert [r is None for _, r in found] == [True] * 8 + [False]  # SPLIT_K=8: one row says why
    assert all({k: c[k] for k in six} == six for c, _ in found)
    # Another finalist, or the up GEMM of a split winner: TMA only.
    assert [own(c) for c, _ in extended_variants(mixtral, 1, six, "both", winner=False)] == [(1, 1), (1, 2)]
    assert [own(c) for c, _ in extended_variants(mixtral, 1, six, "up")] == [(1, 1), (1, 2)]


def test_tma_is_pruned_where_rows_cannot_have_a_descriptor():
    # int8 weights with N=40: the down GEMM's w2 rows are 40 bytes, not a multiple of 16.
    shape = KernelShape(4, 40, 80, 2, "int8_w8a16")
    six = dict(SPACE, BLOCK_SIZE_M=16, BLOCK_SIZE_N=32, BLOCK_SIZE_K=64, GROUP_SIZE_M=1, num_warps=4, num_stages=2)
    found = extended_variants(shape, 4, six, "down", winner=False)
    assert [r for _, r in found] == [
        f"TMA={t}: the down GEMM's weight rows are 40 x 1 bytes, not a multiple of 16 (a TMA descriptor needs that)"
        for t in (1, 2)]
    up = extended_variants(shape, 4, six, "up", winner=False)
    assert [r is None for _, r in up] == [True, True]  # K=80: rows of 80 bytes (weights) and 160 (activations)
    assert all(r is not None for _, r in extended_variants(shape, 4, six, "both", winner=False))


def fake_runners(monkeypatch, ms_by_own, persistent_gain=-4, tail_gain=-4):
    """make_runner returns a sleep of ms_by_own[(SPLIT_K, TMA, num_stages)] or [(SPLIT_K, TMA)] ms, 14 for any
    other, ``persistent_gain`` ms less with PERSISTENT=1 and ``tail_gain`` less with HALF_TAIL=1 (4 more by
    default); num_stages 3 is 5 ms slower (a clear engine winner, and a second finalist whose variants lose too)."""
    def fake(inputs, config, gemm="both"):
        ms = ms_by_own.get(own(config) + (config["num_stages"],), ms_by_own.get(own(config), 14))
        ms += 5 * (config["num_stages"] == 3) - persistent_gain * config.get("PERSISTENT", 0)
        ms -= tail_gain * config.get("HALF_TAIL", 0)
        return lambda: time.sleep(ms / 1000)

    monkeypatch.setattr(moe, "make_runner", fake)


@interpreter_only
@pytest.mark.parametrize("ms_by_own, persistent_gain, extended_own", [
    ({(1, 0): 10, (2, 0): 5}, -4, (2, 0, 0)),  # the split pays: moekernel's own file gets it
    ({(1, 0): 10, (2, 2): 5}, -4, (2, 2, 0)),  # the split with TMA
    ({(1, 0): 10, (1, 1): 5}, -4, (1, 1, 0)),  # TMA on the weights alone
    ({(1, 0): 10}, -4, (1, 0, 0)),  # nothing does: the winner is the extended winner too
    ({(1, 0): 10, (2, 1, 4): 6}, -4, (2, 1, 0)),  # moekernel's extended default does (four stages: not the six)
    ({(1, 0): 10, (2, 2): 8}, 4, (2, 2, 1)),  # a persistent down GEMM pays on top of the best variant
    ({(1, 0): 10}, 4, (1, 0, 1)),  # or on the engine winner itself
])
def test_the_extended_winner_is_the_engine_winner_or_a_variant_that_pays(tmp_path, monkeypatch, ms_by_own,
                                                                         persistent_gain, extended_own):
    fake_runners(monkeypatch, ms_by_own, persistent_gain)
    out = tmp_path / "bs2.parquet"
    frame = tune(SHAPE, 2, strategy="exhaustive", space=SPACE, iters=2, draws=2, backend=BACKEND, jobs=1,
                 progress=False, out=out)
    (winner,) = frame[frame["winner"]].itertuples(index=False)
    assert (winner.SPLIT_K, winner.TMA) == (1, 0) and winner.num_stages == 2  # the engines' six, always
    (extended,) = frame[frame["extended_winner"].fillna(False).astype(bool)].itertuples(index=False)
    six = ["BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps", "num_stages"]
    assert (extended.SPLIT_K, extended.TMA, extended.PERSISTENT) == extended_own
    default = extended_default(SHAPE, 2)
    expected_six = default if extended_own == (2, 1, 0) else winner._asdict()
    assert [getattr(extended, p) for p in six] == [expected_six[p] for p in six]
    assert len(extended.draw_us) == 2  # timed on every draw, like the finalists
    if extended_own != (1, 0, 0):
        assert extended.verified  # the op with its own parameters was checked against the reference
        assert f"with moekernel's own parameters both {config_str(extended._asdict())} " in frame.attrs["summary"]
    # Every variant is a row; those not tried say why. The winner gets TMA and SPLIT_K, the other finalist TMA, and
    # moekernel's extended default (four stages, SPLIT_K 2 and TMA 1 here) is timed beside them.
    # PERSISTENT and HALF_TAIL are tried once each, on the best of the other variants and the winner; blocks of 16
    # rows have no half tiles, so that row says why.
    (persistent,) = frame[frame["PERSISTENT"] == 1].itertuples(index=False)
    assert (persistent.SPLIT_K, persistent.TMA) == extended_own[:2]
    (half_tail,) = frame[frame["HALF_TAIL"] == 1].itertuples(index=False)
    assert (half_tail.SPLIT_K, half_tail.TMA, half_tail.status) == extended_own[:2] + ("pruned",)
    assert "needs BLOCK_SIZE_M >= 32" in half_tail.error
    variants = frame[((frame["SPLIT_K"] > 1) | (frame["TMA"] > 0)) & (frame["PERSISTENT"] == 0)
                     & (frame["HALF_TAIL"] == 0)]
    by_stages = {s: sorted(zip(g["SPLIT_K"], g["TMA"])) for s, g in variants.groupby("num_stages")}
    # (8 K steps: SPLIT_K 4 and 8 leave too few per part, so each is one pruned row.)
    assert by_stages == {2: [(1, 1), (1, 2), (2, 0), (2, 1), (2, 2), (4, 0), (8, 0)], 3: [(1, 1), (1, 2)],
                         4: [(2, 1)]}
    assert variants[variants["status"] == "pruned"]["error"].str.contains("K steps").all()
    assert read_shard(out).num_rows == len(frame)


@interpreter_only
@pytest.mark.parametrize("persistent_gain, tail_gain, extended_own", [
    (-4, 4, (0, 1)),  # half tiles pay
    (4, -4, (1, 0)),  # a persistent down GEMM does, half tiles do not
    (3, 6, (0, 1)),  # both do: the kernel takes one of them, the faster
    (-4, -4, (0, 0)),  # neither
])
def test_half_tail_is_tried_beside_a_persistent_down_gemm(tmp_path, monkeypatch, persistent_gain, tail_gain,
                                                          extended_own):
    fake_runners(monkeypatch, {(1, 0): 10}, persistent_gain, tail_gain)
    space = dict(SPACE, BLOCK_SIZE_M=[32])
    frame = tune(SHAPE, 2, strategy="exhaustive", space=space, iters=2, draws=2, backend=BACKEND, jobs=1,
                 progress=False)
    (extended,) = frame[frame["extended_winner"].fillna(False).astype(bool)].itertuples(index=False)
    assert (extended.PERSISTENT, extended.HALF_TAIL) == extended_own
    (half_tail,) = frame[frame["HALF_TAIL"] == 1].itertuples(index=False)
    assert half_tail.status == "ok" and len(half_tail.draw_us) == 2
    assert (half_tail.SPLIT_K, half_tail.TMA, half_tail.PERSISTENT) == (1, 0, 0)
