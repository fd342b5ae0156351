"""Private Triton kernels of the fused MoE. The public wrappers live in moe.py, routing.py and quant.py.

The GEMM kernel reads its rows through ``sorted_token_ids`` (tokens grouped by expert, each expert's run padded
to BLOCK_SIZE_M), so one launch serves every expert. It never specialises on the batch size (``EM``,
``num_valid_tokens`` and ``num_programs`` are marked do_not_specialize): one compiled binary per launch config serves
all batch sizes. With PERSISTENT the grid has at most one program per SM, and each walks the tiles of the row blocks
in use (``num_tokens_post_padded``, read on the device) in the same grouped order; Triton flattens that loop with
the K loop, so one tile's epilogue overlaps the next tile's first loads.
With SPLIT_K > 1 (the down GEMM only) the grid's second axis splits the reduction: each program reduces a contiguous
run of K steps and adds its partial tile, already scaled, into a zeroed float32 output with atomics.

With B_TMA the weight tiles come through a TMA descriptor of the weights seen as one [experts x rows, K] matrix
instead of pointer loads: the copy engine fetches them, out-of-bounds rows and columns read as zeros, and the
threads are free for the math. With A_TMA the activation tiles come through a descriptor too, which needs the A
rows of a block to be contiguous: A is then held in expert-sorted order (one row per slot of ``sorted_token_ids``,
zeros for padding slots), gathered by ``_gather_sorted_rows`` for the up GEMM, or written so by the up GEMM
(C_SORTED) for the down GEMM (A_SORTED).
With HALF_TAIL a program whose row block is half padding or more (the last block of an expert's run, when the run
ends in its first half) computes a tile of BLOCK_SIZE_M // 2 rows: the MMAs skip the padding's half.
"""

import triton
import triton.language as tl

from ..dtypes import QuantMode

# The GEMM's quantization modes (its constexpr QUANT), by name: see moekernel.dtypes.QuantMode.
PER_TENSOR: tl.constexpr = tl.constexpr(int(QuantMode.PER_TENSOR))
PER_CHANNEL: tl.constexpr = tl.constexpr(int(QuantMode.PER_CHANNEL))
BLOCK: tl.constexpr = tl.constexpr(int(QuantMode.BLOCK))
WEIGHT_ONLY: tl.constexpr = tl.constexpr(int(QuantMode.WEIGHT_ONLY))


