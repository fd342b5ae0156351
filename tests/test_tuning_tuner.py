"""The tuner end to end on a tiny shape: interpreter on CPU (the real cuda path where the kernels are compiled)."""



import importlib
import time

import pandas as pd
import pytest
import torch
from triton.runtime.errors import OutOfResources

import moekernel
from moekernel.launch_params import EXTENDED_PARAMS
from moekernel.shapes import KernelShape
from moekernel.tuning import COLUMNS, read_shard, tune
from moekernel.tuning import measure as measure_mod
from moekernel.tuning.shard import extended_rows, partial_path, to_frame
from moekernel.backend import kernels_mode

fused_moe = importlib.import_module("moekernel.kernel.moe")
SHAPE = KernelShape(4, 64, 64, 2, "fp16")
# 4 candidates survive at M=8; BLOCK_SIZE_M=32 rows are pruned (an expert never gets more than 8 tokens).
SPACE = {"BLOCK_SIZE_M": [16, 32], "BLOCK_SIZE_N": [32, 64], "BLOCK_SIZE_K": [64], "GROUP_SIZE_M": [1],
         "num_warps": [4], "num_stages": [2, 3]}
BACKEND = "cuda" if kernels_mode() == "cuda" else "interpret"
interpreter_only = pytest.mark.skipif(BACKEND != "interpret", reason="fake runners are timed as CPU sleeps")


def run(M=8, **kw):
    # One routing draw unless a test asks for more: these tests count and fake the timings of single draws.
    kw = {"strategy": "exhaustive", "space": SPACE, "iters": 1, "draws": 1, "backend": BACKEND, "jobs": 1,
          "progress": False, **kw}
    return tune(SHAPE, M, **kw)


def key(bn, stages, bm=16):
    return (bm, bn, stages)


def cfg_key(config):
    return key(config["BLOCK_SIZE_N"], config["num_stages"], config["BLOCK_SIZE_M"])


def engine_rows(frame):
    """The rows of the engines' six-parameter search (not the variants with moekernel's own parameters)."""
    return frame[~extended_rows(frame)]


def by_cfg(frame, gemm="both"):
    part = engine_rows(frame)[lambda f: f["gemm"] == gemm]
    return {key(r.BLOCK_SIZE_N, r.num_stages, r.BLOCK_SIZE_M): r for r in part.itertuples(index=False)}


def sleeper(ms):
    def runner():
        time.sleep(ms / 1000)

    return runner


def test_end_to_end_shard(tmp_path):
    out = tmp_path / "E4" / "bs8.parquet"
    frame = run(out=out)
    assert out.is_file() and not partial_path(out).exists()
    assert list(frame.columns) == list(COLUMNS)
    pd.testing.assert_frame_equal(frame, to_frame(read_shard(out)))
    assert set(frame["gemm"]) == {"both"}
    splits = frame[frame["SPLIT_K"] > 1]  # of the winner; N=64 is too short a reduction to split
    assert sorted(splits["SPLIT_K"]) == [2, 4, 8] and (splits["status"] == "pruned").all()
    # TMA 1 and 2 on the winner and the other finalists timed on every draw, and moekernel's extended default; then
    # half tiles and a persistent down GEMM on the best of those.
    tma = frame[(frame["TMA"] > 0) & (frame["PERSISTENT"] == 0) & (frame["HALF_TAIL"] == 0)]
    finalists = frame[frame["draw_us"].notna() & ~extended_rows(frame)]
    assert (tma["status"] == "ok").all() and len(tma) == 2 * len(finalists) + 1
    assert len(frame[frame["PERSISTENT"] == 1]) == len(frame[frame["HALF_TAIL"] == 1]) == 1
    frame = engine_rows(frame)
    assert len(frame) == 8
    pruned = frame[frame["status"] == "pruned"]
    assert len(pruned) == 4 and (pruned["BLOCK_SIZE_M"] == 32).all() and pruned["error"].str.contains("M=8").all()
    ok = frame[frame["status"] == "ok"]
    assert len(ok) == 4 and ok["time_us"].gt(0).all() and ok["error"].isna().all()
    assert (ok["p20_us"] <= ok["time_us"]).all() and (ok["time_us"] <= ok["p80_us"]).all()
    winners = frame[frame["winner"]]
    assert len(winners) == 1 and winners["verified"].all()
    assert winners["time_us"].iloc[0] == ok["time_us"].min()
    assert frame["verified"].sum() == 3  # the best three are checked against the reference
    assert (frame["backend"] == BACKEND).all() and (frame["batch_size"] == 8).all()
    assert (frame["key"] == SHAPE.key).all() and frame["kernel_hash"].nunique() == 1
    if BACKEND == "interpret":
        assert (frame["device"] == "cpu-interpreter").all() and frame["compile_s"].isna().all()
        assert "interpreter" in frame.attrs["summary"]
    assert "4 pruned" in frame.attrs["summary"] and "best both M16" in frame.attrs["summary"]


