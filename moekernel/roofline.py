"""The roofline floor of one fused-MoE call: the one model the benchmark and the pipeline's report both use.

bytes = the weights (and weight scales) of the experts the routing hits + M×K activations in and M×K out;
flops = 2·M·topk·3·N·K (the up GEMM's 2N outputs and the down GEMM's K, per routed token);
floor = max(bytes / bandwidth, flops / peak), with the matrix rate of the dtype's class (``DtypeInfo.peak``).

The benchmark measures the ceilings on its GPU and counts the experts its routing really hits; the report, which
has neither, takes :data:`KNOWN_CEILINGS` and the experts verify counted (or, failing that, the expected number
under uniform routing). No torch here except in :func:`hit_experts`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .shapes import KernelShape

HIDDEN_BYTES = 2  # activations in and out are bf16 or fp16 in every mode
SCALE_BYTES = 4  # weight scales are float32


@dataclass
class Ceilings:
    """What a GPU can do: bytes/s and flop/s; None where unknown."""

    bandwidth: float | None = None
    bf16_flops: float | None = None
    fp8_flops: float | None = None

    def peak(self, dtype: str) -> float | None:
        """The matrix rate a dtype's GEMMs run at (int8_w8a8: the fp8 rate stands in for the int8 tensor cores)."""
        from .dtypes import info

        return self.fp8_flops if info(dtype).peak == "fp8" else self.bf16_flops


#: Ceilings of devices the report knows, by engine device name (spaces as '_').
KNOWN_CEILINGS = {
    # Measured on this project's H200s (DESIGN.md, 2026-11-26): torch copy bandwidth and matmul throughput.
    "NVIDIA_H200": Ceilings(4.2e12, 797e12, 1466e12),
    # Datasheet figures (SXM), not measured: fractions against them read low.
    "NVIDIA_H100_80GB_HBM3": Ceilings(3.35e12, 989e12, 1979e12),
}


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def weight_bytes_per_expert(shape: KernelShape) -> int:
    """w1 [2N, K] + w2 [K, N] of one expert as stored, plus their float32 scales in the shape's layout."""
    from .dtypes import QuantMode

    N, K = shape.N, shape.K
    weights = 3 * N * K * shape.info.weight_bytes
    mode = shape.quant_mode
    if mode == QuantMode.NONE:
        scales = 0
    elif mode == QuantMode.PER_TENSOR:
        scales = 2  # one per weight tensor
    elif mode == QuantMode.BLOCK:
        bn, bk = shape.block_shape
        scales = _cdiv(2 * N, bn) * _cdiv(K, bk) + _cdiv(K, bn) * _cdiv(N, bk)
    else:  # per output channel: PER_CHANNEL, WEIGHT_ONLY
        scales = 2 * N + K
    return weights + SCALE_BYTES * scales


def expected_hit_experts(shape: KernelShape, M: int) -> float:
    """Experts hit by M tokens under uniform routing, on average: E·(1 − (1 − topk/E)^M)."""
    return shape.E * (1 - (1 - min(shape.topk, shape.E) / shape.E) ** M)


def hit_experts(topk_ids, E: int) -> int:
    """How many distinct experts the routing sends at least one token to (only their weights are read)."""
    import torch

    ids = torch.as_tensor(topk_ids).reshape(-1)
    return int(torch.unique(ids[(ids >= 0) & (ids < E)]).numel())


def estimate(shape: KernelShape, M: int, hit: float, bandwidth: float | None, peak: float | None) -> dict:
    """Bytes, flops and the floor (µs) of one call; floor and bound are None without both ceilings."""
    nbytes = hit * weight_bytes_per_expert(shape) + 2 * M * shape.K * HIDDEN_BYTES
    flops = 2 * M * shape.topk * 3 * shape.N * shape.K
    out = {"hit_experts": hit, "bytes": nbytes, "flops": flops, "memory_us": None, "compute_us": None,
           "floor_us": None, "bound": None}
    if bandwidth:
        out["memory_us"] = nbytes / bandwidth * 1e6
    if peak:
        out["compute_us"] = flops / peak * 1e6
    if bandwidth and peak:
        memory_bound = out["memory_us"] >= out["compute_us"]
        out["floor_us"] = out["memory_us"] if memory_bound else out["compute_us"]
        out["bound"] = "memory" if memory_bound else "compute"
    return out


def floor_us(shape: KernelShape, M: int, hit: float, ceilings: Ceilings) -> float | None:
    """The fastest one call could be, in microseconds (None without both ceilings)."""
    return estimate(shape, M, hit, ceilings.bandwidth, ceilings.peak(shape.dtype))["floor_us"]