@triton.jit
def _after_prior_kernel(PDL: tl.constexpr):
    """First in every kernel of the op. With PDL (moekernel.kernel.pdl) this program may be resident before the
    kernel ahead of it in the stream has finished: wait until it has and its writes are visible, then let the
    kernel after this one become resident in turn (it waits likewise)."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit(do_not_specialize=["EM", "num_valid_tokens", "num_programs"])
def _fused_moe_gemm(
    a_ptr, b_ptr, c_ptr, a_desc, a_half_desc, b_desc, a_scale_ptr, b_scale_ptr, topk_weights_ptr,
    sorted_token_ids_ptr, expert_ids_ptr, num_tokens_post_padded_ptr, amax_ptr,
    N, K, EM, num_valid_tokens, b_rows_per_expert,
    stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn,
    stride_asm, stride_ask, stride_bse, stride_bsn, stride_bsk,
    num_programs,
    BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr,
    GROUP_SIZE_M: tl.constexpr,
    A_ROW_DIV: tl.constexpr,  # rows of A are sorted_token_id // A_ROW_DIV (topk for the up GEMM, 1 for down)
    FUSE_SILU_MUL: tl.constexpr,  # b holds [gate; up] rows: write silu(x·gate) * (x·up), N columns
    MUL_ROUTED_WEIGHT: tl.constexpr,
    OUT_AMAX: tl.constexpr,  # fold max|c| into amax_ptr: the next GEMM's dynamic per-tensor scale, without a pass
    QUANT: tl.constexpr, GROUP_N: tl.constexpr, GROUP_K: tl.constexpr,
    INT_ACC: tl.constexpr,  # int8 x int8 accumulates in int32
    DOT_FP32: tl.constexpr,  # interpreter: the CPU's dot on 16-bit floats is unreliable, so upcast
    EVEN_K: tl.constexpr,
    SPLIT_K: tl.constexpr,  # programs per output tile along grid axis 1; > 1 needs a zeroed float32 c
    A_TMA: tl.constexpr,  # A tiles through a_desc: A's rows are the slots of sorted_token_ids
    A_SORTED: tl.constexpr,  # A's rows (data and per-row scales) are slots of sorted_token_ids, not token rows
    B_TMA: tl.constexpr,  # weight tiles through b_desc ([experts x b_rows_per_expert, K])
    C_SORTED: tl.constexpr,  # write c's rows at their slots of sorted_token_ids (padding slots get zeros)
    PERSISTENT: tl.constexpr,  # num_programs programs walk the tiles in use (else one program per tile)
    HALF_TAIL: tl.constexpr,  # a block whose second half is padding computes BLOCK_SIZE_M // 2 rows (a_half_desc's)
    PDL: tl.constexpr,  # launched with programmatic dependent launch (see _after_prior_kernel)
):
    _after_prior_kernel(PDL)
    num_pid_n = tl.cdiv(N, BLOCK_SIZE_N)
    num_tokens_post_padded = tl.load(num_tokens_post_padded_ptr)
    num_k_steps = tl.cdiv(K, BLOCK_SIZE_K)
    if SPLIT_K == 1:
        k_first = 0
        k_last = num_k_steps
    else:
        # Only linear epilogues can be summed after the fact: not silu(gate)*up, not a running max of c.
        tl.static_assert(not FUSE_SILU_MUL and not OUT_AMAX, "SPLIT_K > 1 is for the down GEMM only")
        # Whole K steps, spread evenly: the quantization groups, the EVEN_K masks and the tail stay as in one program.
        pid_k = tl.program_id(1)
        k_first = pid_k * num_k_steps // SPLIT_K
        k_last = (pid_k + 1) * num_k_steps // SPLIT_K
        if k_first >= k_last:
            return  # more splits than K steps: nothing to add
    tl.static_assert(not HALF_TAIL or (BLOCK_SIZE_M >= 32 and not PERSISTENT),
                     "HALF_TAIL needs BLOCK_SIZE_M >= 32 and one program per tile")
    if PERSISTENT:
        # Only the row blocks in use, whose experts are all local (the alignment places no other): no tile is
        # skipped, and the flattened loop lets the next tile's first loads overlap this tile's epilogue.
        num_pid_m = tl.cdiv(num_tokens_post_padded, BLOCK_SIZE_M)
        for tile in tl.range(tl.program_id(0), num_pid_m * num_pid_n, num_programs, flatten=True):
            pid_m, pid_n = _tile_coords(tile, num_pid_m, num_pid_n, GROUP_SIZE_M)
            expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
            _gemm_tile(
                pid_m, pid_n, expert, k_first, k_last, a_ptr, b_ptr, c_ptr, a_desc, b_desc, a_scale_ptr,
                b_scale_ptr, topk_weights_ptr, sorted_token_ids_ptr, amax_ptr, N, K, EM, num_valid_tokens,
                b_rows_per_expert, stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn,
                stride_asm, stride_ask, stride_bse, stride_bsn, stride_bsk, BLOCK_SIZE_M, BLOCK_SIZE_N,
                BLOCK_SIZE_K, A_ROW_DIV, FUSE_SILU_MUL, MUL_ROUTED_WEIGHT, OUT_AMAX, QUANT, GROUP_N,
                GROUP_K, INT_ACC, DOT_FP32, EVEN_K, SPLIT_K, A_TMA, A_SORTED, B_TMA, C_SORTED)
    else:
        pid_m, pid_n = _tile_coords(tl.program_id(0), tl.cdiv(EM, BLOCK_SIZE_M), num_pid_n, GROUP_SIZE_M)
        if pid_m * BLOCK_SIZE_M >= num_tokens_post_padded:
            return
        expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
        if expert < 0:
            return
        # A branch of its own: Triton 3.6 compiles both sides of an `if` on a Python bool, and HALF_TAIL=0 must stay
        # today's binary.
        if HALF_TAIL:
            # Padding sits at the end of an expert's run, so the last block of a run is often mostly padding:
            # when its second half is all padding, a tile of half the rows does the block's work.
            if tl.load(sorted_token_ids_ptr + pid_m * BLOCK_SIZE_M + BLOCK_SIZE_M // 2) >= num_valid_tokens:
                _gemm_tile(
                    2 * pid_m, pid_n, expert, k_first, k_last, a_ptr, b_ptr, c_ptr, a_half_desc, b_desc, a_scale_ptr,
                    b_scale_ptr, topk_weights_ptr, sorted_token_ids_ptr, amax_ptr, N, K, EM, num_valid_tokens,
                    b_rows_per_expert, stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn,
                    stride_asm, stride_ask, stride_bse, stride_bsn, stride_bsk, BLOCK_SIZE_M // 2, BLOCK_SIZE_N,
                    BLOCK_SIZE_K, A_ROW_DIV, FUSE_SILU_MUL, MUL_ROUTED_WEIGHT, OUT_AMAX, QUANT, GROUP_N, GROUP_K,
                    INT_ACC, DOT_FP32, EVEN_K, SPLIT_K, A_TMA, A_SORTED, B_TMA, C_SORTED)
                if C_SORTED:
                    # The padding slots of the half left out still get their zeros (see _gemm_tile's store).
                    _store_zero_rows(c_ptr, pid_m * BLOCK_SIZE_M + BLOCK_SIZE_M // 2, pid_n, N, EM, stride_cm,
                                     stride_cn, BLOCK_SIZE_M // 2, BLOCK_SIZE_N)
                return
        _gemm_tile(
            pid_m, pid_n, expert, k_first, k_last, a_ptr, b_ptr, c_ptr, a_desc, b_desc, a_scale_ptr, b_scale_ptr,
            topk_weights_ptr, sorted_token_ids_ptr, amax_ptr, N, K, EM, num_valid_tokens, b_rows_per_expert,
            stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn, stride_asm, stride_ask,
            stride_bse, stride_bsn, stride_bsk, BLOCK_SIZE_M, BLOCK_SIZE_N, BLOCK_SIZE_K, A_ROW_DIV,
            FUSE_SILU_MUL, MUL_ROUTED_WEIGHT, OUT_AMAX, QUANT, GROUP_N, GROUP_K, INT_ACC, DOT_FP32, EVEN_K,
            SPLIT_K, A_TMA, A_SORTED, B_TMA, C_SORTED)


@triton.jit
def _store_zero_rows(c_ptr, first_row, pid_n, N, EM, stride_cm, stride_cn, ROWS: tl.constexpr,
                     BLOCK_SIZE_N: tl.constexpr):
    """Zeros into rows first_row.. (ROWS of them, below EM) of output column block pid_n."""
    offs_m = (first_row + tl.arange(0, ROWS)).to(tl.int64)
    offs_n = pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)
    c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    zeros = tl.zeros((ROWS, BLOCK_SIZE_N), dtype=c_ptr.dtype.element_ty)
    tl.store(c_ptrs, zeros, mask=(offs_m[:, None] < EM) & (offs_n[None, :] < N))


@triton.jit
def _tile_coords(tile, num_pid_m, num_pid_n, GROUP_SIZE_M: tl.constexpr):
    """(row block, column block) of a tile: GROUP_SIZE_M row blocks in a row share the same weight columns in L2."""
    num_pid_in_group = GROUP_SIZE_M * num_pid_n
    group_id = tile // num_pid_in_group
    first_pid_m = group_id * GROUP_SIZE_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_SIZE_M)
    return first_pid_m + ((tile % num_pid_in_group) % group_size_m), (tile % num_pid_in_group) // group_size_m


@triton.jit
def _gemm_tile(
    pid_m, pid_n, expert, k_first, k_last,
    a_ptr, b_ptr, c_ptr, a_desc, b_desc, a_scale_ptr, b_scale_ptr, topk_weights_ptr, sorted_token_ids_ptr,
    amax_ptr, N, K, EM, num_valid_tokens, b_rows_per_expert, stride_am, stride_ak, stride_be, stride_bn, stride_bk,
    stride_cm, stride_cn, stride_asm, stride_ask, stride_bse, stride_bsn, stride_bsk,
    BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr, A_ROW_DIV: tl.constexpr,
    FUSE_SILU_MUL: tl.constexpr, MUL_ROUTED_WEIGHT: tl.constexpr, OUT_AMAX: tl.constexpr, QUANT: tl.constexpr,
    GROUP_N: tl.constexpr, GROUP_K: tl.constexpr, INT_ACC: tl.constexpr, DOT_FP32: tl.constexpr,
    EVEN_K: tl.constexpr, SPLIT_K: tl.constexpr, A_TMA: tl.constexpr, A_SORTED: tl.constexpr, B_TMA: tl.constexpr,
    C_SORTED: tl.constexpr,
):
    """One output tile of _fused_moe_gemm (whose arguments these are): rows pid_m * BLOCK_SIZE_M.. of the sorted ids
    (all of one expert), columns pid_n * BLOCK_SIZE_N.., K steps k_first..k_last - 1."""
    offs_m = pid_m * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M)
    offs_token = tl.load(sorted_token_ids_ptr + offs_m).to(tl.int64)
    token_mask = offs_token < num_valid_tokens
    if A_SORTED:
        a_rows = offs_m.to(tl.int64)
    else:
        a_rows = offs_token // A_ROW_DIV

    offs_n = pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)
    # Wrapping the weight columns keeps the B loads unmasked; the wrapped columns are never stored.
    offs_bn = (offs_n % N).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_SIZE_K)

    a_ptrs = a_ptr + a_rows[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + expert * stride_be + offs_bn[None, :] * stride_bn + offs_k[:, None] * stride_bk
    if FUSE_SILU_MUL:
        b2_ptrs = b_ptrs + N * stride_bn
    # Descriptor coordinates: the block's first A row, and the tile's first weight row (gate half; up half N on).
    a_row0 = pid_m * BLOCK_SIZE_M
    b_row0 = (expert * b_rows_per_expert + pid_n * BLOCK_SIZE_N).to(tl.int32)

    a_ptrs += k_first * BLOCK_SIZE_K * stride_ak
    b_ptrs += k_first * BLOCK_SIZE_K * stride_bk

    if INT_ACC and not DOT_FP32:
        acc_dtype = tl.int32
    else:
        acc_dtype = tl.float32
    acc = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=acc_dtype)
    if FUSE_SILU_MUL:
        acc2 = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=acc_dtype)
    if QUANT == BLOCK:
        facc = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=tl.float32)
        if FUSE_SILU_MUL:
            facc2 = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=tl.float32)
        a_s_ptrs = a_scale_ptr + a_rows * stride_asm
        b_s_ptrs = b_scale_ptr + expert * stride_bse + (offs_bn // GROUP_N) * stride_bsn
        if FUSE_SILU_MUL:
            b2_s_ptrs = b_scale_ptr + expert * stride_bse + ((offs_bn + N) // GROUP_N) * stride_bsn

    for k in range(k_first, k_last):
        k_left = K - k * BLOCK_SIZE_K
        if A_TMA:
            a = a_desc.load([a_row0, k * BLOCK_SIZE_K])  # padding rows hold zeros; past K reads zeros
        elif EVEN_K:
            a = tl.load(a_ptrs, mask=token_mask[:, None], other=0.0)
        else:
            a = tl.load(a_ptrs, mask=token_mask[:, None] & (offs_k[None, :] < k_left), other=0.0)
        if B_TMA:
            b = b_desc.load([b_row0, k * BLOCK_SIZE_K]).T
            if FUSE_SILU_MUL:
                b2 = b_desc.load([b_row0 + N, k * BLOCK_SIZE_K]).T
        elif EVEN_K:
            b = tl.load(b_ptrs)
            if FUSE_SILU_MUL:
                b2 = tl.load(b2_ptrs)
        else:
            b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
            if FUSE_SILU_MUL:
                b2 = tl.load(b2_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        if DOT_FP32:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
            if FUSE_SILU_MUL:
                b2 = b2.to(tl.float32)
        elif QUANT == WEIGHT_ONLY:
            # Weight-only int8: convert the tile to the activation dtype; the channel scale comes after.
            b = b.to(a.dtype)
            if FUSE_SILU_MUL:
                b2 = b2.to(a.dtype)
        if QUANT == BLOCK:
            # One quantization group per K step (GROUP_K is a multiple of BLOCK_SIZE_K): scale each partial dot.
            k_group = (k * BLOCK_SIZE_K) // GROUP_K
            a_s = tl.load(a_s_ptrs + k_group * stride_ask, mask=token_mask, other=0.0)
            b_s = tl.load(b_s_ptrs + k_group * stride_bsk)
            part = tl.dot(a, b, out_dtype=acc_dtype)
            facc += part.to(tl.float32) * a_s[:, None] * b_s[None, :]
            if FUSE_SILU_MUL:
                b2_s = tl.load(b2_s_ptrs + k_group * stride_bsk)
                part2 = tl.dot(a, b2, out_dtype=acc_dtype)
                facc2 += part2.to(tl.float32) * a_s[:, None] * b2_s[None, :]
        else:
            acc = tl.dot(a, b, acc, out_dtype=acc_dtype)
            if FUSE_SILU_MUL:
                acc2 = tl.dot(a, b2, acc2, out_dtype=acc_dtype)
        a_ptrs += BLOCK_SIZE_K * stride_ak
        b_ptrs += BLOCK_SIZE_K * stride_bk
        if FUSE_SILU_MUL:
            b2_ptrs += BLOCK_SIZE_K * stride_bk

    # Epilogue: dequantize, activation, routing weight, store.
    if QUANT == BLOCK:
        out = facc
        if FUSE_SILU_MUL:
            out2 = facc2
    else:
        out = acc.to(tl.float32)
        if FUSE_SILU_MUL:
            out2 = acc2.to(tl.float32)
    if QUANT == PER_TENSOR:
        scale = tl.load(a_scale_ptr) * tl.load(b_scale_ptr + expert * stride_bse)
        out = out * scale
        if FUSE_SILU_MUL:
            out2 = out2 * scale
    if QUANT == PER_CHANNEL or QUANT == WEIGHT_ONLY:
        b_s = tl.load(b_scale_ptr + expert * stride_bse + offs_bn * stride_bsn)
        out = out * b_s[None, :]
        if FUSE_SILU_MUL:
            out2 = out2 * tl.load(b_scale_ptr + expert * stride_bse + (offs_bn + N) * stride_bsn)[None, :]
        if QUANT == PER_CHANNEL:
            a_s = tl.load(a_scale_ptr + a_rows * stride_asm, mask=token_mask, other=0.0)
            out = out * a_s[:, None]
            if FUSE_SILU_MUL:
                out2 = out2 * a_s[:, None]
    if FUSE_SILU_MUL:
        out = out * tl.sigmoid(out) * out2
    if MUL_ROUTED_WEIGHT:
        w = tl.load(topk_weights_ptr + offs_token, mask=token_mask, other=0.0)
        out = out * w[:, None]

    if C_SORTED:
        # Every slot of the block is written, padding slots with the zeros their zero A rows give, so the next
        # GEMM can load whole blocks by TMA.
        c_ptrs = c_ptr + offs_m.to(tl.int64)[:, None] * stride_cm + offs_n[None, :] * stride_cn
        c_mask = (offs_n[None, :] < N) & (offs_m[:, None] < EM)
    else:
        c_ptrs = c_ptr + offs_token[:, None] * stride_cm + offs_n[None, :] * stride_cn
        c_mask = token_mask[:, None] & (offs_n[None, :] < N)
    if SPLIT_K == 1:
        c = out.to(c_ptr.dtype.element_ty)
        if OUT_AMAX:
            # Rows of padding hold zeros; columns past N (wrapped, or another tile's rows through TMA) are left out.
            c_abs = tl.where(offs_n[None, :] < N, tl.abs(c.to(tl.float32)), 0.0)
            tl.atomic_max(amax_ptr, tl.max(tl.max(c_abs, 1), 0))
        tl.store(c_ptrs, c, mask=c_mask)
    else:
        # Every factor above (dequantization scales, routing weight) is linear, so each partial carries its own.
        # Relaxed: the adds only need to be atomic; the next kernel on the stream reads the sums.
        tl.atomic_add(c_ptrs, out, mask=c_mask, sem="relaxed")


@triton.jit
def _local_expert(topk_ids_ptr, expert_map_ptr, offs, numel, num_experts, HAS_MAP: tl.constexpr):
    """The local expert of each top-k entry at ``offs``, and whether it is one this rank computes (in range, and
    mapped to this rank when there is an expert map)."""
    valid = offs < numel
    e = tl.load(topk_ids_ptr + offs, mask=valid, other=0)
    if HAS_MAP:
        e = tl.load(expert_map_ptr + e, mask=valid, other=-1)
    return e, valid & (e >= 0) & (e < num_experts)


@triton.jit
def _zero_amax(amax_ptr, NUM_AMAX: tl.constexpr):
    # This call's running maxima for dynamic per-tensor scales start from zero (the alignment runs first).
    if NUM_AMAX > 0:
        tl.store(amax_ptr + tl.arange(0, NUM_AMAX), tl.zeros((NUM_AMAX,), dtype=tl.float32))


@triton.jit
def _fill_padding(sorted_ids_ptr, start, stop, max_padded, numel, CHUNK: tl.constexpr):
    """sorted_ids[start:stop] = numel (the padding id), within max_padded."""
    chunk = tl.arange(0, CHUNK)
    for first in range(start, stop, CHUNK):
        offs = first + chunk
        tl.store(sorted_ids_ptr + offs, numel, mask=(offs < stop) & (offs < max_padded))


@triton.jit
def _count_chunk(topk_ids_ptr, expert_map_ptr, first, numel, num_experts, HAS_MAP: tl.constexpr,
                 NUM_BINS: tl.constexpr, CHUNK: tl.constexpr):
    """Entries per local expert among entries first..first+CHUNK-1."""
    e, valid = _local_expert(topk_ids_ptr, expert_map_ptr, first + tl.arange(0, CHUNK), numel, num_experts, HAS_MAP)
    # Skipped entries (other ranks' experts, and ids out of range) land in bin num_experts, never placed.
    return tl.histogram(tl.where(valid, e, num_experts), NUM_BINS)


@triton.jit
def _expert_runs(counts, expert_ids_ptr, num_post_ptr, num_experts, max_blocks, BLOCK_SIZE_M: tl.constexpr,
                 NUM_BINS: tl.constexpr, BLOCK_CHUNK: tl.constexpr):
    """Pad each expert's run to BLOCK_SIZE_M: store the used length and every block's expert; returns each run's
    first slot."""
    bins = tl.arange(0, NUM_BINS)
    counts = tl.where(bins < num_experts, counts, 0)
    padded = (counts + BLOCK_SIZE_M - 1) // BLOCK_SIZE_M * BLOCK_SIZE_M
    ends = tl.cumsum(padded, 0)
    total = tl.sum(padded, 0)
    tl.store(num_post_ptr, total)
    block_chunk = tl.arange(0, BLOCK_CHUNK)
    for start in range(0, max_blocks, BLOCK_CHUNK):
        blocks = start + block_chunk
        first_row = blocks * BLOCK_SIZE_M
        # The expert of a block is the number of experts whose padded run ends at or before its first row.
        owner = tl.sum((ends[None, :] <= first_row[:, None]).to(tl.int32), axis=1)
        owner = tl.where(first_row < total, owner, -1)
        tl.store(expert_ids_ptr + blocks, owner, mask=blocks < max_blocks)
    return ends - padded


@triton.jit
def _place_chunk(topk_ids_ptr, expert_map_ptr, sorted_ids_ptr, cursor_ptr, first, numel, num_experts,
                 HAS_MAP: tl.constexpr, CHUNK: tl.constexpr):
    """Each entry of first..first+CHUNK-1 takes the next slot of its expert's cursor."""
    offs = first + tl.arange(0, CHUNK)
    e, valid = _local_expert(topk_ids_ptr, expert_map_ptr, offs, numel, num_experts, HAS_MAP)
    slot = tl.atomic_add(cursor_ptr + e, 1, mask=valid)
    tl.store(sorted_ids_ptr + slot, offs, mask=valid)


