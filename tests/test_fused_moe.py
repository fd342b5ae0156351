"""fused_experts against the float32 reference, on the GPU or (without one) in the Triton interpreter.

Bounds: fp16 1e-2; bf16 1e-2 on the GPU; quantized modes (bf16 activations) 3e-2 on the GPU, against a reference
that uses the same quantized weights and quantizes activations the same way. The interpreter rounds float32 ->
bfloat16 by truncation (the GPU rounds to nearest), which doubles the error of every bf16 store there (the
intermediate, whose fp8/int8 quantization then flips more often, and the output): bf16 gets 2e-2 and quantized
modes 5e-2 on the CPU (seen up to 3.5e-2 over 60 seeds on tiny fp8 shapes).
"""

import pytest
import torch

import moekernel
from moekernel.kernel.moe import make_runner, normalize_config
from moekernel.kernel.reference import fused_experts_ref, relative_error
from moekernel.shapes import KernelShape
from moekernel.kernel.testing import make_inputs

SMALL = dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=32, BLOCK_SIZE_K=32, GROUP_SIZE_M=1)
_CPU = not torch.cuda.is_available()
BOUND = {"fp16": 1e-2, "bf16": 2e-2 if _CPU else 1e-2,
         **{q: 5e-2 if _CPU else 3e-2 for q in ("fp8_w8a8", "int8_w8a16", "int8_w8a8")}}


def run_poisoned(inputs, config):
    """Run with every output and intermediate buffer filled with NaN first: an unwritten element shows."""
    call = make_runner(inputs, config)
    for buf in (call.ws.out, call.ws.down_out, call.ws.inter):
        buf.fill_(float("nan"))
    return call().clone()


def check(shape, M, config=SMALL, device="cpu", seed=0, routing="uniform"):
    inputs = make_inputs(shape, M, seed=seed, device=device, routing=routing)
    out = run_poisoned(inputs, config)
    ref = fused_experts_ref(**inputs.kwargs())
    assert out.shape == (M, shape.K) and out.dtype == inputs.hidden_states.dtype
    assert torch.isfinite(out).all(), "some output element was never written"
    err = relative_error(out, ref)
    assert err < BOUND[shape.dtype], f"{shape.key} M={M}: relative error {err:.2e}"
    return inputs, out


# Every dtype and quantization mode; rows of 16-byte multiples everywhere, so TMA can load them too (below).
DTYPE_SHAPES = [
    KernelShape(4, 40, 72, 2, "fp16"),  # N and K not multiples of any block size
    KernelShape(4, 40, 72, 2, "bf16"),
    KernelShape(4, 48, 64, 2, "fp8_w8a8"),
    KernelShape(4, 48, 96, 2, "fp8_w8a8", block_shape=(32, 32)),
    KernelShape(4, 48, 96, 2, "fp8_w8a8", per_channel=True),
    KernelShape(4, 48, 80, 2, "int8_w8a16"),
    KernelShape(4, 48, 64, 2, "int8_w8a8"),
    KernelShape(4, 48, 96, 2, "int8_w8a8", block_shape=(32, 32)),
    KernelShape(4, 48, 64, 2, "int8_w8a8", per_channel=True),
]


@pytest.mark.parametrize("shape", DTYPE_SHAPES, ids=lambda s: s.key)
@pytest.mark.parametrize("M", [1, 13])
def test_every_dtype_matches_reference(shape, M, device):
    check(shape, M, device=device)


@pytest.mark.parametrize("shape,M", [
    (KernelShape(1, 32, 48, 1, "fp16"), 5),  # one expert, top-1 (the down GEMM writes the output directly)
    (KernelShape(8, 32, 48, 8, "fp16"), 3),  # every token picks every expert
    (KernelShape(256, 16, 32, 8, "fp16"), 6),  # many experts, most of them empty
    (KernelShape(6, 24, 40, 3, "fp16"), 37),  # top-3, odd sizes everywhere
])
def test_edge_shapes(shape, M, device):
    check(shape, M, device=device)


def test_large_batch(device):
    cfg = dict(BLOCK_SIZE_M=64, BLOCK_SIZE_N=64, BLOCK_SIZE_K=32, GROUP_SIZE_M=4)
    check(KernelShape(8, 32, 32, 2, "fp16"), 4096, config=cfg, device=device)


def test_block_quant_with_tile_smaller_than_group(device):
    # Two K steps per quantization group; the group's scale must apply to both (fp8 dots need K >= 32 on GPUs).
    cfg = dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=32, BLOCK_SIZE_K=32, GROUP_SIZE_M=1)
    check(KernelShape(4, 128, 128, 2, "fp8_w8a8", block_shape=(64, 64)), 9, config=cfg, device=device)


