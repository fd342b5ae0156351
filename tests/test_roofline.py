"""moekernel.roofline: the one floor model, its arithmetic, and that the benchmark and the report agree on it."""

import json

import pytest
import torch

from moekernel import roofline
from moekernel.kernel.testing import meta_inputs
from moekernel.pipeline import report
from moekernel.shapes import KernelShape

MIXTRAL = KernelShape(8, 7168, 4096, 2, "bf16")


def test_roofline_memory_bound_at_batch_one():
    r = roofline.estimate(MIXTRAL, 1, 2, bandwidth=4.2e12, peak=797e12)
    # two experts' w1 [2N, K] + w2 [K, N] in bf16, one token in and out
    assert r["bytes"] == 2 * 3 * 7168 * 4096 * 2 + 2 * 4096 * 2 == 352_337_920
    assert r["flops"] == 2 * 1 * 2 * 3 * 7168 * 4096 == 352_321_536
    assert r["bound"] == "memory"
    assert r["floor_us"] == pytest.approx(352_337_920 / 4.2e12 * 1e6)  # ~83.9 µs
    assert r["compute_us"] == pytest.approx(352_321_536 / 797e12 * 1e6)


def test_roofline_compute_bound_at_large_batch_and_no_floor_without_ceilings():
    r = roofline.estimate(MIXTRAL, 4096, 8, bandwidth=4.2e12, peak=797e12)
    assert r["bytes"] == 8 * 3 * 7168 * 4096 * 2 + 2 * 4096 * 4096 * 2
    assert r["bound"] == "compute"
    assert r["floor_us"] == pytest.approx(2 * 4096 * 2 * 3 * 7168 * 4096 / 797e12 * 1e6)
    empty = roofline.estimate(MIXTRAL, 4096, 8, bandwidth=None, peak=797e12)
    assert empty["floor_us"] is None and empty["bound"] is None and empty["bytes"] == r["bytes"]


def test_weight_bytes_count_one_byte_weights_and_their_scales():
    assert roofline.weight_bytes_per_expert(MIXTRAL) == 3 * 7168 * 4096 * 2
    fp8 = KernelShape(8, 7168, 4096, 2, "fp8_w8a8")
    assert roofline.weight_bytes_per_expert(fp8) == 3 * 7168 * 4096 + 2 * 4  # one float32 scale per tensor
    w8a16 = KernelShape(8, 7168, 4096, 2, "int8_w8a16")
    assert roofline.weight_bytes_per_expert(w8a16) == 3 * 7168 * 4096 + 4 * (2 * 7168 + 4096)
    block = KernelShape(256, 256, 7168, 8, "fp8_w8a8", (128, 128))
    # w1 [512, 7168]: 4 x 56 blocks; w2 [7168, 256]: 56 x 2 blocks
    assert roofline.weight_bytes_per_expert(block) == 3 * 256 * 7168 + 4 * (4 * 56 + 56 * 2)


def test_peak_per_dtype():
    c = roofline.Ceilings(bandwidth=4.2e12, bf16_flops=797e12, fp8_flops=1466e12)
    assert [c.peak(d) for d in ("bf16", "fp16", "int8_w8a16", "fp8_w8a8", "int8_w8a8")] == [797e12] * 3 + [1466e12] * 2


def test_hit_experts_counts_distinct_routed_experts():
    assert roofline.hit_experts(torch.tensor([[0, 1], [1, 3], [0, 3]]), 4) == 3
    assert roofline.hit_experts(torch.tensor([[2, -1], [2, 2]]), 4) == 1  # -1: not a local expert
    assert roofline.hit_experts(torch.arange(16).reshape(8, 2) % 8, 8) == 8



@pytest.mark.parametrize("key", ["E8-N7168-K4096-top2-bf16", "E8-N7168-K4096-top2-fp8_w8a8",
                                 "E8-N7168-K4096-top2-int8_w8a8-perchannel", "E8-N7168-K4096-top2-int8_w8a16",
                                 "E256-N256-K7168-top8-fp8_w8a8-block128x128"])
def test_weight_bytes_are_what_the_kernel_reads(key):
    """The floor's weight bytes, counted without torch, equal the bytes of the tensors the kernel gets."""
    shape = KernelShape.from_key(key)
    i = meta_inputs(shape, 1)
    tensors = [t for t in (i.w1, i.w2, i.w1_scale, i.w2_scale) if t is not None]
    assert roofline.weight_bytes_per_expert(shape) * shape.E == sum(t.numel() * t.element_size() for t in tensors)


def test_bench_and_report_compute_the_same_floor(tmp_path):
    """A benchmark run with the H200's ceilings given, and the report's floor for the same batch sizes and experts
    hit: one number each time."""
    from moekernel.bench import cli

    out = tmp_path / "bench.json"
    h200 = roofline.KNOWN_CEILINGS["NVIDIA_H200"]
    assert cli.main(["--key", "E4-N64-K64-top2-fp16", "--batch-sizes", "1,16", "--skip-torch", "--iters", "1",
                     "--no-ceilings", "--bandwidth", str(h200.bandwidth / 1e12), "--peak", str(h200.bf16_flops / 1e12),
                     "--peak-fp8", str(h200.fp8_flops / 1e12), "--json", str(out)]) == 0
    shape = KernelShape.from_key("E4-N64-K64-top2-fp16")
    rows = json.loads(out.read_text())["rows"]
    assert rows and all(r["floor_us"] for r in rows)
    for r in rows:
        floor = report.roofline_floor_us(shape, r["batch_size"], "NVIDIA_H200", r["hit_experts"])
        assert floor == pytest.approx(r["floor_us"], rel=1e-9)