@triton.jit(do_not_specialize=["numel", "max_padded", "max_blocks"])
def _moe_align(
    topk_ids_ptr, expert_map_ptr, sorted_ids_ptr, expert_ids_ptr, num_post_ptr, cursor_ptr, amax_ptr,
    numel, max_padded, max_blocks, num_experts,
    BLOCK_SIZE_M: tl.constexpr, NUM_BINS: tl.constexpr, HAS_MAP: tl.constexpr, NUM_AMAX: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_CHUNK: tl.constexpr, PDL: tl.constexpr,
):
    """One program: count tokens per expert, pad each run to BLOCK_SIZE_M, then place every token.

    Runs on the device without a host round trip, so it can sit inside a CUDA graph. Tokens routed to experts that
    are not local (expert_map == -1) are left out; a token's slot inside its expert's run is taken with an atomic
    add, so the order inside a run is arbitrary (each row is computed on its own, so the result does not depend on it).
    One program keeps a small call to one launch; many entries take the three launches of _moe_align_count,
    _moe_align_scan and _moe_align_place instead, whose atomics spread over many programs.
    """
    _after_prior_kernel(PDL)
    _zero_amax(amax_ptr, NUM_AMAX)
    _fill_padding(sorted_ids_ptr, 0, max_padded, max_padded, numel, CHUNK)
    counts = tl.zeros((NUM_BINS,), dtype=tl.int32)
    for start in range(0, numel, CHUNK):
        counts += _count_chunk(topk_ids_ptr, expert_map_ptr, start, numel, num_experts, HAS_MAP, NUM_BINS, CHUNK)
    starts = _expert_runs(counts, expert_ids_ptr, num_post_ptr, num_experts, max_blocks, BLOCK_SIZE_M, NUM_BINS,
                          BLOCK_CHUNK)
    tl.store(cursor_ptr + tl.arange(0, NUM_BINS), starts)
    tl.debug_barrier()  # the cursors and the padding fill above must be visible to every thread below
    for start in range(0, numel, CHUNK):
        _place_chunk(topk_ids_ptr, expert_map_ptr, sorted_ids_ptr, cursor_ptr, start, numel, num_experts, HAS_MAP,
                     CHUNK)


