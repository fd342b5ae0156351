"""Routing: pick each token's experts, then group the (token, expert) pairs by expert for the GEMM kernel."""

from __future__ import annotations

import torch
import triton

from . import pdl
from ._kernels import _moe_align, _moe_align_count, _moe_align_place, _moe_align_scan

#: Entries (tokens x top-k) one alignment program takes at a time.
ALIGN_CHUNK = 1024
#: Up to this many entries the alignment is one launch of one program; beyond, three launches spread the counting
#: and the placing over a program per ALIGN_CHUNK entries. On an H200 one program took ~5 us per chunk (its atomic
#: adds one chunk after another: ~170 us of a 630 us call for Qwen3-30B-A3B at M = 4096, top-8, 48 us with the
#: three launches), two launches more cost a few us.
ALIGN_ONE_PROGRAM_MAX = 2 * ALIGN_CHUNK


def fused_topk(
    hidden_states: torch.Tensor, gating_output: torch.Tensor, topk: int, renormalize: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over the router logits, then the top-k experts per token.

    Returns (topk_weights [M, topk] float32, topk_ids [M, topk] int32).
    """
    if gating_output.dim() != 2 or gating_output.shape[0] != hidden_states.shape[0]:
        raise ValueError(
            f"gating_output must be [M, E] with M = hidden_states.shape[0] = {hidden_states.shape[0]}; "
            f"got {tuple(gating_output.shape)}"
        )
    if not 1 <= topk <= gating_output.shape[1]:
        raise ValueError(f"topk must be in 1..E={gating_output.shape[1]}, got {topk}")
    probs = torch.softmax(gating_output.float(), dim=-1)
    weights, ids = torch.topk(probs, topk, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids.to(torch.int32)


def max_padded_tokens(numel: int, num_experts: int, block_size: int) -> int:
    """Upper bound of the aligned length: each non-empty expert adds at most block_size - 1 rows of padding."""
    return numel + min(num_experts, numel) * (block_size - 1)


def moe_align_block_size(
    topk_ids: torch.Tensor, block_size: int, num_experts: int, expert_map: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort the flattened (token, k) entries by expert, each expert's run padded to a multiple of block_size.

    Returns:
      sorted_token_ids [max_padded] int32: flat entry index (m * topk + k), or topk_ids.numel() for padding;
      expert_ids [max_padded / block_size] int32: the (local) expert of each block, -1 past the end;
      num_tokens_post_padded [1] int32: the used length of sorted_token_ids.
    Sizes depend only on the input sizes and nothing waits on the host, so the call can be captured in a CUDA graph.
    ``num_experts`` is the local expert count; with ``expert_map`` ([E_global] int32, -1 for experts of other
    ranks) entries of non-local experts are left out, and so are ids outside 0..num_experts-1 (checking them on the
    host would need a synchronisation).
    """
    if block_size < 1 or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two, got {block_size}")
    if num_experts < 1:
        raise ValueError(f"num_experts must be positive, got {num_experts}")
    sorted_ids, expert_ids, num_post, cursor = align_buffers(topk_ids.numel(), num_experts, block_size,
                                                             topk_ids.device)
    launch_align(topk_ids, expert_map, num_experts, block_size, sorted_ids, expert_ids, num_post, cursor)
    return sorted_ids, expert_ids, num_post


def warmup_args(args):
    """Arguments for a kernel's warmup: tensors by dtype (they are shape-only 'meta' tensors); descriptors and
    scalars as they are (their type, tile and dtype are what the compile specialises on)."""
    return [a.dtype if isinstance(a, torch.Tensor) else a for a in args]


def align_programs(numel: int) -> int:
    """Programs the alignment of ``numel`` entries counts and places with (1: the one-launch kernel)."""
    return 1 if numel <= ALIGN_ONE_PROGRAM_MAX else triton.cdiv(numel, ALIGN_CHUNK)


def align_buffers(numel: int, num_experts: int, block_size: int, device):
    """Empty (sorted_token_ids, expert_ids, num_tokens_post_padded, cursor) for aligning ``numel`` entries; the
    cursor is the alignment's scratch: a cursor per expert, or, with several programs, each program's counts and
    cursors per expert."""
    max_padded = max_padded_tokens(numel, num_experts, block_size)
    programs = align_programs(numel)
    scratch = align_bins(num_experts) * (1 if programs == 1 else 2 * programs)
    i32 = dict(dtype=torch.int32, device=device)
    return (torch.empty(max_padded, **i32), torch.empty(triton.cdiv(max_padded, block_size), **i32),
            torch.empty(1, **i32), torch.empty(scratch, **i32))


def align_bins(num_experts: int) -> int:
    # One extra bin collects the entries that are skipped.
    return max(16, triton.next_power_of_2(num_experts + 1))


def launch_align(topk_ids, expert_map, num_experts, block_size, sorted_ids, expert_ids, num_post, cursor,
                 amax=None, warmup=False):
    """Fill preallocated alignment buffers (:func:`align_buffers`; used by moe_align_block_size and the fused op's
    workspace).

    ``amax`` (float32, power-of-two length): the fused op's running-maximum slots, zeroed here since this kernel
    runs first in every call.
    """
    bins = align_bins(num_experts)
    numel, max_padded, max_blocks = topk_ids.numel(), sorted_ids.numel(), expert_ids.numel()
    has_map, num_amax = expert_map is not None, 0 if amax is None else amax.numel()
    block_chunk = max(16, 8192 // bins)
    programs = align_programs(numel)
    overlap = pdl.launch_meta()
    if programs == 1:
        launches = [(_moe_align, (1,), [topk_ids, expert_map, sorted_ids, expert_ids, num_post, cursor, amax, numel,
                                        max_padded, max_blocks, num_experts],
                     dict(BLOCK_SIZE_M=block_size, NUM_BINS=bins, HAS_MAP=has_map, NUM_AMAX=num_amax,
                          CHUNK=ALIGN_CHUNK, BLOCK_CHUNK=block_chunk, num_warps=8, **overlap))]
    else:
        counts, cursors = cursor[:programs * bins], cursor[programs * bins:]
        fill = triton.cdiv(triton.cdiv(max_padded, programs), ALIGN_CHUNK) * ALIGN_CHUNK
        launches = [
            (_moe_align_count, (programs,), [topk_ids, expert_map, sorted_ids, counts, amax, numel, max_padded, fill,
                                             num_experts],
             dict(NUM_BINS=bins, HAS_MAP=has_map, NUM_AMAX=num_amax, CHUNK=ALIGN_CHUNK, num_warps=8, **overlap)),
            (_moe_align_scan, (1,), [counts, cursors, expert_ids, num_post, programs, max_blocks, num_experts],
             dict(BLOCK_SIZE_M=block_size, NUM_BINS=bins, BLOCK_CHUNK=block_chunk, num_warps=8, **overlap)),
            (_moe_align_place, (programs,), [topk_ids, expert_map, sorted_ids, cursors, numel, num_experts],
             dict(NUM_BINS=bins, HAS_MAP=has_map, CHUNK=ALIGN_CHUNK, num_warps=8, **overlap)),
        ]
    for kernel, grid, args, meta in launches:
        if warmup:
            kernel.warmup(*warmup_args(args), grid=grid, **meta)
        else:
            kernel[grid](*args, **meta)