def test_failures_become_rows(monkeypatch):
    real = fused_moe.make_runner

    def flaky(inputs, config, gemm="both"):
        k = cfg_key(config)
        if k == key(32, 2):
            raise RuntimeError("boom at setup")
        if k == key(32, 3):
            raise OutOfResources(300000, 232448, "shared memory")
        if k == key(64, 3):
            def fails_when_run():
                raise RuntimeError("boom while timing")
            return fails_when_run
        return real(inputs, config, gemm)

    monkeypatch.setattr(fused_moe, "make_runner", flaky)
    rows = by_cfg(run())
    assert rows[key(32, 2)].status == "runtime_error" and "boom at setup" in rows[key(32, 2)].error
    assert rows[key(32, 3)].status == "out_of_resources" and "OutOfResources" in rows[key(32, 3)].error
    assert rows[key(64, 3)].status == "runtime_error" and "boom while timing" in rows[key(64, 3)].error
    assert all(pd.isna(rows[k].time_us) and pd.isna(rows[k].iters) for k in (key(32, 2), key(32, 3), key(64, 3)))
    assert rows[key(64, 2)].status == "ok" and rows[key(64, 2)].winner and rows[key(64, 2)].verified


@interpreter_only
def test_incorrect_candidate_cannot_win(monkeypatch):
    target = key(64, 2)
    real_experts = moekernel.fused_experts
    # The wrong config is also by far the fastest, so it is the first one checked.
    monkeypatch.setattr(fused_moe, "make_runner",
                        lambda inputs, config, gemm="both": sleeper(0 if cfg_key(config) == target else 20))

    def wrong_for_target(*args, config, **kw):
        out = real_experts(*args, config=config, **kw)
        return out + 1 if cfg_key(config) == target else out

    monkeypatch.setattr(moekernel, "fused_experts", wrong_for_target)
    frame = run()
    rows = by_cfg(frame)
    assert rows[target].status == "incorrect" and not rows[target].winner and not rows[target].verified
    assert "relative error" in rows[target].error
    winners = frame[frame["winner"]]
    assert len(winners) == 1 and winners["verified"].all() and cfg_key(winners.iloc[0]) != target
    assert frame["verified"].sum() == 3  # the next best were checked instead


@interpreter_only
def test_no_winner_when_every_output_is_wrong(monkeypatch):
    monkeypatch.setattr(fused_moe, "make_runner", lambda inputs, config, gemm="both": sleeper(1))
    monkeypatch.setattr(moekernel, "fused_experts", lambda *a, config, **kw: torch.full((8, 64), float("nan")))
    frame = run()
    assert not frame["winner"].any() and not frame["verified"].any()
    assert (frame["status"] == "incorrect").sum() == 4
    assert "no winner" in frame.attrs["summary"]


# Split mode, with runners that take a known time: (gemm, BLOCK_SIZE_M, BLOCK_SIZE_N) -> ms.
SPLIT_SPACE = {**SPACE, "num_stages": [2]}
# Gaps are wide: a single sleep on a busy CI machine can overshoot by milliseconds.
SPLIT_MS = {("up", 16, 32): 1, ("up", 16, 64): 80, ("up", 32, 32): 60, ("up", 32, 64): 20,
            ("down", 16, 32): 100, ("down", 16, 64): 120, ("down", 32, 32): 5, ("down", 32, 64): 40}


def split_runner(inputs, config, gemm="both"):
    return sleeper(SPLIT_MS[(gemm, config["BLOCK_SIZE_M"], config["BLOCK_SIZE_N"])])


@interpreter_only
def test_split_winners_share_block_m(monkeypatch):
    monkeypatch.setattr(fused_moe, "make_runner", split_runner)
    frame = run(M=32, split=True, space=SPLIT_SPACE)
    assert set(frame["gemm"]) == {"up", "down"} and len(engine_rows(frame)) == 8
    winners = frame[frame["winner"]].set_index("gemm")
    # The fastest up GEMM (BLOCK_SIZE_M=16, 1 ms) loses: 16 costs 1 + 100, 32 costs 20 + 5.
    assert winners.loc["up", "BLOCK_SIZE_M"] == winners.loc["down", "BLOCK_SIZE_M"] == 32
    assert (winners.loc["up", "BLOCK_SIZE_N"], winners.loc["down", "BLOCK_SIZE_N"]) == (64, 32)
    assert winners["verified"].all()