@triton.jit(do_not_specialize=["numel", "max_padded", "fill_per_program"])
def _moe_align_count(
    topk_ids_ptr, expert_map_ptr, sorted_ids_ptr, counts_ptr, amax_ptr, numel, max_padded, fill_per_program,
    num_experts, NUM_BINS: tl.constexpr, HAS_MAP: tl.constexpr, NUM_AMAX: tl.constexpr, CHUNK: tl.constexpr,
    PDL: tl.constexpr,
):
    """Many programs, one CHUNK of entries each: its count per expert (counts[program]), and its share of the
    padding fill."""
    _after_prior_kernel(PDL)
    pid = tl.program_id(0)
    if pid == 0:
        _zero_amax(amax_ptr, NUM_AMAX)
    _fill_padding(sorted_ids_ptr, pid * fill_per_program, (pid + 1) * fill_per_program, max_padded, numel, CHUNK)
    counts = _count_chunk(topk_ids_ptr, expert_map_ptr, pid * CHUNK, numel, num_experts, HAS_MAP, NUM_BINS, CHUNK)
    tl.store(counts_ptr + pid * NUM_BINS + tl.arange(0, NUM_BINS), counts)


@triton.jit(do_not_specialize=["programs", "max_blocks"])
def _moe_align_scan(
    counts_ptr, cursor_ptr, expert_ids_ptr, num_post_ptr, programs, max_blocks, num_experts,
    BLOCK_SIZE_M: tl.constexpr, NUM_BINS: tl.constexpr, BLOCK_CHUNK: tl.constexpr, PDL: tl.constexpr,
):
    """One program: the expert runs from every program's counts, and each program's first slot per expert (its
    cursors: the run's start plus the entries of that expert in earlier programs)."""
    _after_prior_kernel(PDL)
    bins = tl.arange(0, NUM_BINS)
    counts = tl.zeros((NUM_BINS,), dtype=tl.int32)
    for p in range(0, programs):
        counts += tl.load(counts_ptr + p * NUM_BINS + bins)
    running = _expert_runs(counts, expert_ids_ptr, num_post_ptr, num_experts, max_blocks, BLOCK_SIZE_M, NUM_BINS,
                           BLOCK_CHUNK)
    for p in range(0, programs):
        tl.store(cursor_ptr + p * NUM_BINS + bins, running)
        running += tl.load(counts_ptr + p * NUM_BINS + bins)


