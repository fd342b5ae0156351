"""Default launch configs for shapes and batch sizes nobody has tuned.

The rule follows how the tuned tables move with the tokens each expert receives (M * topk / E): small row
blocks and deep K steps while the GEMMs are weight-bandwidth bound, then large square-ish tiles once they are
compute bound. It is checked against the engines' own default (``engine_default_config``) in BENCHMARKS.md.
With ``extended=True`` it also loads tiles by TMA (:func:`default_tma`) and may split the down GEMM's reduction
(SPLIT_K, :func:`down_split_k`), parameters the engines' files cannot hold.

The launch parameters themselves, and the values the kernel accepts, are moekernel.launch_params'.
"""

from __future__ import annotations

from .dtypes import info as dtype_info
from .launch_params import DOWN_ONLY_PARAMS, TMA_BOTH, TMA_OFF, TMA_WEIGHTS, tma_problem

#: Streaming multiprocessors of an H100/H200 SXM: the wave of programs the split-K rule fills.
HOPPER_SMS = 132
#: The fewest K steps a split-K program reduces, so that its pipelined loads still overlap.
MIN_SPLIT_K_STEPS = 4
#: The most the split's extra traffic (float32 partials added, zeroed, read back) may be of the weights' bytes.
MAX_SPLIT_K_TRAFFIC = 1 / 16

#: Tokens per expert from which the default loads activations by TMA too (16-bit, wide experts: see default_tma).
TMA_BOTH_TOKENS_PER_EXPERT = 256
TMA_BOTH_MIN_N = 2048

#: Opt-in shared memory per block on Hopper (H100/H200): the limit when the device cannot be asked, and the one the
#: interpreter prunes with, so pruning on a CPU behaves as on the GPU the results are meant for.
HOPPER_SMEM_BYTES = 232448


def smem_upper_bound(config: dict, a_bytes: int, b_bytes: int) -> int:
    """num_stages full copies of the A and B tiles: more than any launch needs, so a default trimmed to fit it
    never fails. (Pruning uses moekernel.kernel.moe.smem_bytes, the tighter estimate, to keep every config that
    may run.)"""
    bm, bn, bk = config["BLOCK_SIZE_M"], config["BLOCK_SIZE_N"], config["BLOCK_SIZE_K"]
    return config["num_stages"] * (bm * bk * a_bytes + bk * bn * b_bytes)


def is_split(config) -> bool:
    """Whether ``config`` is {"up": .., "down": ..} rather than one dict for both GEMMs."""
    return isinstance(config, dict) and ("up" in config or "down" in config)


def up_down(config) -> tuple:
    """The (up, down) parts of a config, unvalidated: a split config's two dicts, or one dict for both GEMMs whose
    down-only parameters go to the down GEMM alone."""
    if not is_split(config):
        up = {k: v for k, v in config.items() if k not in DOWN_ONLY_PARAMS} if isinstance(config, dict) else config
        return up, config
    if set(config) != {"up", "down"}:
        raise ValueError(f"a split config has exactly the keys 'up' and 'down'; got {sorted(config)}")
    return config["up"], config["down"]


def default_config(M: int, E: int, N: int, K: int, topk: int, dtype: str | None = None,
                   block_shape=None, *, extended: bool = False) -> dict:
    """Our default for (M, shape): see the module docstring. The six engine parameters, for both GEMMs, which an
    engine file or vLLM's kernel can take; ``extended=True``: {"up": .., "down": {.., "SPLIT_K": s}} where
    :func:`down_split_k` splits the down GEMM, else the same six parameters (what moekernel's lookup falls back
    to)."""
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
    if not extended:
        return cfg
    cfg["TMA"] = default_tma(M, E, N, K, topk, dtype)
    split_k = down_split_k(M, E, N, K, topk, cfg, dtype)
    if split_k == 1:
        return cfg
    return {"up": cfg, "down": dict(cfg, SPLIT_K=split_k)}


