"""Search space and pruning rules (no kernel runs)."""

import json


import pytest

from moekernel.shapes import KernelShape
from moekernel.tuning import space as sp

TINY = KernelShape(4, 64, 64, 2, "fp16")


def _space(**lists):
    base = {"BLOCK_SIZE_M": [16], "BLOCK_SIZE_N": [32], "BLOCK_SIZE_K": [64], "GROUP_SIZE_M": [1], "num_warps": [4],
            "num_stages": [2]}
    return {**base, **lists}


def _reasons(shape, M, space, **kw):
    return {sp.config_id(c): r for c, r in sp.prune(shape, M, space, **kw)}


def test_vllm_space_is_the_engines_1920():
    configs = sp.expand(sp.load_space("vllm"))
    assert len(configs) == 1920
    assert len({sp.config_id(c) for c in configs}) == 1920
    assert set(configs[0]) == set(sp.PARAMS)


def test_load_space_mapping_json_and_file(tmp_path):
    narrowed = sp.load_space({"num_stages": [3, 2, 3]})
    assert narrowed["num_stages"] == [2, 3]
    assert narrowed["BLOCK_SIZE_M"] == sp.VLLM_SPACE["BLOCK_SIZE_M"]  # the rest keeps vLLM's lists
    text = json.dumps(_space(BLOCK_SIZE_M=[32, 16]))
    assert sp.load_space(text)["BLOCK_SIZE_M"] == [16, 32]
    path = tmp_path / "space.json"
    path.write_text(text)
    assert sp.load_space(str(path)) == sp.load_space(text)


@pytest.mark.parametrize("bad", [{"BLOCK_M": [16]}, {"num_warps": []}, {"num_warps": [0]}, {"num_warps": ["4"]}, "[1]"])
def test_load_space_rejects_bad_specs(bad):
    with pytest.raises(ValueError):
        sp.load_space(json.dumps(bad) if isinstance(bad, dict) else bad)


def test_block_m_beyond_the_tokens_of_one_expert_is_pruned():
    space = _space(BLOCK_SIZE_M=[16, 32, 64, 128])
    reasons = _reasons(TINY, 20, space)  # an expert gets at most 20 tokens: 32 rows hold them all
    kept = [cid[0] for cid, r in reasons.items() if r is None]
    assert kept == [16, 32]
    assert "M=20" in reasons[(64, 32, 64, 1, 4, 2)] and "padding" in reasons[(64, 32, 64, 1, 4, 2)]
    # The smallest block is never pruned, even when it exceeds M.
    assert [cid[0] for cid, r in _reasons(TINY, 1, _space(BLOCK_SIZE_M=[32, 64])).items() if r is None] == [32]


def test_tiles_wider_than_every_gemm_are_pruned():
    # up GEMM: 2N = 128 weight rows, K = 64 deep; down GEMM: K = 64 wide, N = 64 deep.
    reasons = _reasons(TINY, 16, _space(BLOCK_SIZE_N=[32, 128, 256], BLOCK_SIZE_K=[64, 128]))
    assert reasons[(16, 128, 64, 1, 4, 2)] is None
    assert "BLOCK_SIZE_N=256" in reasons[(16, 256, 64, 1, 4, 2)]
    assert "BLOCK_SIZE_K=128" in reasons[(16, 32, 128, 1, 4, 2)]
    # The down GEMM alone is only K=64 wide: 128 already spans more than it.
    down = _reasons(TINY, 16, _space(BLOCK_SIZE_N=[32, 64, 128]), gemm="down")
    assert down[(16, 64, 64, 1, 4, 2)] is None and "BLOCK_SIZE_N=128" in down[(16, 128, 64, 1, 4, 2)]