@triton.jit(do_not_specialize=["numel"])
def _moe_align_place(
    topk_ids_ptr, expert_map_ptr, sorted_ids_ptr, cursor_ptr, numel, num_experts,
    NUM_BINS: tl.constexpr, HAS_MAP: tl.constexpr, CHUNK: tl.constexpr, PDL: tl.constexpr,
):
    """Many programs, as _moe_align_count's: each places its chunk's entries from its own cursors."""
    _after_prior_kernel(PDL)
    pid = tl.program_id(0)
    _place_chunk(topk_ids_ptr, expert_map_ptr, sorted_ids_ptr, cursor_ptr + pid * NUM_BINS, pid * CHUNK, numel,
                 num_experts, HAS_MAP, CHUNK)


@triton.jit(do_not_specialize=["numel"])
def _gather_sorted_rows(
    x_ptr, out_ptr, sorted_ids_ptr, num_post_ptr, numel, C, stride_xm, stride_om,
    ROW_DIV: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr,
):
    """out[slot] = x[sorted_token_ids[slot] // ROW_DIV] for each slot of the padded expert runs, zeros for padding
    slots: the expert-sorted copy of A that the up GEMM loads by TMA. Slots past the runs are left alone."""
    _after_prior_kernel(PDL)
    slot = tl.program_id(0)
    if slot >= tl.load(num_post_ptr):
        return
    token = tl.load(sorted_ids_ptr + slot)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    row = (token // ROW_DIV).to(tl.int64)
    # A padding slot reads nothing: its column limit drops to 0.
    x = tl.load(x_ptr + row * stride_xm + offs, mask=offs < tl.where(token < numel, C, 0), other=0.0)
    tl.store(out_ptr + slot.to(tl.int64) * stride_om + offs, x, mask=offs < C)


@triton.jit
def _moe_sum(
    c_ptr, out_ptr, topk_ids_ptr, expert_map_ptr, K, stride_cm, stride_om,
    TOPK: tl.constexpr, HAS_MAP: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr,
):
    """out[m] = sum over the top-k rows of c (the hidden dtype, or float32 after a split-K down GEMM); rows of
    non-local experts were never written and are skipped."""
    _after_prior_kernel(PDL)
    m = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < K
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for j in tl.static_range(TOPK):
        row_mask = mask
        if HAS_MAP:
            e = tl.load(topk_ids_ptr + m * TOPK + j)
            # A row of a non-local expert reads nothing: its column limit drops to 0.
            row_mask = offs < tl.where(tl.load(expert_map_ptr + e) >= 0, K, 0)
        acc += tl.load(c_ptr + (m * TOPK + j) * stride_cm + offs, mask=row_mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + m * stride_om + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["numel"])
def _zero_fill(ptr, numel, BLOCK: tl.constexpr, PDL: tl.constexpr):
    """ptr[:numel] = 0 (a split-K down GEMM's float32 output, which its programs add into)."""
    _after_prior_kernel(PDL)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    tl.store(ptr + offs, tl.zeros((BLOCK,), dtype=ptr.dtype.element_ty), mask=offs < numel)


@triton.jit
def _quant_groups(
    x_ptr, q_ptr, s_ptr, C, stride_xm, stride_qm, stride_sm,
    GROUP: tl.constexpr, BLOCK: tl.constexpr, QMAX: tl.constexpr, IS_INT: tl.constexpr, PDL: tl.constexpr,
):
    """Dynamic quantization of one [row, group of GROUP columns]: scale = max|x| / QMAX."""
    _after_prior_kernel(PDL)
    row = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1)
    offs = g * GROUP + tl.arange(0, BLOCK)
    mask = (tl.arange(0, BLOCK) < GROUP) & (offs < C)
    x = tl.load(x_ptr + row * stride_xm + offs, mask=mask, other=0.0).to(tl.float32)
    scale = tl.maximum(tl.max(tl.abs(x), 0), 1e-10) / QMAX
    y = tl.clamp(x / scale, -QMAX, QMAX)
    if IS_INT:
        y = tl.where(y >= 0, tl.floor(y + 0.5), tl.ceil(y - 0.5))  # round half away from zero
    tl.store(q_ptr + row * stride_qm + offs, y.to(q_ptr.dtype.element_ty), mask=mask)
    tl.store(s_ptr + row * stride_sm + g, scale)


