"""Test set-up shared by every test module.

Without a CUDA device the kernels run in Triton's CPU interpreter, which must be switched on before moekernel's
kernels are defined, so it happens here, before any test module imports moekernel.
"""

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if HAS_CUDA else "cpu"


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip)


@pytest.fixture
def device():
    """Where kernels run: the GPU when there is one, else the CPU through the Triton interpreter."""
    return DEVICE


@pytest.fixture
def write_shard():
    """Write a tuning shard with the tuner's exact schema, for tests of what reads shards.

    ``write_shard(path, key, batch_size, [(config, time_us), ...], winner=0, extended=None, **column_overrides)``;
    a candidate given as (config, None, status) is a failure with that status; ``extended``: the index of the
    extended winner (a config with SPLIT_K), if any.
    """
    from datetime import datetime, timezone

    from moekernel.launch_params import EXTENDED_PARAMS
    from moekernel.shapes import KernelShape
    from moekernel.tuning import shard

    def write(path, key, batch_size, candidates, *, winner=0, extended=None, gemm="both", **overrides):
        s = KernelShape.from_key(key)
        base = {
            "key": key, "dtype": s.dtype, "E": s.E, "N": s.N, "K": s.K, "topk": s.topk,
            "block_shape": f"{s.block_shape[0]}x{s.block_shape[1]}" if s.block_shape else None,
            "batch_size": batch_size, **EXTENDED_PARAMS, "gemm": gemm, "extended_winner": False, "p20_us": None,
            "p80_us": None, "iters": 20, "compile_s": 0.5,
            "draw_us": None, "mean_us": None, "worst_us": None, "settings": None, "seeded_from": None,
            "verified": False, "device": "NVIDIA H100 80GB HBM3", "backend": "cuda", "triton_version": "3.6.0",
            "torch_version": "2.11.0", "moekernel_version": "0.1.0", "kernel_hash": "0" * 16, "routing": "uniform",
            "strategy": "exhaustive", "seed": 0, "timestamp": datetime(2026, 11, 26, tzinfo=timezone.utc),
        }  # fmt: skip
        rows = []
        for i, (config, time_us, *status) in enumerate(candidates):
            status = status[0] if status else "ok"
            rows.append({**base, **config, "status": status, "time_us": time_us,
                         "error": None if status == "ok" else f"{status} here", "winner": i == winner,
                         "verified": i in (winner, extended), "extended_winner": i == extended, **overrides})
        return shard.write_shard(path, rows)

    return write
