"""The timing helper."""

import pytest

from moekernel.kernel.timing import (INTERPRET_MAX_ITERS, REPLAY_US, Timing, calls_for, time_callable,
                                     time_interleaved)


def test_timing_from_samples_median_and_spread():
    t = Timing.from_samples([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (t.median_us, t.iters) == (3.0, 5)
    assert t.p20_us == pytest.approx(1.8) and t.p80_us == pytest.approx(4.2)


def test_interpreter_timing_calls_few_times():
    calls = []
    t = time_callable(lambda: calls.append(1), iters=20, backend="interpret")
    assert len(calls) == t.iters == INTERPRET_MAX_ITERS
    assert 0 <= t.p20_us <= t.median_us <= t.p80_us
    time_callable(lambda: calls.append(1), iters=1, backend="interpret")
    assert len(calls) == INTERPRET_MAX_ITERS + 1


def test_errors_propagate_and_arguments_are_checked():
    def boom():
        raise RuntimeError("kernel failed")

    with pytest.raises(RuntimeError, match="kernel failed"):
        time_callable(boom, backend="interpret")
    with pytest.raises(ValueError):
        time_callable(lambda: None, iters=0, backend="interpret")
    with pytest.raises(ValueError):
        time_callable(lambda: None, backend="rocm")


def test_callables_compared_take_turns_and_one_failure_spares_the_others():
    order = []

    def boom():
        raise RuntimeError("kernel failed")

    a, b = (lambda: order.append("a")), (lambda: order.append("b"))
    found = time_interleaved([a, boom, b], iters=INTERPRET_MAX_ITERS, turn=1, backend="interpret")
    # Every callable's first sample (taken as it is set up), then turns of one, each round starting one callable
    # later: neither runs all its samples before the other starts, and neither is always first.
    assert INTERPRET_MAX_ITERS == 2 and order == ["a", "b", "b", "a"]
    assert isinstance(found[1], RuntimeError) and str(found[1]) == "kernel failed"
    assert [t.iters for t in (found[0], found[2])] == [INTERPRET_MAX_ITERS] * 2
    assert time_interleaved([], backend="interpret") == []
    with pytest.raises(ValueError):
        time_interleaved([a], turn=0, backend="interpret")
    with pytest.raises(ValueError):
        time_interleaved([a], backend="rocm")


def test_long_calls_are_captured_fewer_times_per_graph():
    # Short calls fill the graph (launch overhead hidden); a prefill-sized call needs no company to hide it.
    assert calls_for(5.0, 10) == 10
    assert calls_for(REPLAY_US / 3 + 1, 10) == 3
    assert calls_for(REPLAY_US * 3, 10) == 1
    assert calls_for(0.0, 10) == 10
    assert calls_for(5.0, 4) == 4


@pytest.fixture
def cuda_torch():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    return torch


@pytest.mark.cuda
def test_cuda_graph_timing_scales_with_work(cuda_torch):
    torch = cuda_torch
    a = torch.randn(2048, 2048, device="cuda", dtype=torch.float16)
    out = torch.empty_like(a)
    small = time_callable(lambda: torch.matmul(a[:256], a, out=out[:256]), iters=20, backend="cuda")
    large = time_callable(lambda: torch.matmul(a, a, out=out), iters=20, backend="cuda")
    assert small.iters == large.iters == 20
    assert 0 < small.median_us < large.median_us
    assert small.p20_us <= small.median_us <= small.p80_us
    # Each replay is long enough to hide its launch overhead, and no longer than it needs to be.
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)  # about 2 ms a call: one per replay
    huge = time_callable(lambda: torch.matmul(b, b), iters=5, backend="cuda")
    assert huge.calls_per_replay == 1 and small.calls_per_replay == 10
    for t in (small, large, huge):
        assert t.median_us * t.calls_per_replay >= REPLAY_US * 0.5 or t.calls_per_replay == 10
        assert t.calls_per_replay == 1 or t.median_us * (t.calls_per_replay - 1) < REPLAY_US * 1.5


@pytest.mark.cuda
def test_cuda_interleaved_timing_matches_one_at_a_time_and_reports_failures(cuda_torch):
    torch = cuda_torch
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
    out = torch.empty_like(a)
    small, large = (lambda: torch.matmul(a[:512], a, out=out[:512])), (lambda: torch.matmul(a, a, out=out))

    def boom():
        raise RuntimeError("kernel failed")

    t_small, failed, t_large = time_interleaved([small, boom, large], iters=20, turn=3)
    assert isinstance(failed, RuntimeError)
    assert t_small.iters == t_large.iters == 20 and 0 < t_small.median_us < t_large.median_us
    alone = time_callable(large, iters=20)
    assert alone.median_us == pytest.approx(t_large.median_us, rel=0.25)  # the same method, turns apart
