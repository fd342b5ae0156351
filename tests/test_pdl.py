"""Programmatic dependent launch (moekernel.kernel.pdl): its setting, and on the GPU that the op's kernels, launched
early, still read only what the kernel before them has written. (That each compiled kernel waits for the one before
it is checked by test_hopper_compile.py, on the CPU.)"""

import dataclasses

import pytest
import torch

from moekernel.kernel import pdl
from moekernel.kernel.moe import make_runner
from moekernel.kernel.reference import fused_experts_ref, relative_error
from moekernel.kernel.testing import make_inputs
from moekernel.shapes import KernelShape


def test_a_bad_setting_is_named(monkeypatch):
    monkeypatch.setenv(pdl.ENV_VAR, "yes")
    with pytest.raises(ValueError, match="MOEKERNEL_PDL must be 0 .* or 1"):
        pdl.active()
    with pdl.forced(False):  # forced() is what the probe uses: the environment is not read then
        assert not pdl.active()


def test_off_by_setting_and_never_in_the_interpreter(monkeypatch):
    monkeypatch.setenv(pdl.ENV_VAR, "0")
    assert pdl.launch_meta() == {"PDL": False, "launch_pdl": False}
    if not torch.cuda.is_available():
        # The kernels run as Python there: nothing to overlap, and no instruction to wait with.
        with pdl.forced(True):
            assert not pdl.active()


# ---- GPU only ---------------------------------------------------------------------------------------------------

# Each a chain of launches: per-tensor fp8 quantizes x and the intermediate in launches of their own, split-K zeroes
# its float32 output first, TMA=2 gathers the sorted rows, M = 3000 aligns in three launches; an expert map too.
GPU_CASES = [
    ("bf16", {}, 4, False, dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=64, BLOCK_SIZE_K=64, GROUP_SIZE_M=1, SPLIT_K=2)),
    ("fp8_w8a8", {}, 4, True, dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=64, BLOCK_SIZE_K=128, GROUP_SIZE_M=1)),
    ("fp8_w8a8", {}, 64, False, dict(BLOCK_SIZE_M=64, BLOCK_SIZE_N=64, BLOCK_SIZE_K=128, GROUP_SIZE_M=1, TMA=2)),
    ("fp8_w8a8", {"block_shape": (128, 128)}, 3000, False,
     dict(BLOCK_SIZE_M=64, BLOCK_SIZE_N=128, BLOCK_SIZE_K=128, GROUP_SIZE_M=8)),
    ("int8_w8a8", {"per_channel": True}, 33, False, dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=64, BLOCK_SIZE_K=64,
                                                          GROUP_SIZE_M=1, PERSISTENT=1)),
]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype,extra,M,expert_parallel,cfg", GPU_CASES,
                         ids=["bf16-4-split-k", "fp8-4-expert-map", "fp8-64-tma2", "fp8-block-3000",
                              "int8-channel-33-persistent"])
def test_gpu_a_chain_of_calls_in_one_graph_reads_each_output_once_written(dtype, extra, M, expert_parallel, cfg):
    # Three calls, each taking the previous call's output (a buffer of its workspace) as its hidden states, captured
    # in one graph: a kernel that ran ahead of the one before it would read an output not yet written. Launched
    # without PDL, one after another, they are the baseline; with it they must give the same bits.
    shape = KernelShape(8, 512, 1024, 2, dtype, **extra)
    inputs = make_inputs(shape, M, device="cuda", seed=M)
    if expert_parallel:  # 16 experts in all, the even ones here
        routed = make_inputs(dataclasses.replace(shape, E=16), M, device="cuda", seed=M + 1)
        inputs = dataclasses.replace(inputs, topk_ids=routed.topk_ids, topk_weights=routed.topk_weights,
                                     expert_map=torch.tensor([g // 2 if g % 2 == 0 else -1 for g in range(16)],
                                                             dtype=torch.int32, device="cuda"))
    with pdl.forced(True):
        assert pdl.active(), "an H100/H200 launches with PDL"
        calls = [make_runner(inputs, cfg)]
        for _ in range(2):
            calls.append(make_runner(dataclasses.replace(inputs, hidden_states=calls[-1].ws.out), cfg))
        for call in calls:
            call()  # compile before capturing
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for call in calls:
                call()
    from moekernel.kernel import _kernels

    binaries = [k for cache in _kernels._fused_moe_gemm.device_caches.values() for k in cache[0].values()]
    assert any(k.metadata.launch_pdl and "griddepcontrol.wait" in k.asm["ptx"] for k in binaries)
    with pdl.forced(False):
        expected = []
        for call in calls:
            expected.append(call().clone())
        torch.cuda.synchronize()
    first = fused_experts_ref(**inputs.kwargs())
    assert relative_error(expected[0], first) < 3e-2
    for _ in range(3):
        for call in calls:
            call.ws.out.fill_(float("nan"))
            call.ws.inter.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        for i, (call, want) in enumerate(zip(calls, expected)):
            assert torch.equal(call.ws.out, want), f"call {i} of the chain differs with PDL"
