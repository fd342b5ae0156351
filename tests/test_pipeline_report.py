"""moekernel.pipeline.report: plots from a database of GPU-like comparisons (no GPU needed)."""

from __future__ import annotations

import pandas as pd
import pytest

from moekernel.pipeline import database, report
from moekernel.shapes import KernelShape

KEY = "E8-N7168-K4096-top2-bf16"


def test_roofline_floor_of_mixtral_on_h200():
    shape = KernelShape.from_key(KEY)
    # M=1 reads two experts' weights: 2 * 3 * 7168 * 4096 * 2 bytes at 4.2 TB/s, about 84 us.
    assert report.roofline_floor_us(shape, 1, "NVIDIA_H200") == pytest.approx(84, rel=0.01)
    # Large M is compute bound: 6 * M * topk * N * K flops at 797 TFLOP/s.
    assert report.roofline_floor_us(shape, 65536, "NVIDIA_H200") == pytest.approx(
        6 * 65536 * 2 * 7168 * 4096 / 797e12 * 1e6, rel=0.01)
    assert report.roofline_floor_us(shape, 1, "cpu-interpreter") is None


def test_report_from_gpu_rows(tmp_path, write_shard):
    shard = write_shard(tmp_path / "bs1.parquet", KEY, 1, [(dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=64, BLOCK_SIZE_K=64,
                                                                 GROUP_SIZE_M=1, num_warps=4, num_stages=3), 100.0)])
    rows = [{"key": KEY, "batch_size": m, "source": src, "time_us": t * m ** 0.5, "rel_error": 1e-3, "ok": True,
             "device": "NVIDIA_H200", "backend": "cuda"}
            for m in (1, 16, 256) for src, t in (("tuned", 100.0), ("default", 120.0), ("baseline", 110.0))]
    pd.DataFrame(rows).reindex(columns=list(database.COMPARISONS_SCHEMA)).to_parquet(tmp_path / "verify.parquet")
    db = database.build(tmp_path / "tuning.duckdb", [shard], [], [tmp_path / "verify.parquet"])
    paths = report.make_report(db, tmp_path / "report")
    assert all(p.stat().st_size > 0 for p in paths.values())
    table = pd.read_csv(paths["table"])
    assert len(table) == 9 and set(table["source"]) == {"tuned", "default", "baseline"}
