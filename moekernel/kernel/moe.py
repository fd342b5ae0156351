"""The fused MoE: align tokens by expert, up GEMM with the activation fused in, down GEMM, sum over top-k.

Launches per call: the alignment (one kernel, or three beyond 2048 tokens x top-k: moekernel.kernel.routing),
one up-GEMM kernel (x·w1 gate and up halves with silu(gate)*up in its epilogue, so the [tokens, 2N] intermediate
never reaches memory), activation quantization where the dtype needs it, one down-GEMM kernel (routing weight in
its epilogue) and one top-k sum (skipped for top-1 without an expert map). A down GEMM with SPLIT_K > 1 adds one
zero fill of its float32 output, and always needs the sum.

Config semantics match the engines' files: BLOCK_SIZE_N of the up GEMM counts weight rows, gate and up together,
so a file tuned for vLLM's kernel puts the same tile footprint on this one. Beyond the engines' six parameters a
config may carry moekernel's own (moekernel.launch_params.EXTENDED_PARAMS): SPLIT_K splits the down GEMM's
reduction over N between SPLIT_K programs per output tile; TMA loads a GEMM's weight tiles (1) or its weight and
activation tiles (2) through TMA descriptors. TMA=2 on the up GEMM adds one launch that gathers x into
expert-sorted rows; TMA=2 on the down GEMM makes the up GEMM write the intermediate in that order. PERSISTENT
walks the down GEMM's tiles with one program per SM; HALF_TAIL computes the row blocks that are half padding with
tiles of half the rows.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import triton
from triton.tools.tensor_descriptor import TensorDescriptor

from ..backend import interpreted
from ..configs import get_config
from ..dtypes import QUANT_DTYPES, QuantMode
from ..dtypes import info as dtype_info
from .. import launch_params
from ..heuristics import default_config, is_split, up_down
from ..launch_params import EXTENDED_PARAMS, PARAMS, TMA_BOTH, TMA_OFF
from . import _kernels, pdl
from .quant import expected_scale_shape, quantize_activations, quantize_per_tensor, scale_strides, storage_dtype
from .routing import align_buffers, fused_topk, launch_align, warmup_args

_OVERRIDES: list = []


@contextlib.contextmanager
def override_config(config):
    """Every fused_experts call inside the block uses ``config`` (a dict of launch parameters or
    {"up":, "down":})."""
    normalize_config(config)
    _OVERRIDES.append(config)
    try:
        yield
    finally:
        _OVERRIDES.pop()


def _check_one(cfg: dict, gemm: str, where: str) -> dict:
    """The six parameters of a config driving ``gemm`` (num_warps and num_stages default to 4 and 3), checked
    against moekernel.launch_params."""
    if not isinstance(cfg, dict):
        raise TypeError(f"{where} config must be a dict of {', '.join(PARAMS)}; got {type(cfg).__name__}")
    missing = [p for p in PARAMS[:4] if p not in cfg]
    if missing:
        raise ValueError(f"{where} config lacks {', '.join(missing)} (needs {', '.join(PARAMS)})")
    out = {p: cfg.get(p, default) for p, default in zip(PARAMS, (None, None, None, None, 4, 3))}
    out.update({p: cfg.get(p, default) for p, default in EXTENDED_PARAMS.items()})
    refused = launch_params.problems(out, gemm)
    if refused:
        raise ValueError(f"{where} config: " + "; ".join(refused))
    return out


def normalize_config(config) -> tuple[dict, dict]:
    """(up, down) configs, every parameter filled in (EXTENDED_PARAMS at their defaults), from one dict for both
    GEMMs (its SPLIT_K applies to the down GEMM) or {"up": dict, "down": dict}."""
    split = is_split(config)
    raw_up, raw_down = up_down(config)
    up = _check_one(raw_up, "up", "up" if split else "fused-MoE")
    down = _check_one(raw_down, "down", "down" if split else "fused-MoE")
    if up["BLOCK_SIZE_M"] != down["BLOCK_SIZE_M"]:
        raise ValueError(
            "up and down configs must share BLOCK_SIZE_M (one token alignment feeds both GEMMs); got "
            f"{up['BLOCK_SIZE_M']} and {down['BLOCK_SIZE_M']}"
        )
    return up, down


class _Spec:
    """The validated arguments of one fused_experts call: sizes, quantization mode, scale tensors."""

    def __init__(self, hidden_states, w1, w2, topk_ids, quant_dtype, w1_scale, w2_scale, a1_scale, a2_scale,
                 block_shape, per_channel, expert_map, activation):
        if activation != "silu":
            raise ValueError(f"activation {activation!r} is not supported; supported: 'silu'")
        if hidden_states.dim() != 2:
            raise ValueError(f"hidden_states must be [M, K], got shape {tuple(hidden_states.shape)}")
        if hidden_states.dtype not in (torch.bfloat16, torch.float16):
            raise ValueError(f"hidden_states must be bfloat16 or float16, got {hidden_states.dtype}")
        self.M, self.K = hidden_states.shape
        if w1.dim() != 3 or w2.dim() != 3:
            raise ValueError(f"w1 and w2 must be [E, 2N, K] and [E, K, N]; got {tuple(w1.shape)}, {tuple(w2.shape)}")
        self.E, two_n, k1 = w1.shape
        self.N = two_n // 2
        if two_n % 2 or k1 != self.K or tuple(w2.shape) != (self.E, self.K, self.N):
            raise ValueError(
                f"with hidden_states [M, {self.K}], w1 must be [E, 2N, {self.K}] and w2 [E, {self.K}, N]; "
                f"got w1 {tuple(w1.shape)}, w2 {tuple(w2.shape)}"
            )
        if topk_ids.dim() != 2 or topk_ids.shape[0] != self.M:
            raise ValueError(f"topk_ids must be [M={self.M}, topk], got {tuple(topk_ids.shape)}")
        self.topk = topk_ids.shape[1]
        self.dtype = hidden_states.dtype
        self.quant_dtype = quant_dtype
        self.block_shape = tuple(block_shape) if block_shape is not None else None
        self.per_channel = per_channel
        self.has_map = expert_map is not None
        self.scales = (w1_scale, w2_scale, a1_scale, a2_scale)
        self.mode = self._mode(w1, w2)
        self.int_acc = quant_dtype is not None and dtype_info(quant_dtype).int_accumulate
        if self.mode in (QuantMode.PER_CHANNEL, QuantMode.BLOCK) and (a1_scale is not None or
                                                                       a2_scale is not None):
            raise ValueError("a1_scale/a2_scale are static per-tensor scales; per-channel and block-wise modes "
                             "quantize activations dynamically per token, so pass None")

    def _mode(self, w1, w2) -> QuantMode:
        qd = self.quant_dtype
        if qd is None:
            if w1.dtype != self.dtype or w2.dtype != self.dtype:
                raise ValueError(
                    f"unquantized weights must have the hidden dtype {self.dtype}; got {w1.dtype}, {w2.dtype} "
                    "(pass quant_dtype for fp8/int8 weights)"
                )
            if self.block_shape is not None or self.per_channel:
                raise ValueError("block_shape and per_channel need a quant_dtype")
            return QuantMode.NONE
        try:
            facts = dtype_info(qd)
        except ValueError:
            facts = None
        if facts is None or not facts.quantized:
            raise ValueError(f"quant_dtype must be None or one of {', '.join(QUANT_DTYPES)}; got {qd!r}")
        want = storage_dtype(qd)
        if w1.dtype != want or w2.dtype != want:
            raise ValueError(f"{qd} needs {want} weights; got {w1.dtype}, {w2.dtype}")
        w1_scale, w2_scale = self.scales[:2]
        if w1_scale is None or w2_scale is None:
            raise ValueError(f"{qd} needs w1_scale and w2_scale")
        mode = facts.mode(self.block_shape, self.per_channel)
        E, N, K = self.E, self.N, self.K
        self._expect(w1_scale, expected_scale_shape(mode, E, 2 * N, K, self.block_shape), "w1_scale")
        self._expect(w2_scale, expected_scale_shape(mode, E, K, N, self.block_shape), "w2_scale")
        return mode

    @staticmethod
    def _expect(t, shape, name):
        # Engines also store per-channel and per-tensor scales with a trailing 1 ([E, rows, 1], [E, 1]).
        if tuple(t.shape) not in (tuple(shape), tuple(shape) + (1,)):
            raise ValueError(f"{name} must have shape {list(shape)}, got {list(t.shape)}")

    def activation_quant(self, x, interpret):
        """Quantize a GEMM's A operand dynamically: per row and group (block), or per row (per-channel)."""
        group_k = self.block_shape[1] if self.mode == QuantMode.BLOCK else None
        return quantize_activations(x, self.quant_dtype, group_k=group_k, interpret=interpret)