def test_all_tokens_on_one_expert_column(device):
    shape = KernelShape(4, 32, 48, 2, "fp16")
    inputs = make_inputs(shape, 20, device=device)
    inputs.topk_ids[:, 0] = 2  # the first choice of every token is expert 2
    inputs.topk_ids[:, 1] = torch.where(inputs.topk_ids[:, 1] == 2, 3, inputs.topk_ids[:, 1])
    out = run_poisoned(inputs, SMALL)
    assert relative_error(out, fused_experts_ref(**inputs.kwargs())) < BOUND["fp16"]


def test_split_config_matches_single(device):
    shape = KernelShape(4, 40, 72, 2, "fp16")
    inputs = make_inputs(shape, 11, device=device)
    down = dict(SMALL, BLOCK_SIZE_N=64, BLOCK_SIZE_K=16)
    out = moekernel.fused_experts(**inputs.kwargs(), config={"up": SMALL, "down": down})
    assert relative_error(out, fused_experts_ref(**inputs.kwargs())) < BOUND["fp16"]


def test_expert_parallel_zeroes_tokens_without_local_experts(device):
    # 8 global experts, this rank holds experts 4..7 as local 0..3.
    shape = KernelShape(4, 32, 48, 2, "fp16")
    inputs = make_inputs(KernelShape(8, 32, 48, 2, "fp16"), 12, device=device)
    local = make_inputs(shape, 12, device=device, seed=3)
    inputs.w1, inputs.w2 = local.w1, local.w2
    inputs.expert_map = torch.tensor([-1, -1, -1, -1, 0, 1, 2, 3], dtype=torch.int32, device=device)
    inputs.topk_ids[:3] = torch.tensor([0, 1], dtype=torch.int32, device=device)  # all non-local
    inputs.topk_ids[3] = torch.tensor([2, 5], dtype=torch.int32, device=device)  # one local
    out = run_poisoned(inputs, SMALL)
    ref = fused_experts_ref(**inputs.kwargs())
    assert torch.all(out[:3] == 0)
    assert relative_error(out, ref) < BOUND["fp16"]


def test_expert_parallel_fp8_dynamic_scale_ignores_foreign_rows(device):
    shape = KernelShape(4, 32, 64, 2, "fp8_w8a8")
    inputs = make_inputs(shape, 10, device=device)
    inputs.expert_map = torch.tensor([0, -1, 1, -1, 2, 3], dtype=torch.int32, device=device)
    gen = torch.Generator().manual_seed(7)
    inputs.topk_ids = torch.randint(0, 6, (10, 2), dtype=torch.int32, generator=gen).to(device)
    out = run_poisoned(inputs, dict(SMALL, BLOCK_SIZE_K=64))
    assert relative_error(out, fused_experts_ref(**inputs.kwargs())) < BOUND["fp8_w8a8"]


def test_fused_moe_routes_then_computes(device):
    shape = KernelShape(8, 32, 48, 2, "fp16")
    inputs = make_inputs(shape, 9, device=device)
    out = moekernel.fused_moe(inputs.hidden_states, inputs.w1, inputs.w2, inputs.gating_output, 2, config=SMALL)
    weights, ids = moekernel.fused_topk(inputs.hidden_states, inputs.gating_output, 2)
    ref = fused_experts_ref(inputs.hidden_states, inputs.w1, inputs.w2, weights, ids)
    assert relative_error(out, ref) < BOUND["fp16"]


def test_override_config_is_used_instead_of_lookup(device, monkeypatch):
    import importlib

    fm = importlib.import_module("moekernel.kernel.moe")

    def no_lookup(*args, **kwargs):
        raise AssertionError("get_config must not be consulted inside override_config")

    monkeypatch.setattr(fm, "get_config", no_lookup)
    inputs = make_inputs(KernelShape(4, 32, 48, 2, "fp16"), 5, device=device)
    with moekernel.override_config(SMALL):
        out = moekernel.fused_experts(**inputs.kwargs())
    assert relative_error(out, fused_experts_ref(**inputs.kwargs())) < BOUND["fp16"]
    with pytest.raises(AssertionError, match="must not be consulted"):
        moekernel.fused_experts(**inputs.kwargs())


