"""Routing: fused_topk and moe_align_block_size, checked for the properties the GEMM kernel relies on."""

import pytest
import torch

import moekernel


def test_fused_topk_picks_largest_softmax_probabilities(device):
    logits = torch.randn(7, 10, device=device)
    x = torch.randn(7, 16, device=device)
    weights, ids = moekernel.fused_topk(x, logits, 3, renormalize=False)
    probs = torch.softmax(logits.float(), -1)
    assert ids.dtype == torch.int32 and weights.dtype == torch.float32
    assert torch.allclose(weights, probs.gather(1, ids.long()))
    assert torch.allclose(weights.min(1).values, probs.topk(3).values.min(1).values)
    renorm, _ = moekernel.fused_topk(x, logits, 3)
    assert torch.allclose(renorm.sum(1), torch.ones(7, device=device))


# The last two have more entries than one alignment program takes (ALIGN_ONE_PROGRAM_MAX): the three-launch path,
# with a partial last chunk.
@pytest.mark.parametrize("M,topk,E,block", [(1, 1, 1, 16), (5, 2, 8, 16), (37, 3, 6, 32), (300, 8, 64, 64),
                                            (9, 8, 256, 16), (2500, 2, 8, 64), (700, 8, 128, 16)])
def test_align_groups_every_entry_once_padded_per_expert(M, topk, E, block, device):
    ids = torch.stack([torch.randperm(E, device=device)[:topk] for _ in range(M)]).to(torch.int32)
    sorted_ids, expert_ids, num_post = moekernel.moe_align_block_size(ids, block, E)
    numel = ids.numel()
    total = int(num_post.item())
    assert total % block == 0
    used = sorted_ids[:total].cpu()
    real = used[used < numel]
    assert sorted(real.tolist()) == list(range(numel)), "every (token, k) entry appears exactly once"
    assert torch.all(sorted_ids[total:] == numel), "the tail is padding"
    flat = ids.flatten().cpu()
    counts = torch.bincount(flat.long(), minlength=E)
    assert total == int(((counts + block - 1) // block * block).sum())
    for b in range(total // block):
        rows = used[b * block:(b + 1) * block]
        rows = rows[rows < numel]
        assert torch.all(flat[rows.long()] == expert_ids[b].item()), f"block {b} mixes experts"
    assert torch.all(expert_ids[total // block:] == -1)


def test_align_leaves_out_non_local_experts(device):
    ids = torch.tensor([[0, 3], [1, 2], [3, 0]], dtype=torch.int32, device=device)
    expert_map = torch.tensor([-1, 0, -1, 1], dtype=torch.int32, device=device)  # global 1 -> 0, 3 -> 1
    sorted_ids, expert_ids, num_post = moekernel.moe_align_block_size(ids, 16, 2, expert_map)
    total = int(num_post.item())
    real = sorted_ids[:total][sorted_ids[:total] < ids.numel()].cpu()
    assert sorted(real.tolist()) == [1, 2, 4]
    assert expert_ids[: total // 16].tolist() == [0, 1]


@pytest.mark.parametrize("M", [3, 2600])  # one program; several
def test_align_leaves_out_non_local_experts_in_every_program(M, device):
    from moekernel.kernel.routing import align_programs

    gen = torch.Generator().manual_seed(M)
    ids = torch.randint(0, 6, (M, 2), dtype=torch.int32, generator=gen).to(device)
    expert_map = torch.tensor([0, -1, 1, -1, 2, 3], dtype=torch.int32, device=device)
    sorted_ids, expert_ids, num_post = moekernel.moe_align_block_size(ids, 32, 4, expert_map)
    assert align_programs(ids.numel()) == (1 if M == 3 else 6)  # 5200 entries: 6 chunks of 1024
    total = int(num_post.item())
    real = sorted_ids[:total][sorted_ids[:total] < ids.numel()].cpu()
    flat = ids.flatten().cpu()
    local = torch.nonzero(expert_map.cpu()[flat.long()] >= 0).flatten()
    assert sorted(real.tolist()) == local.tolist()
    for b in range(total // 32):
        rows = sorted_ids[b * 32:(b + 1) * 32].cpu()
        rows = rows[rows < ids.numel()]
        assert torch.all(expert_map.cpu()[flat[rows.long()].long()] == expert_ids[b].item())


def test_align_rejects_bad_block_size(device):
    with pytest.raises(ValueError, match="power of two"):
        moekernel.moe_align_block_size(torch.zeros(2, 1, dtype=torch.int32, device=device), 24, 4)


def test_align_leaves_out_ids_beyond_the_experts(device):
    # An expert id >= E without an expert map (a mistake) must never write outside the buffers.
    ids = torch.tensor([[0, 40], [1, 2], [3, 5]], dtype=torch.int32, device=device)
    sorted_ids, expert_ids, num_post = moekernel.moe_align_block_size(ids, 16, 4)
    total = int(num_post.item())
    real = sorted_ids[:total][sorted_ids[:total] < ids.numel()].cpu()
    assert sorted(real.tolist()) == [0, 2, 3, 4]
    assert total == 4 * 16
