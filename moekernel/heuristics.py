"""Default launch configs for shapes and batch sizes nobody has tuned.

The rule follows how the tuned tables move with the tokens each expert receives (M * topk / E): small row
blocks and deep K steps while the GEMMs are weight-bandwidth bound, then large square-ish tiles once they are
compute bound. It is checked against the engines' own default (``engine_default_config``) in BENCHMARKS.md.
"""

from __future__ import annotations

from .dtypes import info as dtype_info
from .launch_params import PARAMS  # noqa: F401 - importers of PARAMS from here (the pipeline's emit) keep working

#: Opt-in shared memory per block on Hopper (H100/H200): the limit when the device cannot be asked, and the one the
#: interpreter prunes with, so pruning on a CPU behaves as on the GPU the results are meant for.
HOPPER_SMEM_BYTES = 232448


def smem_upper_bound(config: dict, a_bytes: int, b_bytes: int) -> int:
    """num_stages full copies of the A and B tiles: more than any launch needs, so a default trimmed to fit it
    never fails. (Pruning uses moekernel.kernel.moe.smem_bytes, the tighter estimate, to keep every config that
    may run.)"""
    bm, bn, bk = config["BLOCK_SIZE_M"], config["BLOCK_SIZE_N"], config["BLOCK_SIZE_K"]
    return config["num_stages"] * (bm * bk * a_bytes + bk * bn * b_bytes)


def default_config(M: int, E: int, N: int, K: int, topk: int, dtype: str | None = None,
                   block_shape=None) -> dict:
    """Our default for (M, shape): see the module docstring."""
    tokens_per_expert = M * topk / max(E, 1)
    facts = dtype_info(dtype or "bf16")  # None: unquantized
    one_byte = facts.act_bytes == 1
    if tokens_per_expert <= 8:
        cfg = dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=128, BLOCK_SIZE_K=128, GROUP_SIZE_M=1, num_warps=4, num_stages=4)
    elif tokens_per_expert <= 24:
        cfg = dict(BLOCK_SIZE_M=32, BLOCK_SIZE_N=128, BLOCK_SIZE_K=128, GROUP_SIZE_M=1, num_warps=4, num_stages=4)
    elif tokens_per_expert <= 96:
        cfg = dict(BLOCK_SIZE_M=64, BLOCK_SIZE_N=128, BLOCK_SIZE_K=128, GROUP_SIZE_M=8, num_warps=4, num_stages=3)
    else:
        cfg = dict(BLOCK_SIZE_M=128, BLOCK_SIZE_N=256, BLOCK_SIZE_K=64, GROUP_SIZE_M=16, num_warps=8, num_stages=4)
    if one_byte:
        cfg["BLOCK_SIZE_K"] *= 2  # same bytes per stage
    if block_shape is not None:
        # A K step must stay inside one quantization group.
        cfg["BLOCK_SIZE_K"] = min(cfg["BLOCK_SIZE_K"], _largest_pow2_divisor(block_shape[1]))
    # Never wider or deeper than the problem needs (N is the expert's intermediate size, w1 has 2N rows).
    cfg["BLOCK_SIZE_K"] = max(16, min(cfg["BLOCK_SIZE_K"], _pow2_at_least(min(K, N))))
    cfg["BLOCK_SIZE_N"] = max(32, min(cfg["BLOCK_SIZE_N"], _pow2_at_least(min(2 * N, K))))
    while cfg["num_stages"] > 2 and smem_upper_bound(cfg, facts.act_bytes, facts.weight_bytes) > HOPPER_SMEM_BYTES:
        cfg["num_stages"] -= 1
    return cfg


def engine_default_config(M: int, E: int, N: int, K: int, topk: int, dtype: str | None = None,
                          block_shape=None) -> dict:
    """The default vLLM's fused-MoE kernel falls back to when it has no tuned file (for comparison only)."""
    if dtype == "fp8_w8a8" and block_shape is not None:
        return dict(BLOCK_SIZE_M=64, BLOCK_SIZE_N=block_shape[0], BLOCK_SIZE_K=block_shape[1], GROUP_SIZE_M=32,
                    num_warps=4, num_stages=3)
    if M <= E:
        return dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=32, BLOCK_SIZE_K=64, GROUP_SIZE_M=1, num_warps=4, num_stages=3)
    return dict(BLOCK_SIZE_M=64, BLOCK_SIZE_N=64, BLOCK_SIZE_K=32, GROUP_SIZE_M=8, num_warps=4, num_stages=3)


def _pow2_at_least(x: int) -> int:
    p = 1
    while p < x:
        p *= 2
    return p


def _largest_pow2_divisor(x: int) -> int:
    return x & -x