def test_default_config_when_nothing_tuned(device, tmp_path, monkeypatch):
    monkeypatch.setenv("MOEKERNEL_CONFIG_FOLDER", str(tmp_path))
    inputs = make_inputs(KernelShape(4, 32, 48, 2, "fp16"), 5, device=device)
    out = moekernel.fused_experts(**inputs.kwargs())
    assert relative_error(out, fused_experts_ref(**inputs.kwargs())) < BOUND["fp16"]


@pytest.mark.parametrize("bad,match", [
    (dict(SMALL, BLOCK_SIZE_M=24), "BLOCK_SIZE_M=24: must be a power of two >= 16"),
    ({"BLOCK_SIZE_M": 16}, "lacks BLOCK_SIZE_N"),
    ({"up": SMALL, "down": dict(SMALL, BLOCK_SIZE_M=32)}, "share BLOCK_SIZE_M"),
    (dict(SMALL, num_warps=3), "num_warps=3: must be one of 1, 2, 4, 8, 16"),
])
def test_bad_configs_are_named(bad, match):
    with pytest.raises(ValueError, match=match):
        normalize_config(bad)


def test_bad_arguments_are_named(device):
    inputs = make_inputs(KernelShape(4, 32, 48, 2, "fp8_w8a8"), 3, device=device)
    kwargs = inputs.kwargs()
    with pytest.raises(ValueError, match="needs w1_scale and w2_scale"):
        moekernel.fused_experts(**dict(kwargs, w1_scale=None), config=SMALL)
    with pytest.raises(ValueError, match="quant_dtype must be"):
        moekernel.fused_experts(**dict(kwargs, quant_dtype="fp4"), config=SMALL)
    with pytest.raises(ValueError, match=r"w2 \[E, 48, N\]; got"):
        moekernel.fused_experts(**dict(kwargs, w2=inputs.w2[:, :, :8]), config=SMALL)
    with pytest.raises(ValueError, match="activation"):
        moekernel.fused_experts(**kwargs, config=SMALL, activation="relu")


def test_non_contiguous_routing_tensors(device):
    inputs = make_inputs(KernelShape(8, 32, 48, 2, "fp16"), 9, device=device)
    ref = fused_experts_ref(**inputs.kwargs())
    inputs.topk_ids = inputs.topk_ids.t().contiguous().t()  # same values, column-major
    inputs.topk_weights = inputs.topk_weights.t().contiguous().t()
    assert not inputs.topk_ids.is_contiguous()
    out = moekernel.fused_experts(**inputs.kwargs(), config=SMALL)
    assert relative_error(out, ref) < BOUND["fp16"]


def test_scale_shapes_and_static_scales_are_checked(device):
    inputs = make_inputs(KernelShape(4, 32, 64, 2, "fp8_w8a8", per_channel=True), 3, device=device)
    kwargs = inputs.kwargs()
    with pytest.raises(ValueError, match=r"w1_scale must have shape \[4, 64\]"):
        moekernel.fused_experts(**dict(kwargs, w1_scale=inputs.w1_scale.reshape(64, 4)), config=SMALL)
    # Engines store per-channel scales with a trailing 1: accepted.
    out = moekernel.fused_experts(**dict(kwargs, w1_scale=inputs.w1_scale[..., None]), config=dict(SMALL, BLOCK_SIZE_K=64))
    assert relative_error(out, fused_experts_ref(**kwargs)) < BOUND["fp8_w8a8"]
    with pytest.raises(ValueError, match="static per-tensor scales"):
        moekernel.fused_experts(**dict(kwargs, a1_scale=torch.ones(1, device=device)), config=SMALL)


def test_down_runner_measures_configs_the_up_gemm_could_not_use(device):
    # BLOCK_SIZE_N=16 suits the down GEMM but not the up GEMM (gate and up halves); split tuning must time it.
    inputs = make_inputs(KernelShape(4, 40, 72, 2, "fp16"), 11, device=device)
    down = dict(SMALL, BLOCK_SIZE_N=16)
    make_runner(inputs, down, gemm="down")()
    make_runner(inputs, SMALL, gemm="up")()
    with pytest.raises(ValueError, match=r"BLOCK_SIZE_N=16: must be a power of two >= 32 \(for the up GEMM"):
        make_runner(inputs, down, gemm="both")


def test_up_gemm_needs_room_for_gate_and_up():
    with pytest.raises(ValueError, match=r"BLOCK_SIZE_N=16: must be a power of two >= 32 \(for the up GEMM"):
        normalize_config(dict(SMALL, BLOCK_SIZE_N=16))
    assert normalize_config({"up": SMALL, "down": dict(SMALL, BLOCK_SIZE_N=16)})[1]["BLOCK_SIZE_N"] == 16