_AMAX_STRIDE = 4  # float32 slots: 16 bytes


class _Workspace:
    """Every buffer one fused call needs, allocated up front so the call can be replayed in a CUDA graph."""

    def __init__(self, spec: _Spec, block_m: int, split_k: int, sorted_inter: bool, device):
        self.numel = numel = spec.M * spec.topk
        self.sorted_ids, self.expert_ids, self.num_post, self.cursor = align_buffers(numel, spec.E, block_m, device)
        # The intermediate's rows are tokens x top-k, or, for a down GEMM that loads it by TMA, the slots of the
        # sorted ids (padding slots included, so each block's rows are contiguous).
        self.sorted_inter = sorted_inter
        inter_rows = self.sorted_ids.numel() if sorted_inter else numel
        self.inter = torch.empty((inter_rows, spec.N), dtype=spec.dtype, device=device)
        # Running maxima for dynamic per-tensor scales: slot 0 of x, slot 1 of the intermediate (gathered by the up
        # GEMM over the rows it writes, so rows of non-local experts never count). Zeroed by the align kernel.
        # Slots sit 16 bytes apart: Triton specialises pointers on 16-byte alignment, and a slot that is not
        # aligned would launch a different binary from the one compile_config built (a recompile per config).
        self.amax = torch.empty(2 * _AMAX_STRIDE, dtype=torch.float32, device=device)
        self.out = torch.empty((spec.M, spec.K), dtype=spec.dtype, device=device)
        # Top-1 without expert parallelism: the down GEMM writes the output rows directly, unless it is split.
        # A split down GEMM adds its partials into float32 rows, zeroed before each launch; the top-k sum reads
        # them and rounds once.
        self.split_k = split_k
        self.direct = spec.topk == 1 and not spec.has_map and split_k == 1
        down_dtype = torch.float32 if split_k > 1 else spec.dtype
        self.down_out = self.out if self.direct else torch.empty((numel, spec.K), dtype=down_dtype, device=device)

    def amax_slot(self, slot: int) -> torch.Tensor:
        return self.amax[slot * _AMAX_STRIDE:slot * _AMAX_STRIDE + 1]