@triton.jit
def _amax(x_ptr, amax_ptr, numel, BLOCK: tl.constexpr, PDL: tl.constexpr):
    """amax_ptr[0] = max(amax_ptr[0], max |x|) over a flat tensor, one block per program."""
    _after_prior_kernel(PDL)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < numel, other=0.0).to(tl.float32)
    tl.atomic_max(amax_ptr, tl.max(tl.abs(x), 0))


@triton.jit
def _quant_per_tensor(
    x_ptr, q_ptr, scale_ptr, amax_ptr, numel,
    BLOCK: tl.constexpr, QMAX: tl.constexpr, IS_INT: tl.constexpr, STATIC: tl.constexpr, PDL: tl.constexpr,
):
    """q = x / scale with a given scale (STATIC) or scale = max|x| / QMAX from a max gathered before."""
    _after_prior_kernel(PDL)
    pid = tl.program_id(0)
    if STATIC:
        scale = tl.load(scale_ptr)
    else:
        scale = tl.maximum(tl.load(amax_ptr) / QMAX, 1e-10)
        if pid == 0:
            tl.store(scale_ptr, scale)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    y = tl.clamp(tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32) / scale, -QMAX, QMAX)
    if IS_INT:
        y = tl.where(y >= 0, tl.floor(y + 0.5), tl.ceil(y - 0.5))  # round half away from zero
    tl.store(q_ptr + offs, y.to(q_ptr.dtype.element_ty), mask=mask)