def test_block_quant_rejects_k_tile_wider_than_group(device):
    inputs = make_inputs(KernelShape(4, 32, 64, 2, "fp8_w8a8", block_shape=(32, 32)), 3, device=device)
    with pytest.raises(ValueError, match="does not divide the quantization block"):
        moekernel.fused_experts(**inputs.kwargs(), config=dict(SMALL, BLOCK_SIZE_K=64))


# ---- split-K down GEMM ------------------------------------------------------------------------------------------

# N=100: four K steps of 32 in the down GEMM (the last one partial, so EVEN_K is false) for SPLIT_K up to 4.
SPLIT_SHAPES = [
    KernelShape(4, 100, 72, 2, "fp16"),
    KernelShape(4, 100, 72, 2, "bf16"),
    KernelShape(4, 128, 64, 2, "fp8_w8a8"),  # N a multiple of BLOCK_SIZE_K: EVEN_K
    KernelShape(4, 100, 128, 2, "fp8_w8a8", block_shape=(128, 128)),
    KernelShape(4, 100, 64, 2, "fp8_w8a8", per_channel=True),
    KernelShape(4, 100, 72, 2, "int8_w8a16"),
    KernelShape(4, 100, 64, 2, "int8_w8a8"),
]
SPLIT = dict(SMALL, BLOCK_SIZE_N=64)  # fewer up-GEMM programs keep the interpreter quick


def static_scales(inputs):
    """Static per-tensor activation scales, as a checkpoint ships them (the reference uses the same)."""
    inputs.a1_scale = (inputs.hidden_states.abs().amax().float() / 448).reshape(1)
    inputs.a2_scale = torch.tensor([4 / 448], dtype=torch.float32, device=inputs.hidden_states.device)
    return inputs


def check_split(inputs, config, bound, again=False):
    call = make_runner(inputs, config)
    for buf in (call.ws.out, call.ws.down_out, call.ws.inter):
        buf.fill_(float("nan"))
    out = call().clone()
    ref = fused_experts_ref(**inputs.kwargs())
    assert torch.isfinite(out).all(), "some output element was never written"
    err = relative_error(out, ref)
    assert err < bound, f"relative error {err:.2e}"
    if again:
        # The partial sums start from zero on every call, not from the last call's.
        assert relative_error(call(), out) < 1e-3
    return call, out


@pytest.mark.parametrize("split_k", [2, 4])
@pytest.mark.parametrize("M", [1, 13])
@pytest.mark.parametrize("shape,static", [(s, False) for s in SPLIT_SHAPES] + [(SPLIT_SHAPES[2], True)],
                         ids=lambda v: v.key if isinstance(v, KernelShape) else ("static" if v else "dynamic"))
def test_split_k_matches_reference(shape, static, M, split_k, device):
    inputs = make_inputs(shape, M, device=device, seed=M)
    if static:
        static_scales(inputs)
    call, _ = check_split(inputs, dict(SPLIT, SPLIT_K=split_k), BOUND[shape.dtype])
    assert call.ws.down_out.dtype == torch.float32 and call.ws.split_k == split_k


@pytest.mark.parametrize("split_k", [2, 4])
def test_split_k_top1_sums_instead_of_writing_directly(split_k, device):
    inputs = make_inputs(KernelShape(4, 100, 72, 1, "fp16"), 9, device=device)
    call, _ = check_split(inputs, dict(SPLIT, SPLIT_K=split_k), BOUND["fp16"], again=True)
    assert not call.ws.direct


@pytest.mark.parametrize("own", [{"SPLIT_K": 2}, {"TMA": 2}, {"PERSISTENT": 1}], ids=["split-k", "tma", "persistent"])
@pytest.mark.parametrize("dtype", ["fp16", "fp8_w8a8"])
def test_own_parameters_with_expert_parallel(dtype, own, device):
    # 6 global experts, this rank holds 0, 2, 4 and 5; tokens 0-2 pick only foreign ones and must come out zero.
    inputs = make_inputs(KernelShape(4, 128, 64, 2, dtype), 10, device=device)
    inputs.expert_map = torch.tensor([0, -1, 1, -1, 2, 3], dtype=torch.int32, device=device)
    gen = torch.Generator().manual_seed(7)
    inputs.topk_ids = torch.randint(0, 6, (10, 2), dtype=torch.int32, generator=gen).to(device)
    inputs.topk_ids[:3] = torch.tensor([1, 3], dtype=torch.int32, device=device)
    _, out = check_split(inputs, dict(SPLIT, **own), BOUND[dtype])
    assert torch.all(out[:3] == 0)