def test_shared_memory_rule_uses_the_limit():
    shape = KernelShape(8, 4096, 4096, 2, "bf16")
    space = _space(BLOCK_SIZE_M=[128], BLOCK_SIZE_N=[256], BLOCK_SIZE_K=[128], num_stages=[2, 5])
    need = {s: sp.smem_bytes(shape, {**{p: v[0] for p, v in space.items()}, "num_stages": s}, "up") for s in (2, 5)}
    assert need[2] < need[5]
    reasons = _reasons(shape, 4096, space, smem_limit=(need[2] + need[5]) // 2)
    assert reasons[(128, 256, 128, 1, 4, 2)] is None
    assert reasons[(128, 256, 128, 1, 4, 5)].startswith("shared memory")
    # The vLLM space on Hopper: a sizeable share cannot fit, but most can.
    full = sp.prune(shape, 4096, sp.load_space("vllm"), smem_limit=sp.HOPPER_SMEM_BYTES)
    share = sum(1 for _, r in full if r and r.startswith("shared memory")) / len(full)
    assert 0.15 < share < 0.5


def test_estimate_matches_hopper_failure_rate():
    # 27% of vLLM's space fails with OutOfResources on Hopper; the pruning estimate reproduces that share.
    shape = KernelShape(8, 7168, 4096, 2, "bf16")
    configs = sp.expand(sp.load_space("vllm"))
    share = sum(sp.smem_bytes(shape, c, "down") > sp.HOPPER_SMEM_BYTES for c in configs) / len(configs)
    assert share == pytest.approx(0.27, abs=0.01)


def test_group_size_m_duplicates_are_pruned_and_named():
    space = _space(GROUP_SIZE_M=[1, 16, 32, 64])
    # One column of blocks (down GEMM, K=64 fits one 64-wide tile): grouping has nothing to reorder.
    down = _reasons(TINY, 16, _space(BLOCK_SIZE_N=[64], GROUP_SIZE_M=[1, 16, 32, 64]), gemm="down")
    assert down[(16, 64, 64, 1, 4, 2)] is None
    assert all("GROUP_SIZE_M=1" in down[(16, 64, 64, g, 4, 2)] for g in (16, 32, 64))
    # Several rows and columns: M=16, top2, E=4, BLOCK_SIZE_M=16 launches at most (32 + 4*15)/16 -> 6 rows,
    # so every GROUP_SIZE_M >= 6 is one group: 32 and 64 launch as 16; 1 is a different order.
    both = _reasons(TINY, 16, space)
    assert both[(16, 32, 64, 1, 4, 2)] is None and both[(16, 32, 64, 16, 4, 2)] is None
    assert "GROUP_SIZE_M=16" in both[(16, 32, 64, 32, 4, 2)] and "GROUP_SIZE_M=16" in both[(16, 32, 64, 64, 4, 2)]
    # A large batch has many rows: every GROUP_SIZE_M is its own launch.
    big = KernelShape(8, 4096, 4096, 2, "bf16")
    assert all(r is None for r in _reasons(big, 4096, _space(GROUP_SIZE_M=[1, 16, 32, 64])).values())


def test_block_quant_k_step_stays_inside_one_scale_block():
    shape = KernelShape(8, 512, 512, 2, "fp8_w8a8", block_shape=(96, 128))
    reasons = _reasons(shape, 256, _space(BLOCK_SIZE_M=[16], BLOCK_SIZE_N=[32, 64], BLOCK_SIZE_K=[64, 128, 256]))
    assert reasons[(16, 32, 64, 1, 4, 2)] is None  # 64 | 128
    assert reasons[(16, 64, 128, 1, 4, 2)] is None  # BLOCK_SIZE_N need not line up with 96
    assert "BLOCK_SIZE_K=256" in reasons[(16, 32, 256, 1, 4, 2)]  # one K step would span two scale blocks
    assert all(r is None or "block quant" not in r for r in _reasons(TINY, 8, _space(BLOCK_SIZE_N=[32, 64])).values())


def test_every_config_gets_exactly_one_verdict():
    result = sp.prune(KernelShape(8, 1024, 2048, 2, "bf16"), 64, sp.load_space("vllm"))
    assert len(result) == 1920
    kept = [c for c, r in result if r is None]
    assert 0 < len(kept) < 1920
    assert all(isinstance(r, str) and r for _, r in result if r is not None)