@interpreter_only
def test_split_blames_the_wrong_half(monkeypatch):
    monkeypatch.setattr(fused_moe, "make_runner", split_runner)
    real_experts = moekernel.fused_experts

    def wrong_down(*args, config, **kw):
        out = real_experts(*args, config=config, **kw)
        return out * 2 if config["down"]["BLOCK_SIZE_M"] == 32 and config["down"]["BLOCK_SIZE_N"] == 32 else out

    monkeypatch.setattr(moekernel, "fused_experts", wrong_down)
    frame = run(M=32, split=True, space=SPLIT_SPACE)
    down, up = by_cfg(frame, "down"), by_cfg(frame, "up")
    assert down[(32, 32, 2)].status == "incorrect" and "split pair" in down[(32, 32, 2)].error
    assert up[(32, 64, 2)].status == "ok" and up[(32, 64, 2)].winner and up[(32, 64, 2)].verified
    assert down[(32, 64, 2)].winner and down[(32, 64, 2)].verified


@interpreter_only
def test_resume_after_a_kill(tmp_path, monkeypatch):
    out = tmp_path / "bs8.parquet"
    monkeypatch.setattr(measure_mod, "CHECKPOINT_EVERY", 1)
    seen = []

    def killed_at_third(inputs, config, gemm="both"):
        part = partial_path(out)
        seen.append(len(read_shard(part)) if part.exists() else 0)
        if len(seen) == 3:
            raise KeyboardInterrupt  # stands in for the job being killed mid-run
        return sleeper(1)

    monkeypatch.setattr(fused_moe, "make_runner", killed_at_third)
    with pytest.raises(KeyboardInterrupt):
        run(out=out)
    assert seen == [0, 1, 2]  # a checkpoint after every timed candidate
    assert not out.exists()  # nothing that looks like a finished shard
    before = read_shard(partial_path(out)).to_pandas()
    assert len(before) == 2 and (before["status"] == "ok").all()

    timed = []
    monkeypatch.setattr(fused_moe, "make_runner",
                        lambda inputs, config, gemm="both": timed.append(config) or sleeper(1))
    frame = run(out=out)
    engine = lambda configs: [c for c in configs if not set(EXTENDED_PARAMS) & set(c)]  # noqa: E731
    assert len(engine(timed)) == 2  # only the two candidates the killed job had not timed
    assert out.exists() and not partial_path(out).exists()
    merged = engine_rows(frame).merge(before, on=["BLOCK_SIZE_M", "BLOCK_SIZE_N", "num_stages"], suffixes=("", "_before"))
    assert len(merged) == 2 and (merged["time_us"] == merged["time_us_before"]).all()
    assert (merged["timestamp"] == merged["timestamp_before"]).all()
    assert frame["winner"].sum() == 1

    timed.clear()
    run(out=tmp_path / "other.parquet", seed=1)  # other settings, other file: everything timed afresh
    assert len(engine(timed)) == 4


@interpreter_only
def test_fast_strategy_seeded_from_a_neighbour(tmp_path, monkeypatch):
    space = {**SPACE, "BLOCK_SIZE_M": [16], "num_stages": [2, 3, 4, 5]}  # 8 configs
    ms = lambda config: 10 * config["num_stages"] + 20 * config["BLOCK_SIZE_N"] // 32  # noqa: E731
    monkeypatch.setattr(fused_moe, "make_runner", lambda inputs, config, gemm="both": sleeper(ms(config)))
    first = run(M=8, out=tmp_path / "bs8.parquet", space=space)
    assert cfg_key(first[first["winner"]].iloc[0]) == key(32, 2)
    frame = run(M=16, strategy="fast:radius=1", space=space, iters=2, seed_from=[tmp_path / "bs8.parquet"])
    assert (frame["strategy"] == "fast:radius=1").all()
    skipped = frame[frame["error"].fillna("").str.startswith("fast strategy")]
    assert len(skipped) > 0 and (skipped["status"] == "pruned").all()
    rows = by_cfg(frame)
    assert rows[key(32, 2)].winner  # the seed's neighbourhood holds the best
    with pytest.raises(ValueError, match="not a shard of"):
        tune(KernelShape(8, 64, 64, 2, "fp16"), 8, space=space, seed_from=[tmp_path / "bs8.parquet"],
             backend=BACKEND, progress=False)