def test_split_k_in_a_split_config_and_more_splits_than_k_steps(device):
    # SPLIT_K=8 over four K steps: half the programs have nothing to add.
    inputs = make_inputs(KernelShape(4, 100, 72, 2, "fp16"), 5, device=device)
    check_split(inputs, {"up": SPLIT, "down": dict(SMALL, SPLIT_K=8)}, BOUND["fp16"])


@pytest.mark.parametrize("bad,match", [
    (dict(SMALL, SPLIT_K=3), "SPLIT_K=3: must be a power of two"),
    (dict(SMALL, SPLIT_K=0), "SPLIT_K=0: must be a power of two >= 1"),
    ({"up": SMALL, "down": dict(SMALL, SPLIT_K=2.0)}, "SPLIT_K=2.0: must be"),
    ({"up": dict(SMALL, SPLIT_K=2), "down": SMALL}, "SPLIT_K=2: must be one of 1 .it applies to the down GEMM only"),
    (dict(SMALL, TMA=3), "TMA=3: must be one of 0, 1, 2"),
    ({"up": SMALL, "down": dict(SMALL, TMA=-1)}, "TMA=-1: must be one of 0, 1, 2"),
    (dict(SMALL, PERSISTENT=2), "PERSISTENT=2: must be one of 0, 1"),
    ({"up": dict(SMALL, PERSISTENT=1), "down": SMALL}, "PERSISTENT=1: must be one of 0 .it applies to the down GEMM"),
    (dict(SMALL, BLOCK_SIZE_M=32, HALF_TAIL=2), "HALF_TAIL=2: must be one of 0, 1"),
    (dict(SMALL, HALF_TAIL=1), "HALF_TAIL=1 with BLOCK_SIZE_M=16: needs BLOCK_SIZE_M >= 32"),
    (dict(SMALL, BLOCK_SIZE_M=32, HALF_TAIL=1, PERSISTENT=1), "HALF_TAIL=1 with PERSISTENT=1: .* set one of them to 0"),
])
def test_bad_own_parameter_is_named(bad, match):
    with pytest.raises(ValueError, match=match):
        normalize_config(bad)


def test_split_k_goes_to_the_down_gemm():
    up, down = normalize_config(dict(SMALL, SPLIT_K=4))
    assert (up["SPLIT_K"], down["SPLIT_K"]) == (1, 4)
    assert normalize_config({"up": dict(SMALL, SPLIT_K=1), "down": SMALL})[1]["SPLIT_K"] == 1
    assert normalize_config(SMALL)[1]["SPLIT_K"] == 1


TMA_MIXES = {
    "weights": dict(SMALL, TMA=1),
    "both": dict(SMALL, TMA=2),
    "up-both-down-weights": {"up": dict(SMALL, TMA=2), "down": dict(SMALL, TMA=1)},
    "up-weights-down-both": {"up": dict(SMALL, TMA=1), "down": dict(SMALL, TMA=2)},
}


@pytest.mark.parametrize("shape", DTYPE_SHAPES, ids=lambda s: s.key)
def test_tma_matches_reference(shape, device):
    check(shape, 13, config=TMA_MIXES["both"], device=device)


@pytest.mark.parametrize("mix", list(TMA_MIXES))
@pytest.mark.parametrize("shape", DTYPE_SHAPES[1:4], ids=lambda s: s.key)
@pytest.mark.parametrize("M", [1, 13])
def test_tma_mixes_match_reference(shape, mix, M, device):
    check(shape, M, config=TMA_MIXES[mix], device=device, seed=M)


@pytest.mark.parametrize("shape,M", [
    (KernelShape(1, 32, 48, 1, "fp16"), 5),
    (KernelShape(8, 32, 48, 8, "fp16"), 3),
    (KernelShape(256, 16, 32, 8, "fp16"), 6),
    (KernelShape(6, 24, 40, 3, "fp16"), 37),
])
def test_tma_edge_shapes(shape, M, device):
    check(shape, M, config=TMA_MIXES["both"], device=device)


def test_tma_sorted_intermediate_holds_zeros_in_padding_slots(device):
    # The down GEMM loads whole blocks of the intermediate: padding slots must be written (zeros), not left NaN.
    inputs = make_inputs(DTYPE_SHAPES[0], 7, device=device)
    call = make_runner(inputs, TMA_MIXES["both"])
    call.ws.inter.fill_(float("nan"))
    call()
    used = int(call.ws.num_post.item())
    ids = call.ws.sorted_ids[:used].long()
    padding = ids >= 7 * 2
    assert call.ws.inter.shape[0] == call.ws.sorted_ids.numel() and padding.any()
    assert torch.all(call.ws.inter[:used][padding] == 0)
    assert torch.isfinite(call.ws.inter[:used]).all()


