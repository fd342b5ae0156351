"""Compiling candidates: failures become results, in-process and in spawned workers."""

import os


import importlib
import sys
import time
import types

import pytest

from triton.compiler.errors import CompilationError
from triton.runtime.errors import OutOfResources

from moekernel.shapes import KernelShape
from moekernel.tuning import compile as comp

SHAPE = KernelShape(4, 64, 64, 2, "fp16")


def _cfg(bn):
    return {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": bn, "BLOCK_SIZE_K": 64, "GROUP_SIZE_M": 1, "num_warps": 4,
            "num_stages": 2}


def fake_compile_config(shape, M, config, gemm="both", device=None):
    """Stands in for moekernel.kernel.moe.compile_config: fails by BLOCK_SIZE_N."""
    bn = config["BLOCK_SIZE_N"]
    if bn == 64:
        raise OutOfResources(300000, 232448, "shared memory")
    if bn == 128:
        raise CompilationError("src", None, "bad tile")
    if bn == 256:
        raise RuntimeError("something else")
    if bn == 512:
        os._exit(3)  # a crash, not an exception: the worker dies
    time.sleep(0.01)


def pool_compile(shape, M, config, gemm, device=None):
    """What each spawned worker runs: the real compile_one over the fake kernel module (module level, so the
    workers can unpickle it; a worker is thrown away afterwards, so replacing its module is harmless)."""
    sys.modules["moekernel.kernel.moe"] = types.SimpleNamespace(compile_config=fake_compile_config)
    return comp.compile_one(shape, M, config, gemm, device)


def test_classify_error():
    assert comp.classify_error(OutOfResources(1, 0, "shared memory"), "compile_error") == "out_of_resources"
    assert comp.classify_error(RuntimeError("out of resource: shared memory"), "runtime_error") == "out_of_resources"
    assert comp.classify_error(CompilationError("s", None, "x"), "runtime_error") == "compile_error"
    assert comp.classify_error(RuntimeError("x"), "runtime_error") == "runtime_error"


def test_error_text_is_bounded():
    text = comp.error_text(ValueError("x" * 100000))
    assert text.startswith("ValueError: x") and len(text) <= comp.MAX_ERROR_CHARS


def test_in_process_compile_records_each_failure(monkeypatch):
    monkeypatch.setattr(importlib.import_module("moekernel.kernel.moe"), "compile_config", fake_compile_config)
    items = [(_cfg(bn), "both") for bn in (32, 64, 128, 256)]
    results = comp.compile_configs(SHAPE, 8, items, jobs=1)
    assert [r.status for r in results] == ["ok", "out_of_resources", "compile_error", "compile_error"]
    assert results[0].error is None and results[0].seconds > 0
    assert "OutOfResources" in results[1].error and "something else" in results[3].error
    assert all(r.seconds is not None for r in results)


def test_worker_pool_compiles_in_order_and_blames_only_the_crash():
    items = [(_cfg(512), "both")] + [(_cfg(bn), gemm) for bn in (32, 64, 128) for gemm in ("up", "down")]
    results = comp.compile_configs(SHAPE, 8, items, jobs=2, fn=pool_compile)
    assert len(results) == len(items)
    assert results[0].status == "compile_error" and "died" in results[0].error
    # Every other config gets its own outcome, whether or not the crash took its first pool down.
    expected = ["ok", "ok", "out_of_resources", "out_of_resources", "compile_error", "compile_error"]
    assert [r.status for r in results[1:]] == expected
    assert not any("died" in (r.error or "") for r in results[1:])


def test_default_jobs_is_bounded():
    assert 1 <= comp.default_jobs() <= 16


@pytest.mark.cuda
def test_precompile_fills_the_cache_for_the_tuner():
    from moekernel.tuning import precompile

    space = {"BLOCK_SIZE_M": [16, 32], "BLOCK_SIZE_N": [32, 64], "BLOCK_SIZE_K": [64], "GROUP_SIZE_M": [1],
             "num_warps": [4], "num_stages": [2, 3]}
    frame = precompile(SHAPE, 32, space=space, split=True, backend="cuda", jobs=2, progress=False)
    assert len(frame) == 16 and set(frame["gemm"]) == {"up", "down"}
    assert (frame["status"] == "ok").all() and frame["compile_s"].gt(0).all()


def worker_pid(shape, M, config, gemm, device=None):
    """A compile that reports which process ran it (in the error field, which tests may use freely)."""
    return comp.CompileResult("ok", 0.0, str(os.getpid()))


def test_a_shared_pool_keeps_its_workers_and_replaces_them_after_a_crash():
    items = [(_cfg(bn), gemm) for bn in (32, 48, 96) for gemm in ("up", "down")]
    with comp.CompilePool(2) as pool:
        first = comp.compile_configs(SHAPE, 8, items, fn=worker_pid, pool=pool)
        second = comp.compile_configs(SHAPE, 8, items, fn=worker_pid, pool=pool)
        workers = {r.error for r in first + second}
        assert len(workers) <= 2 and str(os.getpid()) not in workers  # the same two workers served both calls

        crashed = comp.compile_configs(SHAPE, 8, [(_cfg(512), "both"), *items[:2]], fn=pool_compile, pool=pool)
        assert crashed[0].status == "compile_error" and "died" in crashed[0].error
        assert [r.status for r in crashed[1:]] == ["ok", "ok"]

        after = comp.compile_configs(SHAPE, 8, items, fn=worker_pid, pool=pool)
        assert all(r.status == "ok" for r in after)
        assert not {r.error for r in after} & workers  # fresh workers, not the broken pool's