def default_tma(M: int, E: int, N: int, K: int, topk: int, dtype: str | None = None) -> int:
    """TMA for both GEMMs: the weights by TMA wherever their rows allow it; the activations too for 16-bit
    dtypes once each expert gets TMA_BOTH_TOKENS_PER_EXPERT tokens and N is at least TMA_BOTH_MIN_N.

    Measured on the H200 (benchmarks/tma_probe.py, BENCHMARKS.md 2026-12-01 third session), each against the same
    six parameters without TMA: weights by TMA 1.00-1.05x at every size and shape probed, up to 1.16x at large M;
    activations too 1.14-1.26x for Mixtral bf16 at M >= 1024, but slower for fp8 and for Qwen3-30B-A3B (N=384),
    where gathering the activations into expert order (a pass over M x topk x K) weighs against GEMMs only 2N
    wide."""
    facts = dtype_info(dtype or "bf16")
    wide_16bit = facts.act_bytes == 2 and N >= TMA_BOTH_MIN_N
    tma = TMA_BOTH if wide_16bit and M * topk / max(E, 1) >= TMA_BOTH_TOKENS_PER_EXPERT else TMA_WEIGHTS
    for choice in (tma, TMA_WEIGHTS):
        if tma_problem(choice, "both", N, K, facts.act_bytes, facts.weight_bytes) is None:
            return choice
    return TMA_OFF


def down_split_k(M: int, E: int, N: int, K: int, topk: int, down: dict, dtype: str | None = None) -> int:
    """SPLIT_K for the down GEMM ([M·topk, N] × [N, K] per expert) under the launch config ``down``.

    The down GEMM has one program per (BLOCK_SIZE_M rows of an expert, BLOCK_SIZE_N of K's columns); at small M
    that is too few to keep every SM streaming weights. The rule takes the largest power of two that keeps the
    grid within one wave of HOPPER_SMS programs (a second, partial wave would cost what the split saved), and
    stops where a split would reduce fewer than MIN_SPLIT_K_STEPS K steps or its extra traffic would exceed
    MAX_SPLIT_K_TRAFFIC of the weights the GEMM reads.

    Prediction for Mixtral-8x7B tp=2 (E=8, N=7168, K=4096, top-2), bf16, M=1 (not measurable here): the default
    tile 16x128x128 gives 2 experts x 32 column blocks = 64 programs on 132 SMs, each streaming 128 x 7168 x 2 B
    = 1.8 MB of one expert's weights, 117 MB in all (a 24 us floor at 4.8 TB/s). SPLIT_K=2 gives 128 programs of
    28 K steps each, 0.9 MB apiece; the extra traffic is 2 rows x 4096 x 4 B x (2 atomic adds + 1 zeroing + 1
    read by the sum) = 128 KB (0.1% of the weights) and one zero-fill launch. With the weight stream spread over 128
    instead of 64 SMs the down GEMM should take ~35-45% less (toward the floor), the whole call ~15-25% less (the
    up GEMM, 235 MB over 224 programs, is unchanged); vLLM's split-K PR measured -29% at batch 1 on an H200.
    Where it applies among the catalog's shapes: M=1 only, and only where E/topk is small (Mixtral-8x7B, Jamba,
    Qwen1.5-MoE, Llama-4-Scout); expected grids of 67 to 132 programs are not split (two half-size waves take
    as long as one).
    """
    facts = dtype_info(dtype or "bf16")
    programs, k_steps, hit = down_grid(M, E, N, K, topk, down)
    rows = M * topk
    weight_bytes = hit * N * K * facts.weight_bytes

    def fits(split: int) -> bool:
        extra_bytes = rows * K * 4 * (split + 2)  # float32 partials: added split times, zeroed, read by the sum
        return (programs * split <= HOPPER_SMS and k_steps // split >= MIN_SPLIT_K_STEPS
                and extra_bytes <= MAX_SPLIT_K_TRAFFIC * weight_bytes)

    split = 1
    while fits(2 * split):
        split *= 2
    return split


def down_grid(M: int, E: int, N: int, K: int, topk: int, down: dict) -> tuple[float, int, float]:
    """The down GEMM under ``down`` at M tokens, as uniform routing makes it on average: (programs, K steps of
    BLOCK_SIZE_K along its reduction N, experts hit)."""
    hit = E * (1 - (1 - min(topk, E) / E) ** M)
    m_tiles = hit * -(-(M * topk / hit) // down["BLOCK_SIZE_M"])
    return m_tiles * -(-K // down["BLOCK_SIZE_N"]), -(-N // down["BLOCK_SIZE_K"]), hit


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