@pytest.mark.parametrize("shape,static", [
    (KernelShape(4, 104, 72, 2, "bf16"), False),  # the last K step of the down GEMM partial
    (SPLIT_SHAPES[2], True),
    (KernelShape(4, 112, 128, 2, "fp8_w8a8", block_shape=(128, 128)), False),
], ids=["bf16", "fp8-static", "fp8-block"])
def test_tma_with_split_k(shape, static, device):
    inputs = make_inputs(shape, 13, device=device)
    if static:
        static_scales(inputs)
    check_split(inputs, dict(SPLIT, SPLIT_K=2, TMA=2), BOUND[shape.dtype], again=True)


def test_tma_reads_weights_whose_rows_are_padded(device):
    # Weights that are a slice of wider rows (row stride K + 8): the descriptor must step by the real stride.
    inputs = make_inputs(DTYPE_SHAPES[0], 9, device=device)
    for name in ("w1", "w2"):
        w = getattr(inputs, name)
        wide = torch.zeros(*w.shape[:2], w.shape[2] + 8, dtype=w.dtype, device=device)
        wide[:, :, :w.shape[2]] = w
        setattr(inputs, name, wide[:, :, :w.shape[2]])
    out = make_runner(inputs, dict(SMALL, TMA=2))()
    assert relative_error(out, fused_experts_ref(**inputs.kwargs())) < BOUND["fp16"]


def test_tma_refuses_rows_a_descriptor_cannot_hold(device):
    # int8 weights with N=40: each w2 row is 40 bytes, not a multiple of 16.
    inputs = make_inputs(KernelShape(4, 40, 72, 2, "int8_w8a16"), 3, device=device)
    with pytest.raises(ValueError, match="TMA needs the weights with contiguous rows, 16-byte aligned"):
        make_runner(inputs, dict(SMALL, TMA=1))()
    check(KernelShape(4, 40, 72, 2, "int8_w8a16"), 3, config=SMALL, device=device)  # TMA=0 runs it


# ---- persistent down GEMM ------------------------------------------------------------------------------------------
# In the interpreter a persistent GEMM has 3 programs (moekernel.kernel.moe._INTERPRETER_PROGRAMS): each walks
# several tiles, so a tile computed from the previous tile's state shows.

@pytest.mark.parametrize("shape", DTYPE_SHAPES, ids=lambda s: s.key)
@pytest.mark.parametrize("M", [1, 13])
def test_persistent_matches_reference(shape, M, device):
    check(shape, M, config=dict(SMALL, PERSISTENT=1, GROUP_SIZE_M=4), device=device, seed=M)


@pytest.mark.parametrize("own", [
    {"TMA": 2}, {"TMA": 1, "SPLIT_K": 2}, {"up": dict(SMALL, TMA=2), "down": dict(SMALL, PERSISTENT=1)},
], ids=["tma", "tma-weights-split-k", "split-config"])
@pytest.mark.parametrize("shape", [DTYPE_SHAPES[1], SPLIT_SHAPES[2],
                                   KernelShape(4, 112, 128, 2, "fp8_w8a8", block_shape=(128, 128))],
                         ids=lambda s: s.key)
def test_persistent_with_other_own_parameters(shape, own, device):
    config = own if "up" in own else dict(SPLIT, PERSISTENT=1, **own)
    inputs = make_inputs(shape, 13, device=device)
    check_split(inputs, config, BOUND[shape.dtype], again=True)


@pytest.mark.parametrize("shape,M", [
    (KernelShape(1, 32, 48, 1, "fp16"), 5),
    (KernelShape(256, 16, 32, 8, "fp16"), 6),
    (KernelShape(6, 24, 40, 3, "fp16"), 37),
])
def test_persistent_edge_shapes(shape, M, device):
    check(shape, M, config=dict(SMALL, PERSISTENT=1), device=device)


def test_persistent_goes_to_the_down_gemm():
    up, down = normalize_config(dict(SMALL, PERSISTENT=1))
    assert (up["PERSISTENT"], down["PERSISTENT"]) == (0, 1)


# ---- half tiles for the blocks that are half padding (HALF_TAIL) --------------------------------------------------
HALF = dict(SMALL, BLOCK_SIZE_M=32, HALF_TAIL=1)