def _descriptor(t: torch.Tensor, block: list[int], what: str) -> TensorDescriptor:
    """A TMA descriptor over ``t`` (2-D) with tiles of ``block``, or a ValueError saying why ``t`` cannot have one."""
    elem = t.element_size()
    if t.stride(-1) != 1 or (t.stride(0) * elem) % 16 or t.data_ptr() % 16:
        raise ValueError(f"TMA needs {what} with contiguous rows, 16-byte aligned (row stride {t.stride(0)} x "
                         f"{elem} bytes); use a config with TMA=0 for this tensor")
    return TensorDescriptor.from_tensor(t, block)


def _weight_rows(b: torch.Tensor) -> torch.Tensor:
    """Weights [E, rows, k] as one [E x rows, k] matrix (a view, never a copy), for one descriptor over every
    expert."""
    if b.stride(0) != b.shape[1] * b.stride(1):
        raise ValueError("TMA needs each expert's weights right after the previous expert's (a [E, rows, k] tensor "
                         "whose experts are not strided apart); use a config with TMA=0")
    return b.view(b.shape[0] * b.shape[1], b.shape[2])


def _launch_gemm(spec, ws, cfg, a, b, c, a_scale, b_scale, topk_weights, *, n_out, k_in, up, interpret,
                 out_amax=False, a_sorted=False, c_sorted=False, warmup=False):
    bm, bn, bk = cfg["BLOCK_SIZE_M"], cfg["BLOCK_SIZE_N"], cfg["BLOCK_SIZE_K"]
    if up:
        bn //= 2  # the tile's weight rows are split between gate and up: BLOCK_SIZE_N // 2 output columns each
    a_tma, b_tma = cfg["TMA"] == TMA_BOTH, cfg["TMA"] != TMA_OFF
    a_desc = _descriptor(a, [bm, bk], "the activations") if a_tma else None
    half_tail = bool(cfg["HALF_TAIL"])
    a_half_desc = _descriptor(a, [bm // 2, bk], "the activations") if a_tma and half_tail else None
    b_desc = _descriptor(_weight_rows(b), [bn, bk], "the weights") if b_tma else None
    group_n = group_k = 1
    if spec.mode == QuantMode.BLOCK:
        group_n, group_k = spec.block_shape
        refused = launch_params.block_k_problem(bk, group_k)
        if refused:
            raise ValueError(refused)
    em = ws.sorted_ids.numel()
    split_k = cfg["SPLIT_K"]
    tiles = triton.cdiv(em, bm) * triton.cdiv(n_out, bn)
    # A warmup compiles the same binary for any program count (num_programs is not specialised on), so the compile
    # workers never ask the device.
    programs = min(tiles, _persistent_programs()) if cfg["PERSISTENT"] and not warmup else tiles
    grid = (programs,) + ((split_k,) if split_k > 1 else ())
    args = [a, b, c, a_desc, a_half_desc, b_desc, a_scale, b_scale, topk_weights, ws.sorted_ids, ws.expert_ids,
            ws.num_post, ws.amax_slot(1), n_out, k_in, em, spec.M * spec.topk, b.shape[1],
            a.stride(0), a.stride(1), b.stride(0), b.stride(1), b.stride(2), c.stride(0), c.stride(1),
            *scale_strides(spec.mode, a_scale, b_scale), programs]
    meta = dict(
        BLOCK_SIZE_M=bm, BLOCK_SIZE_N=bn, BLOCK_SIZE_K=bk, GROUP_SIZE_M=cfg["GROUP_SIZE_M"],
        A_ROW_DIV=spec.topk if up else 1, FUSE_SILU_MUL=up, MUL_ROUTED_WEIGHT=not up, OUT_AMAX=out_amax,
        QUANT=int(spec.mode), GROUP_N=group_n, GROUP_K=group_k, INT_ACC=spec.int_acc, DOT_FP32=interpret,
        EVEN_K=k_in % bk == 0, SPLIT_K=split_k, A_TMA=a_tma, A_SORTED=a_sorted, B_TMA=b_tma, C_SORTED=c_sorted,
        PERSISTENT=bool(cfg["PERSISTENT"]), HALF_TAIL=half_tail,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **pdl.launch_meta(),
    )
    if warmup:
        return _kernels._fused_moe_gemm.warmup(*warmup_args(args), grid=grid, **meta)
    _kernels._fused_moe_gemm[grid](*args, **meta)


#: Programs of a persistent GEMM in the interpreter: a few, so that each walks several tiles.
_INTERPRETER_PROGRAMS = 3


@functools.lru_cache(maxsize=None)
def _device_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _persistent_programs() -> int:
    """Programs of a persistent GEMM: one per SM of the current GPU (what the H200 probe measured; a small tile
    could fit more programs per SM, which the tuner's choice among tiles already weighs)."""
    if interpreted() or not torch.cuda.is_available():
        return _INTERPRETER_PROGRAMS
    return _device_sms(torch.cuda.current_device())


def _gather_sorted(ws, x, row_div: int, warmup=False) -> torch.Tensor:
    """x's rows in expert-sorted order (one per slot of the sorted ids, zeros for padding slots), for the up GEMM's
    TMA loads of A."""
    out = torch.empty((ws.sorted_ids.numel(), x.shape[1]), dtype=x.dtype, device=x.device)
    block = min(1024, triton.next_power_of_2(x.shape[1]))
    grid = (out.shape[0], triton.cdiv(x.shape[1], block))
    args = [x, out, ws.sorted_ids, ws.num_post, ws.numel, x.shape[1], x.stride(0), out.stride(0)]
    meta = dict(ROW_DIV=row_div, BLOCK=block, **pdl.launch_meta())
    if warmup:
        _kernels._gather_sorted_rows.warmup(*warmup_args(args), grid=grid, **meta)
    else:
        _kernels._gather_sorted_rows[grid](*args, **meta)
    return out


def _zero_fill(t: torch.Tensor) -> None:
    """Zero a contiguous tensor with a kernel of the op's own, so that the chain of PDL launches goes on through it
    (a torch fill would drain the GPU on both sides)."""
    block = 4096
    _kernels._zero_fill[(triton.cdiv(t.numel(), block),)](t, t.numel(), BLOCK=block, **pdl.launch_meta())


class _Call:
    """One fused MoE call's stages over a workspace; the tuner times them together or one GEMM at a time."""

    def __init__(self, hidden_states, w1, w2, topk_weights, topk_ids, config, quant_dtype=None, w1_scale=None,
                 w2_scale=None, a1_scale=None, a2_scale=None, block_shape=None, per_channel=False,
                 expert_map=None, activation="silu"):
        self.spec = _Spec(hidden_states, w1, w2, topk_ids, quant_dtype, w1_scale, w2_scale, a1_scale, a2_scale,
                          block_shape, per_channel, expert_map, activation)
        if config is None:
            config = _OVERRIDES[-1] if _OVERRIDES else get_config(
                self.spec.M, self.spec.E, self.spec.N, self.spec.K, self.spec.topk, quant_dtype, block_shape)
        self.up_cfg, self.down_cfg = normalize_config(config)
        self.x, self.w1, self.w2 = hidden_states, w1, w2
        self.topk_weights = topk_weights if topk_weights.is_contiguous() else topk_weights.contiguous()
        # The alignment and sum kernels index ids and the map as flat arrays.
        self.topk_ids = topk_ids.contiguous()
        self.expert_map = expert_map.contiguous() if expert_map is not None else None
        self.ws = _Workspace(self.spec, self.up_cfg["BLOCK_SIZE_M"], self.down_cfg["SPLIT_K"],
                             self.down_cfg["TMA"] == TMA_BOTH, hidden_states.device)
        self.interpret = interpreted()

    def align(self, warmup=False):
        ws = self.ws
        launch_align(self.topk_ids, self.expert_map, self.spec.E, self.up_cfg["BLOCK_SIZE_M"], ws.sorted_ids,
                     ws.expert_ids, ws.num_post, ws.cursor, amax=ws.amax, warmup=warmup)

    @property
    def _dynamic_a2(self) -> bool:
        """The down GEMM's activation scale comes from the max the up GEMM gathers."""
        return self.spec.mode == QuantMode.PER_TENSOR and self.spec.scales[3] is None

    def _quantized(self, x, scale, warmup, slot):
        if self.spec.mode in (QuantMode.NONE, QuantMode.WEIGHT_ONLY):
            return x, None
        # For a warmup (shape-only 'meta' tensors) the torch path gives the dtypes, shapes and strides the
        # compile needs without launching anything.
        torch_path = self.interpret or warmup
        if self.spec.mode == QuantMode.PER_TENSOR:
            return quantize_per_tensor(x, self.spec.quant_dtype, scale=scale, amax=self.ws.amax_slot(slot),
                                       amax_ready=slot == 1, interpret=torch_path)
        return self.spec.activation_quant(x, torch_path)

    def up(self, warmup=False):
        spec, ws = self.spec, self.ws
        a, a_scale = self._quantized(self.x, spec.scales[2], warmup, slot=0)
        if self.up_cfg["TMA"] == TMA_BOTH:
            a = _gather_sorted(ws, a, spec.topk, warmup)  # the scales stay per token row
        _launch_gemm(spec, ws, self.up_cfg, a, self.w1, ws.inter, a_scale, spec.scales[0], self.topk_weights,
                     n_out=spec.N, k_in=spec.K, up=True, interpret=self.interpret, out_amax=self._dynamic_a2,
                     c_sorted=ws.sorted_inter, warmup=warmup)

    def down(self, warmup=False):
        spec, ws = self.spec, self.ws
        a, a_scale = self._quantized(ws.inter, spec.scales[3], warmup, slot=1 if self._dynamic_a2 else 0)
        if ws.split_k > 1 and not warmup:
            _zero_fill(ws.down_out)
        _launch_gemm(spec, ws, self.down_cfg, a, self.w2, ws.down_out, a_scale, spec.scales[1], self.topk_weights,
                     n_out=spec.K, k_in=spec.N, up=False, interpret=self.interpret, a_sorted=ws.sorted_inter,
                     warmup=warmup)

    def reduce(self, warmup=False):
        spec, ws = self.spec, self.ws
        if ws.direct or spec.M == 0:
            return
        block = min(1024, triton.next_power_of_2(spec.K))
        grid = (spec.M, triton.cdiv(spec.K, block))
        args = [ws.down_out, ws.out, self.topk_ids, self.expert_map, spec.K, ws.down_out.stride(0), ws.out.stride(0)]
        meta = dict(TOPK=spec.topk, HAS_MAP=spec.has_map, BLOCK=block, **pdl.launch_meta())
        if warmup:
            _kernels._moe_sum.warmup(*warmup_args(args), grid=grid, **meta)
            return
        _kernels._moe_sum[grid](*args, **meta)

    def __call__(self) -> torch.Tensor:
        if self.spec.M == 0:
            return self.ws.out
        self.align()
        self.up()
        self.down()
        self.reduce()
        return self.ws.out


def fused_experts(hidden_states, w1, w2, topk_weights, topk_ids, *, config=None, quant_dtype=None, w1_scale=None,
                  w2_scale=None, a1_scale=None, a2_scale=None, block_shape=None, per_channel=False, expert_map=None,
                  activation="silu") -> torch.Tensor:
    """Σ_topk w_route · (silu(x·w1_gate) ⊙ (x·w1_up)) · w2 for each token; returns [M, K] in the hidden dtype.

    ``config``: the six engine launch parameters (plus optionally SPLIT_K for the down GEMM), or
    {"up": .., "down": ..}; None takes the innermost override_config, else the tuned files for this device
    (moekernel.configs.get_config: moekernel's own file, then the engine file), else the default heuristic.
    """
    return _Call(hidden_states, w1, w2, topk_weights, topk_ids, config, quant_dtype, w1_scale, w2_scale, a1_scale,
                 a2_scale, block_shape, per_channel, expert_map, activation)()


def fused_moe(hidden_states, w1, w2, gating_output, topk, renormalize=True, **kwargs) -> torch.Tensor:
    """Routing (softmax top-k) followed by fused_experts."""
    topk_weights, topk_ids = fused_topk(hidden_states, gating_output, topk, renormalize)
    return fused_experts(hidden_states, w1, w2, topk_weights, topk_ids, **kwargs)


# ---- for the tuner ---------------------------------------------------------------------------------------------

def make_runner(inputs, config, gemm: str = "both"):
    """A zero-argument callable over preallocated buffers: the whole op, or one GEMM ("up"/"down") only.

    For one GEMM, everything before it runs once here, so the callable replays just that kernel (and the
    activation quantization it needs). The workspace is allocated here; quantized modes still allocate their
    activation copies per call, through torch's caching allocator, so the callable can be captured in a CUDA graph.
    """
    kwargs = inputs.kwargs()
    call = _Call(**kwargs, config=_scoped_config(config, gemm, kwargs))
    if gemm == "both":
        return call
    call.align()
    if gemm == "up":
        return call.up
    if gemm == "down":
        call.up()
        return call.down
    raise ValueError(f"gemm must be 'both', 'up' or 'down', got {gemm!r}")


def _scoped_config(config, gemm: str, kwargs: dict):
    """The config a one-GEMM runner uses. A "down" candidate times only the down GEMM, but the up GEMM must run
    first to fill the intermediate: it gets the default config at the candidate's BLOCK_SIZE_M (they share the
    alignment), so a down candidate that would not suit the up GEMM is still measured."""
    if gemm != "down" or (isinstance(config, dict) and "down" in config):
        return config

    x, w2, ids = kwargs["hidden_states"], kwargs["w2"], kwargs["topk_ids"]
    up = default_config(x.shape[0], w2.shape[0], w2.shape[2], x.shape[1], ids.shape[1], kwargs["quant_dtype"],
                        kwargs["block_shape"])
    return {"up": dict(up, BLOCK_SIZE_M=config["BLOCK_SIZE_M"]), "down": config}


def compile_config(shape, M: int, config, gemm: str = "both", device=None) -> None:
    """Compile the kernels of one config into Triton's disk cache without running them.

    Uses shape-only ('meta') tensors, so it allocates nothing on the GPU and is safe in worker processes.
    A config that cannot compile raises here (e.g. triton's OutOfResources), like it would at launch.
    """
    if interpreted():
        return
    if device is not None and torch.device(device).type == "cuda" and torch.device(device).index is not None:
        torch.cuda.set_device(device)
    from .testing import meta_inputs

    kwargs = meta_inputs(shape, M).kwargs()
    call = _Call(**kwargs, config=_scoped_config(config, gemm, kwargs))
    # make_runner runs the alignment and the up GEMM before a "down" runner too, so compile them for every scope;
    # the whole op ("both") ends with the top-k sum. (Quantized modes' activation-quantization kernels do not
    # depend on the config: they compile at the first launch of a process.)
    call.align(warmup=True)
    call.up(warmup=True)
    if gemm in ("both", "down"):
        call.down(warmup=True)
    if gemm == "both":
        call.reduce(warmup=True)


def smem_bytes(shape, config, gemm: str = "both") -> int:
    """Shared memory one GEMM's launch is expected to need (the larger of the two for "both"), for pruning.

    Triton's pipeliner keeps num_stages - 1 tiles of A and B in flight plus a 16-bit epilogue tile; this figure
    prunes 27% of the engines' space on Hopper, the share that fails there. Deliberately not conservative:
    a candidate that still does not fit is recorded as out_of_resources, while one pruned wrongly would be lost.
    """
    a_bytes, b_bytes = shape.info.act_bytes, shape.info.weight_bytes

    def need(cfg):
        bm, bn, bk = cfg["BLOCK_SIZE_M"], cfg["BLOCK_SIZE_N"], cfg["BLOCK_SIZE_K"]
        return (cfg["num_stages"] - 1) * (bm * bk * a_bytes + bk * bn * b_bytes) + bm * bn * 2

    if gemm == "down" and "down" not in config:
        return need(_check_one(config, "down", "down"))  # a down candidate: the up GEMM runs another config
    up, down = normalize_config(config)
    sizes = {"up": need(up), "down": need(down)}
    return max(sizes.values()) if gemm == "both" else sizes[gemm]


__all__ = ["fused_experts", "fused_moe", "override_config", "normalize_config", "make_runner", "compile_config",
           "smem_bytes"]
