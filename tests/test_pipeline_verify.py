"""The verify step: what the engine file holds at each batch size, decided on held-out routing draws.

Timings are faked (so the decisions are known); the kernels still run, on the GPU or in the interpreter, and each
output is checked against the float32 reference.
"""

import json

import pytest
import torch

from moekernel import configs
from moekernel.kernel import timing
from moekernel.pipeline import verify

KEY = "E4-N64-K64-top2-bf16"
BACKEND = "cuda" if torch.cuda.is_available() else "interpret"
OTHER = dict(BLOCK_SIZE_M=32, BLOCK_SIZE_N=32, BLOCK_SIZE_K=32, GROUP_SIZE_M=1, num_warps=4, num_stages=2)


def default(M):
    return configs.default_config(M, 4, 64, 64, 2, "bf16")


def fake_times(monkeypatch, times_us):
    """time_interleaved gives each callable, in turn, the next of ``times_us`` (µs); returns the list of calls made."""
    calls = []

    def fake(fns, *, iters, backend, **_):
        found = []
        for fn in fns:
            fn()
            calls.append(fn)
            found.append(timing.Timing.from_samples([times_us[len(calls) - 1]]))
        return found

    monkeypatch.setattr(timing, "time_interleaved", fake)
    return calls


def rows_by_source(frame):
    return {row.source: row for row in frame.itertuples(index=False)}


@pytest.mark.parametrize("tuned_times, holds", [
    ([90.0, 101.0, 99.0], "tuned"),  # faster on average, at most 1% slower on a draw: within the 2% allowed
    ([80.0, 80.0, 103.0], "default"),  # much faster on two draws, but 3% slower on the third
])
def test_the_file_holds_the_default_where_the_winner_loses_on_a_held_out_draw(tmp_path, write_shard, monkeypatch,
                                                                               tuned_times, holds):
    M = 8
    write_shard(tmp_path / "bs8.parquet", KEY, M, [(OTHER, 1.0)])
    assert OTHER != default(M)
    # Sources take turns within a draw: the default (planned first), then the tuned winner.
    fake_times(monkeypatch, [t for tuned in tuned_times for t in (100.0, tuned)])
    frame = verify.verify_key("NVIDIA_H200", KEY, {M: str(tmp_path / "bs8.parquet")}, draws=3, backend=BACKEND)
    rows = rows_by_source(frame)
    assert list(rows["tuned"].draw_us) == tuned_times and list(rows["default"].draw_us) == [100.0] * 3
    assert rows["tuned"].ok and rows["default"].ok  # checked against the reference
    assert rows["tuned"].vs_default_worst == pytest.approx(min(100.0 / t for t in tuned_times))
    assert rows[holds].emitted and not rows["default" if holds == "tuned" else "tuned"].emitted
    if holds == "default":
        assert "tuned was 1.030x its time on a held-out draw" in rows["default"].note


def test_sources_with_the_same_config_are_timed_once(tmp_path, write_shard, monkeypatch):
    # The winner is the default config: one measurement per draw serves both rows, and the file holds the winner.
    M = 8
    write_shard(tmp_path / "bs8.parquet", KEY, M, [(default(M), 1.0)])
    calls = fake_times(monkeypatch, [100.0, 102.0, 98.0])
    frame = verify.verify_key("NVIDIA_H200", KEY, {M: str(tmp_path / "bs8.parquet")}, draws=3, backend=BACKEND)
    rows = rows_by_source(frame)
    assert len(calls) == 3
    assert list(rows["tuned"].draw_us) == list(rows["default"].draw_us) == [100.0, 102.0, 98.0]
    assert json.loads(rows["tuned"].config) == default(M)
    assert rows["tuned"].emitted and rows["tuned"].vs_default_worst == 1.0


@pytest.mark.parametrize("extended_times, own_file_holds_it", [
    ([80.0, 82.0, 81.0], True),  # faster on every draw than what the engine file holds
    ([80.0, 80.0, 103.0], False),  # faster on average, 3% slower on one draw
])
def test_moekernels_own_file_holds_a_split_k_winner_only_where_it_holds_up(tmp_path, write_shard, monkeypatch,
                                                                          extended_times, own_file_holds_it):
    M = 8
    split = {**OTHER, "SPLIT_K": 2}
    write_shard(tmp_path / "bs8.parquet", KEY, M, [(OTHER, 1.0), (split, 0.8)], winner=0, extended=1)
    # Per draw: default, tuned, extended (the order sources take turns in).
    fake_times(monkeypatch, [t for ext in extended_times for t in (100.0, 90.0, ext)])
    frame = verify.verify_key("NVIDIA_H200", KEY, {M: str(tmp_path / "bs8.parquet")}, draws=3, backend=BACKEND)
    rows = rows_by_source(frame)
    assert json.loads(rows["extended"].config) == split and rows["extended"].ok  # it ran, checked
    assert rows["tuned"].emitted  # the engine file's choice is unchanged by it
    assert bool(rows["extended"].emitted) == own_file_holds_it
    assert rows["extended"].vs_default == pytest.approx(100.0 / (sum(extended_times) / 3))
    if not own_file_holds_it:
        assert "moekernel's own file holds the tuned config" in rows["extended"].note