def runs_ending_in_both_halves(inputs):
    """Top-2 over 4 experts routed so that, in blocks of 32, expert 1's run (every token) ends in its block's second
    half and the other runs in their first halves: both of HALF_TAIL's paths run."""
    ids = inputs.topk_ids
    t = torch.arange(ids.shape[0], device=ids.device)
    ids[:, 0] = 1
    ids[:, 1] = torch.where(t % 4 == 1, 0, t % 4)
    return inputs


def half_and_full_blocks(call) -> tuple[int, int]:
    """(blocks whose second half is padding, blocks whose second half holds tokens) of a call's last alignment."""
    bm, used = call.up_cfg["BLOCK_SIZE_M"], int(call.ws.num_post.item())
    second_half = call.ws.sorted_ids[:used].view(-1, bm)[:, bm // 2]
    padding = int((second_half >= call.ws.numel).sum())
    return padding, used // bm - padding


@pytest.mark.parametrize("shape", DTYPE_SHAPES, ids=lambda s: s.key)
def test_half_tail_matches_reference(shape, device):
    inputs = runs_ending_in_both_halves(make_inputs(shape, 29, device=device))
    call, _ = check_split(inputs, HALF, BOUND[shape.dtype])
    half, full = half_and_full_blocks(call)
    assert half and full


@pytest.mark.parametrize("own", [
    {"TMA": 2}, {"TMA": 1, "SPLIT_K": 2}, {"up": dict(HALF, TMA=2), "down": dict(HALF, PERSISTENT=0, SPLIT_K=2)},
    {"up": HALF, "down": dict(SMALL, BLOCK_SIZE_M=32, PERSISTENT=1)},
], ids=["tma", "tma-weights-split-k", "split-config", "down-persistent"])
@pytest.mark.parametrize("shape", [DTYPE_SHAPES[1], SPLIT_SHAPES[2],
                                   KernelShape(4, 112, 128, 2, "fp8_w8a8", block_shape=(128, 128))],
                         ids=lambda s: s.key)
def test_half_tail_with_other_own_parameters(shape, own, device):
    config = own if "up" in own else dict(HALF, BLOCK_SIZE_N=64, **own)
    inputs = runs_ending_in_both_halves(make_inputs(shape, 29, device=device))
    check_split(inputs, config, BOUND[shape.dtype], again=True)


@pytest.mark.parametrize("shape,M", [
    (KernelShape(1, 32, 48, 1, "fp16"), 5),  # one expert, one block, half padding: top-1 writes rows directly
    (KernelShape(1, 32, 48, 1, "fp16"), 29),  # ... its second half holding tokens
    (KernelShape(256, 16, 32, 8, "fp16"), 6),
    (KernelShape(6, 24, 40, 3, "fp16"), 37),
])
def test_half_tail_edge_shapes(shape, M, device):
    check(shape, M, config=HALF, device=device)


def test_half_tail_sorted_intermediate_holds_zeros_in_padding_slots(device):
    # A half tile leaves its block's second half to the zeros the down GEMM's TMA loads of whole blocks need.
    inputs = runs_ending_in_both_halves(make_inputs(DTYPE_SHAPES[0], 29, device=device))
    call = make_runner(inputs, dict(HALF, TMA=2))
    call.ws.inter.fill_(float("nan"))
    call()
    used = int(call.ws.num_post.item())
    padding = call.ws.sorted_ids[:used].long() >= call.ws.numel
    assert half_and_full_blocks(call)[0] and padding.any()
    assert torch.all(call.ws.inter[:used][padding] == 0)
    assert torch.isfinite(call.ws.inter[:used]).all()


# ---- GPU only ---------------------------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("dtype,extra", [
    ("bf16", {}), ("fp16", {}), ("fp8_w8a8", {}), ("fp8_w8a8", {"block_shape": (128, 128)}),
    ("fp8_w8a8", {"per_channel": True}), ("int8_w8a16", {}), ("int8_w8a8", {}), ("int8_w8a8", {"per_channel": True}),
])
@pytest.mark.parametrize("M", [1, 64, 1000, 3000])  # 3000: the alignment in several programs
def test_gpu_realistic_shapes(dtype, extra, M):
    # Mixtral's expert shape at tp=8 with a quarter of the experts, to keep the reference quick.
    shape = KernelShape(8, 1792, 4096, 2, dtype, **extra)
    bound = 1e-2 if dtype in ("bf16", "fp16") else 3e-2
    small_m = dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=128, BLOCK_SIZE_K=128, GROUP_SIZE_M=1, num_warps=4, num_stages=4)
    large_m = dict(BLOCK_SIZE_M=128, BLOCK_SIZE_N=256, BLOCK_SIZE_K=64, GROUP_SIZE_M=16, num_warps=8, num_stages=3)
    for cfg in (small_m, dict(small_m, SPLIT_K=2), dict(small_m, SPLIT_K=4), large_m, dict(small_m, TMA=1),
                dict(small_m, TMA=2, SPLIT_K=2), dict(large_m, TMA=2), dict(small_m, PERSISTENT=1),
                dict(small_m, PERSISTENT=1, SPLIT_K=2), dict(large_m, PERSISTENT=1, TMA=2),
                {"up": dict(large_m, TMA=1), "down": dict(large_m, TMA=2)}, dict(large_m, HALF_TAIL=1),
                dict(large_m, HALF_TAIL=1, TMA=2), dict(large_m, BLOCK_SIZE_M=64, num_warps=4, HALF_TAIL=1, TMA=1),
                dict(small_m, BLOCK_SIZE_M=32, HALF_TAIL=1, SPLIT_K=2)):
        inputs = make_inputs(shape, M, device="cuda", seed=M)
        out = run_poisoned(inputs, cfg)
        err = relative_error(out, fused_experts_ref(**inputs.kwargs()))
        assert err < bound, f"{shape.key} M={M} {cfg}: {err:.2e}"


