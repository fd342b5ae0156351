"""moekernel's own launch parameters in the tuner: SPLIT_K searched around the engine winner (interpreter)."""

import importlib
import time

import pytest

from moekernel.backend import kernels_mode
from moekernel.heuristics import HOPPER_SMS, default_config
from moekernel.shapes import KernelShape
from moekernel.tuning import read_shard, tune
from moekernel.tuning.space import split_k_variants

moe = importlib.import_module("moekernel.kernel.moe")
BACKEND = "cuda" if kernels_mode() == "cuda" else "interpret"
interpreter_only = pytest.mark.skipif(BACKEND != "interpret", reason="fake runners are timed as CPU sleeps")
# Long enough a reduction (N=512: 8 K steps of 64) for SPLIT_K=2 to be worth timing, small enough to interpret.
SHAPE = KernelShape(4, 512, 64, 2, "fp16")
SPACE = {"BLOCK_SIZE_M": [16], "BLOCK_SIZE_N": [32], "BLOCK_SIZE_K": [64], "GROUP_SIZE_M": [1], "num_warps": [4],
         "num_stages": [2, 3]}


def test_split_k_is_tried_only_where_the_down_grid_leaves_sms_idle():
    mixtral = KernelShape(8, 7168, 4096, 2, "bf16")
    small = split_k_variants(mixtral, 1, default_config(1, 8, 7168, 4096, 2, "bf16"), "both")
    # M=1: 2 experts x 32 column tiles = 64 programs; 2 and 4 keep it within two waves, 8 does not.
    assert [(c["SPLIT_K"], r is None) for c, r in small] == [(2, True), (4, True), (8, False)]
    assert "more than two waves" in small[2][1]
    prefill = split_k_variants(mixtral, 4096, default_config(4096, 8, 7168, 4096, 2, "bf16"), "both")
    assert all(r is not None and f"fill the {HOPPER_SMS} SMs" in r for _, r in prefill)
    short = split_k_variants(KernelShape(4, 64, 64, 2, "fp16"), 2, dict(SPACE, BLOCK_SIZE_M=16, BLOCK_SIZE_N=32,
                             BLOCK_SIZE_K=64, GROUP_SIZE_M=1, num_warps=4, num_stages=2), "both")
    assert all(r is not None and "K steps" in r for _, r in short)
    assert split_k_variants(mixtral, 1, default_config(1, 8, 7168, 4096, 2, "bf16"), "up") == []


def fake_runners(monkeypatch, ms_by_split):
    """make_runner returns a sleep of ms_by_split[SPLIT_K] ms (num_stages 3 is 5 ms slower: a clear engine winner)."""
    def fake(inputs, config, gemm="both"):
        ms = ms_by_split[config.get("SPLIT_K", 1)] + 5 * (config["num_stages"] == 3)
        return lambda: time.sleep(ms / 1000)

    monkeypatch.setattr(moe, "make_runner", fake)


@interpreter_only
@pytest.mark.parametrize("ms_by_split, extended_split", [
    ({1: 10, 2: 5}, 2),  # the split pays: moekernel's own file gets it
    ({1: 10, 2: 14}, 1),  # it does not: the winner is the extended winner too
])
def test_the_extended_winner_is_the_engine_winner_or_a_split_that_pays(tmp_path, monkeypatch, ms_by_split,
                                                                       extended_split):
    fake_runners(monkeypatch, ms_by_split)
    out = tmp_path / "bs2.parquet"
    frame = tune(SHAPE, 2, strategy="exhaustive", space=SPACE, iters=2, draws=2, backend=BACKEND, jobs=1,
                 progress=False, out=out)
    (winner,) = frame[frame["winner"]].itertuples(index=False)
    assert winner.SPLIT_K == 1 and winner.num_stages == 2  # the engines' six, always
    (extended,) = frame[frame["extended_winner"].fillna(False).astype(bool)].itertuples(index=False)
    six = ["BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps", "num_stages"]
    assert extended.SPLIT_K == extended_split and [getattr(extended, p) for p in six] == [getattr(winner, p) for p in six]
    assert len(extended.draw_us) == 2  # timed on every draw, like the finalists
    if extended_split > 1:
        assert extended.verified  # the split op was checked against the reference
        assert "with moekernel's own parameters both M16 N32 K64 G1 w4 s2 split-K 2" in frame.attrs["summary"]
    # Every variant is a row with its SPLIT_K; those not tried say why.
    variants = frame[frame["SPLIT_K"] > 1]
    assert sorted(variants["SPLIT_K"]) == [2, 4, 8]
    assert variants[variants["status"] == "pruned"]["error"].str.contains("K steps").all()
    assert read_shard(out).num_rows == len(frame)