@pytest.mark.cuda
@pytest.mark.parametrize("split_k,tma,persistent,half_tail", [
    (1, 0, 0, 0), (2, 0, 0, 0), (1, 2, 0, 0), (1, 0, 1, 0), (2, 2, 1, 0), (1, 2, 0, 1), (2, 1, 0, 1)])
def test_gpu_cuda_graph_replay_matches_eager(split_k, tma, persistent, half_tail):
    # Two partials added to zero give the same sum in either order, so SPLIT_K=2 is bit-exact too (4 need not be).
    shape = KernelShape(8, 256, 512, 2, "bf16")
    inputs = make_inputs(shape, 33, device="cuda")
    call = make_runner(inputs, dict(SMALL, BLOCK_SIZE_M=32 if half_tail else 16, BLOCK_SIZE_N=64, BLOCK_SIZE_K=64,
                                    SPLIT_K=split_k, TMA=tma, PERSISTENT=persistent, HALF_TAIL=half_tail))
    eager = call().clone()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call()
    call.ws.out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(call.ws.out, eager)


def _compiled_binaries(fn) -> int:
    # Triton keeps, per device, a dict of the binaries compiled for each specialisation of a kernel.
    return sum(len(entry[0]) for entry in fn.device_caches.values())


@pytest.mark.cuda
@pytest.mark.parametrize("split_k,tma,persistent,half_tail", [
    (1, 0, 0, 0), (2, 0, 0, 0), (1, 2, 0, 0), (1, 2, 1, 0), (1, 2, 0, 1)])
@pytest.mark.parametrize("extra", [{"block_shape": (128, 128)}, {}, None], ids=["block", "per-tensor", "bf16"])
def test_gpu_compile_config_builds_the_binary_the_launch_uses(extra, split_k, tma, persistent, half_tail):
    from moekernel.kernel import _kernels
    from moekernel.kernel.moe import compile_config

    shape = KernelShape(8, 256, 512, 2, "bf16") if extra is None else KernelShape(8, 256, 512, 2, "fp8_w8a8", **extra)
    cfg = dict(BLOCK_SIZE_M=32, BLOCK_SIZE_N=64, BLOCK_SIZE_K=128, GROUP_SIZE_M=1, num_warps=4, num_stages=3,
               SPLIT_K=split_k, TMA=tma, PERSISTENT=persistent, HALF_TAIL=half_tail)
    compile_config(shape, 77, cfg)
    kernels = (_kernels._fused_moe_gemm, _kernels._moe_sum, _kernels._gather_sorted_rows)
    before = [_compiled_binaries(k) for k in kernels]
    for M in (77, 1):
        check(shape, M, config=cfg, device="cuda")
    # A launch whose arguments specialise differently (say, a pointer off 16-byte alignment) would compile anew,
    # and the tuner's parallel compiling would be wasted. The split-K variant adds a float32 down output, which
    # the top-k sum reads: both kernels' binaries must come from compile_config. At another M the grid differs
    # (and a persistent grid's program count), never the binary.
    assert [_compiled_binaries(k) for k in kernels] == before
