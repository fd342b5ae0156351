"""``python -m moekernel.bench``: how close the fused MoE gets to the GPU's roofline, batch size by batch size.

A benchmark, not a test::

    python -m moekernel.bench                                   # Mixtral-8x7B tp=2: E8-N7168-K4096-top2-bf16
    python -m moekernel.bench --dtype fp8_w8a8 --configs ../shared/anchors/vllm-configs --json bench.json
    python -m moekernel.bench --key E4-N64-K64-top2-fp16 --batch-sizes 1,8      # no GPU: Triton interpreter

1. Ceilings, measured on this GPU: memory bandwidth (a large device-to-device copy, bytes read + written, and a
   pure read, a sum over a large tensor; the floor uses the higher of the two), the bf16 matmul rate
   (torch.matmul, 8192³) and the fp8 matmul rate (torch._scaled_mm, float8_e4m3fn, per-tensor scales, 8192³,
   with and without fast accumulation; the higher counts). ``--bandwidth/--peak/--peak-fp8`` replace a
   measurement; ``--no-ceilings`` measures nothing.
2. Roofline floor of one call at batch size M: bytes = the weights (and weight scales) of the experts the
   routing actually hits + M×K activations in and M×K out; flops = 2·M·topk·3·N·K; floor = max(bytes /
   bandwidth, flops / peak), with the bf16 peak for bf16/fp16/int8_w8a16 and the fp8 peak for fp8_w8a8 and
   (as a proxy for the tensor cores' int8 rate) int8_w8a8. Each source's fraction is floor / its time: 1 is
   the roofline; above 1 means the floor model is wrong (printed anyway).
3. Sources, all on the same seeded inputs (moekernel.testing.make_inputs) and timed with the tuner's helper
   (moekernel.tuning.timing.time_callable: CUDA graph of 10 calls, median of the replays):
   ``default`` (moekernel.heuristics.default_config), ``engine-default`` (what vLLM falls back to without
   tuned files), ``folder:DIR`` / ``tuned:DIR`` for each ``--configs`` / ``--tuned`` folder (the file for
   this device, else another device's file of the same E, N, dtype and block shape, said so), and ``torch``
   (torch._grouped_mm where it runs, else a per-expert torch.matmul loop; quantized weights are dequantized
   to bf16 for it). Every output is compared once with the float32 reference.

Without CUDA the kernels run in Triton's CPU interpreter: the command still runs (tiny shapes only), but its
times are interpreter times, the ceilings are skipped and fractions read n/a.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import importlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .configs import STANDARD_BATCH_SIZES, config_file_name, load_configs, nearest_batch_size
from .configs import device_name as current_device_name
from .heuristics import default_config, engine_default_config
from .shapes import DTYPES, KernelShape

DEFAULT_KEY = "E8-N7168-K4096-top2-bf16"  # Mixtral-8x7B at tp=2
HIDDEN_BYTES = 2  # activations are bf16 or fp16 in every mode
#: The interpreter runs the kernels through NumPy: refuse shapes with more weight elements than this.
INTERPRETER_MAX_WEIGHTS = 1 << 22
INTERPRETER_BANNER = (
    "#" * 100 + "\n"
    "# NO CUDA: the kernels ran in Triton's CPU interpreter. The times below are interpreter times and say\n"
    "# nothing about GPU speed; ceilings were not measured, so roofline fractions are n/a (or meaningless,\n"
    "# if --bandwidth/--peak were given). Run on a GPU for real numbers.\n"
    + "#" * 100
)


# ---- ceilings ------------------------------------------------------------------------------------------------

@dataclass
class Ceilings:
    """What the hardware can do: bytes/s and flop/s. None where not measured and not given."""

    bandwidth: float | None = None  # bytes/s the floor uses
    bf16_flops: float | None = None
    fp8_flops: float | None = None
    copy_bandwidth: float | None = None  # device-to-device copy, bytes read + written
    read_bandwidth: float | None = None  # sum reduction, bytes read
    origin: dict = field(default_factory=dict)  # figure -> "measured" / "given"
    notes: list = field(default_factory=list)

    def peak(self, dtype: str) -> float | None:
        """The flop rate a dtype's GEMMs run at (int8_w8a8: the fp8 rate stands in for the int8 tensor cores)."""
        return self.fp8_flops if dtype in ("fp8_w8a8", "int8_w8a8") else self.bf16_flops

    def to_json(self) -> dict:
        tera = lambda v: None if v is None else v / 1e12  # noqa: E731
        return {"bandwidth_TBps": tera(self.bandwidth), "copy_bandwidth_TBps": tera(self.copy_bandwidth),
                "read_bandwidth_TBps": tera(self.read_bandwidth), "bf16_TFLOPs": tera(self.bf16_flops),
                "fp8_TFLOPs": tera(self.fp8_flops), "origin": dict(self.origin), "notes": list(self.notes)}

    def describe(self) -> str:
        def fmt(v, unit):
            return "n/a" if v is None else f"{v / 1e12:.0f} {unit}" if unit == "TFLOP/s" else f"{v / 1e12:.2f} {unit}"

        parts = []
        if self.copy_bandwidth or self.read_bandwidth:
            parts.append(f"copy {fmt(self.copy_bandwidth, 'TB/s')} (read+write), "
                         f"read {fmt(self.read_bandwidth, 'TB/s')}")
        parts.append(f"bandwidth used {fmt(self.bandwidth, 'TB/s')} [{self.origin.get('bandwidth', 'none')}]")
        parts.append(f"bf16 {fmt(self.bf16_flops, 'TFLOP/s')} [{self.origin.get('bf16', 'none')}]")
        parts.append(f"fp8 {fmt(self.fp8_flops, 'TFLOP/s')} [{self.origin.get('fp8', 'none')}]")
        return "; ".join(parts)


def _rate(fn, work: float, iters: int) -> float:
    """``work`` units per call of ``fn`` → units per second, timed like the kernels (CUDA graph, median)."""
    from .tuning.timing import time_callable

    return work / (time_callable(fn, iters=iters).median_us * 1e-6)


def measure_bandwidth(copy_gib: float = 2.0, read_gib: float = 4.0, iters: int = 20) -> tuple[float, float]:
    """(copy, read) bytes/s: copy counts the bytes read and written; read is a sum over one large tensor."""
    import torch

    n = int(copy_gib * 2**30) // 4
    src = torch.rand(n, device="cuda")
    dst = torch.empty_like(src)
    copy = _rate(lambda: dst.copy_(src), 2 * 4 * n, iters)
    del src, dst
    n = int(read_gib * 2**30) // 4
    x = torch.rand(n, device="cuda")
    total = torch.empty((), device="cuda")
    read = _rate(lambda: torch.sum(x, dim=0, out=total), 4 * n, iters)
    del x, total
    torch.cuda.empty_cache()
    return copy, read


def measure_bf16_matmul(n: int = 8192, iters: int = 20) -> float:
    import torch

    a = torch.randn((n, n), device="cuda", dtype=torch.bfloat16)
    b = torch.randn((n, n), device="cuda", dtype=torch.bfloat16)
    c = torch.empty((n, n), device="cuda", dtype=torch.bfloat16)
    rate = _rate(lambda: torch.matmul(a, b, out=c), 2 * n**3, iters)
    del a, b, c
    torch.cuda.empty_cache()
    return rate


def measure_fp8_matmul(n: int = 8192, iters: int = 20) -> tuple[float | None, str]:
    """fp8 flop/s of torch._scaled_mm (per-tensor scales), the better of fast and exact accumulation."""
    import torch

    if not hasattr(torch, "_scaled_mm") or not hasattr(torch, "float8_e4m3fn"):
        return None, "fp8 matmul: torch._scaled_mm not available"
    a = torch.randn((n, n), device="cuda").to(torch.float8_e4m3fn)
    b = torch.randn((n, n), device="cuda").to(torch.float8_e4m3fn).t()  # column-major, as _scaled_mm wants
    one = torch.ones((), device="cuda")
    rates, errors = {}, []
    for fast in (True, False):
        try:
            rates[fast] = _rate(lambda: torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16,
                                                         use_fast_accum=fast), 2 * n**3, iters)
        except Exception as exc:  # noqa: BLE001 - an unsupported GPU or torch build
            errors.append(f"use_fast_accum={fast}: {type(exc).__name__}: {exc}"[:200])
    del a, b
    torch.cuda.empty_cache()
    if not rates:
        return None, "fp8 matmul failed: " + "; ".join(errors)
    note = "fp8 matmul (torch._scaled_mm): " + ", ".join(
        f"{'fast' if fast else 'exact'} accumulation {r / 1e12:.0f} TFLOP/s" for fast, r in rates.items())
    return max(rates.values()), note


def get_ceilings(args, backend: str) -> Ceilings:
    """Given values win; the rest is measured on the GPU unless --no-ceilings (or there is no GPU)."""
    c = Ceilings()
    given = {"bandwidth": args.bandwidth, "bf16": args.peak, "fp8": args.peak_fp8}
    for name, value in given.items():
        if value is not None:
            setattr(c, {"bandwidth": "bandwidth", "bf16": "bf16_flops", "fp8": "fp8_flops"}[name], value * 1e12)
            c.origin[name] = "given"
    if backend != "cuda":
        c.notes.append("no CUDA: ceilings not measured")
        return c
    if args.no_ceilings:
        c.notes.append("--no-ceilings: only the given ceilings are used")
        return c
    if c.bandwidth is None:
        c.copy_bandwidth, c.read_bandwidth = measure_bandwidth(args.copy_gib, args.read_gib, args.iters)
        c.bandwidth = max(c.copy_bandwidth, c.read_bandwidth)
        c.origin["bandwidth"] = "measured: " + ("copy" if c.copy_bandwidth >= c.read_bandwidth else "read (sum)")
    if c.bf16_flops is None:
        c.bf16_flops = measure_bf16_matmul(args.matmul_size, args.iters)
        c.origin["bf16"] = f"measured: torch.matmul {args.matmul_size}³"
    if c.fp8_flops is None:
        c.fp8_flops, note = measure_fp8_matmul(args.matmul_size, args.iters)
        c.notes.append(note)
        if c.fp8_flops is not None:
            c.origin["fp8"] = f"measured: torch._scaled_mm {args.matmul_size}³"
    return c


# ---- roofline ------------------------------------------------------------------------------------------------

def weight_bytes_per_expert(shape: KernelShape) -> int:
    """w1 [2N, K] + w2 [K, N] of one expert, plus their float32 scales in the shape's quantization layout."""
    from .testing import meta_inputs  # shape-only tensors laid out exactly as the kernel receives them

    i = meta_inputs(shape, 1)
    tensors = [t for t in (i.w1, i.w2, i.w1_scale, i.w2_scale) if t is not None]
    return sum(t.numel() * t.element_size() for t in tensors) // shape.E


def hit_experts(topk_ids, E: int) -> int:
    """How many distinct experts the routing sends at least one token to (only their weights are read)."""
    import torch

    ids = torch.as_tensor(topk_ids).reshape(-1)
    return int(torch.unique(ids[(ids >= 0) & (ids < E)]).numel())


def roofline(shape: KernelShape, M: int, hit: int, bandwidth: float | None, peak: float | None) -> dict:
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


# ---- sources -------------------------------------------------------------------------------------------------

@dataclass
class Source:
    """One way of running the MoE: a config rule, a config file's table, or plain torch."""

    name: str  # default, engine-default, folder:DIR, tuned:DIR, torch
    kind: str  # heuristic, file, torch
    label: str  # table column
    table: dict | None = None  # batch size -> config (kind "file")
    file: str | None = None
    note: str | None = None

    def config(self, shape: KernelShape, M: int) -> tuple[dict, int | None]:
        """(config, the file's batch size it came from) — as an engine picks: the nearest batch size."""
        args = (M, shape.E, shape.N, shape.K, shape.topk, shape.dtype, shape.block_shape)
        if self.name == "default":
            return default_config(*args), None
        if self.name == "engine-default":
            return engine_default_config(*args), None
        m = nearest_batch_size(self.table, M)
        return self.table[m], m

    def to_json(self) -> dict:
        return {"name": self.name, "kind": self.kind, "label": self.label, "file": self.file, "note": self.note}


def find_config_file(folder, shape: KernelShape, device_name: str) -> tuple[Path | None, str | None, str]:
    """(path, its device name, message): the folder's file of this shape for ``device_name``, else the file of
    another device with the same E, N, dtype and block shape (the message says which), else (None, None, why)."""
    folder = Path(folder)
    args = (shape.E, shape.N, shape.config_dtype, shape.block_shape)
    exact = folder / config_file_name(*args, device_name=device_name)
    if exact.is_file():
        return exact, device_name, f"using {exact.name}"
    marker = "\x00"
    prefix, suffix = config_file_name(*args, device_name=marker).split(marker)
    found = {}
    for path in sorted(folder.iterdir()):
        name = path.name
        if not (path.is_file() and name.startswith(prefix) and name.endswith(suffix)) or name.endswith("_down.json"):
            continue
        device = name[len(prefix):len(name) - len(suffix)]
        if device and "," not in device:  # a comma: a longer name (another dtype or block shape)
            found[device] = path
    if not found:
        return None, None, (f"no file for E={shape.E}, N={shape.N}, dtype={shape.dtype}"
                            f"{f', block_shape={list(shape.block_shape)}' if shape.block_shape else ''} in {folder}")
    device, path = next(iter(found.items()))
    message = f"no file for device {device_name} in {folder}; falling back to {path.name} (tuned for {device})"
    if len(found) > 1:
        message += f"; other devices there: {', '.join(list(found)[1:])}"
    return path, device, message


def folder_source(prefix: str, folder, shape: KernelShape, device_name: str) -> Source:
    path, device, message = find_config_file(folder, shape, device_name)
    name = f"{prefix}:{folder}"
    label = f"{prefix}:{Path(folder).name or folder}"
    if path is None:
        return Source(name, "file", label, note=message)
    table = load_configs(shape.E, shape.N, shape.config_dtype, shape.block_shape, device_name=device,
                         folders=[Path(folder)])
    return Source(name, "file", label, table=table, file=str(path), note=message)


def torch_baseline(inputs, shape: KernelShape):
    """(callable, label, graph-capturable): the same MoE in plain torch ops.

    torch._grouped_mm: sort the (token, slot) pairs by expert, one grouped GEMM up (x·w1ᵀ), silu(gate)·up,
    one grouped GEMM down, routing weights, scatter-add over the top-k. Where grouped mm does not run (old torch,
    dtype or GPU it does not support) a per-expert loop of torch.matmul (its boolean masks sync with the host,
    so it cannot be captured in a CUDA graph). Quantized weights are dequantized to the hidden dtype up front.
    """
    import torch
    import torch.nn.functional as F

    from .quant import dequantize_weights

    x, weights, ids = inputs.hidden_states, inputs.topk_weights, inputs.topk_ids
    M, K = x.shape
    E, N, topk = shape.E, shape.N, shape.topk
    how = str(x.dtype).replace("torch.", "")
    if shape.quant_dtype is not None:
        w1 = dequantize_weights(inputs.w1, inputs.w1_scale, block_shape=shape.block_shape).to(x.dtype)
        w2 = dequantize_weights(inputs.w2, inputs.w2_scale, block_shape=shape.block_shape).to(x.dtype)
        how += f", {shape.dtype} weights dequantized" + (
            ", activations not quantized" if shape.dtype in ("fp8_w8a8", "int8_w8a8") else "")
    else:
        w1, w2 = inputs.w1, inputs.w2
    w1t, w2t = w1.transpose(1, 2), w2.transpose(1, 2)  # [E, K, 2N], [E, N, K], column-major views
    experts = torch.arange(E, device=x.device)

    def grouped():
        sorted_ids, order = torch.sort(ids.reshape(-1).long(), stable=True)
        offsets = torch.searchsorted(sorted_ids, experts, right=True, out_int32=True)  # end of each group
        tokens = order // topk
        h = torch._grouped_mm(x[tokens], w1t, offs=offsets)
        y = torch._grouped_mm(F.silu(h[:, :N]) * h[:, N:], w2t, offs=offsets)
        y = y.float() * weights.reshape(-1)[order, None]
        return torch.zeros((M, K), dtype=torch.float32, device=x.device).index_add_(0, tokens, y).to(x.dtype)

    def loop():
        flat = ids.reshape(-1).long()
        flat_weights = weights.reshape(-1)
        out = torch.zeros((M, K), dtype=torch.float32, device=x.device)
        for e in range(E):
            slots = (flat == e).nonzero().squeeze(1)
            if slots.numel():
                tokens = slots // topk
                h = x[tokens] @ w1[e].t()
                y = (F.silu(h[:, :N]) * h[:, N:]) @ w2[e].t()
                out.index_add_(0, tokens, y.float() * flat_weights[slots, None])
        return out.to(x.dtype)

    why = "torch._grouped_mm missing"
    if hasattr(torch, "_grouped_mm"):
        try:
            grouped()
            if x.is_cuda:
                torch.cuda.synchronize()
            return grouped, f"torch._grouped_mm ({how})", True
        except Exception as exc:  # noqa: BLE001 - dtype/GPU/stride not supported by this torch
            why = f"torch._grouped_mm failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    return loop, f"torch.matmul per-expert loop ({how}; {why})", False


def build_sources(args, shape: KernelShape, device_name: str) -> list[Source]:
    sources = [Source("default", "heuristic", "default", note="moekernel.heuristics.default_config"),
               Source("engine-default", "heuristic", "engine-default",
                      note="moekernel.heuristics.engine_default_config (vLLM's fallback without tuned files)")]
    for prefix, folders in (("folder", args.configs), ("tuned", args.tuned)):
        for folder in folders:
            if not Path(folder).is_dir():
                raise ValueError(f"--{'configs' if prefix == 'folder' else 'tuned'} {folder}: not a folder")
            sources.append(folder_source(prefix, folder, shape, device_name))
    if not args.skip_torch:
        sources.append(Source("torch", "torch", "torch"))
    return sources


# ---- measuring -----------------------------------------------------------------------------------------------

def _time_with_events(fn, iters: int, warmup: int = 3):
    """For callables a CUDA graph cannot hold: each call between its own pair of events, median."""
    import torch

    from .tuning.timing import Timing

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for start, end in pairs:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return Timing.from_samples([s.elapsed_time(e) * 1e3 for s, e in pairs])


def time_source(fn, backend: str, iters: int, graph=True):
    """(Timing, method). ``graph``: True (CUDA graph), False (events), "try" (graph, else events)."""
    from .tuning.timing import time_callable

    if backend != "cuda":
        return time_callable(fn, iters=iters, backend="interpret"), "cpu wall clock"
    if graph:
        try:
            return time_callable(fn, iters=iters), "cuda graph"
        except RuntimeError:
            if graph != "try":
                raise
            import torch

            torch.cuda.synchronize()  # not capturable after all: time it call by call
    return _time_with_events(fn, iters), "cuda events (not graph-capturable)"


def bench(shape: KernelShape, batch_sizes, sources: list[Source], ceilings: Ceilings, *, backend: str,
          iters: int = 20, seed: int = 0, routing: str = "uniform", log=None) -> list[dict]:
    """One row per (batch size, source) with its time, fraction of the floor and output check."""
    import torch

    from .fused_moe import make_runner
    from .reference import fused_experts_ref, relative_error
    from .testing import make_inputs
    from .tuning.tuner import REL_ERROR_BOUND

    bound = REL_ERROR_BOUND[shape.dtype]
    device = "cuda" if backend == "cuda" else "cpu"
    rows = []
    for M in batch_sizes:
        inputs = make_inputs(shape, M, routing=routing, seed=seed, device=device)
        roof = roofline(shape, M, hit_experts(inputs.topk_ids, shape.E), ceilings.bandwidth,
                        ceilings.peak(shape.dtype))
        reference = None  # the float32 reference, computed once per batch size when a source first needs it
        for src in sources:
            row = {"batch_size": M, "source": src.name, **roof, "config": None, "config_batch_size": None,
                   "method": None, "time_us": None, "p20_us": None, "p80_us": None, "iters": None,
                   "fraction": None, "mismatch": None, "ref_error": None, "error": None, "skipped": None}
            rows.append(row)
            if src.kind == "file" and not src.table:
                row["skipped"] = src.note
                continue
            try:
                if src.kind == "torch":
                    fn, src.note, capturable = torch_baseline(inputs, shape)
                    graph = "try" if capturable else False
                else:
                    config, row["config_batch_size"] = src.config(shape, M)
                    row["config"] = config
                    fn, graph = make_runner(inputs, config, "both"), True
                timing, row["method"] = time_source(fn, backend, iters, graph)
                out = fn().clone()
            except Exception as exc:  # noqa: BLE001 - a config that fails is a finding, not a crash
                row["error"] = f"{type(exc).__name__}: {exc}"[:300]
                if backend == "cuda":
                    torch.cuda.synchronize()
                continue
            row.update(time_us=timing.median_us, p20_us=timing.p20_us, p80_us=timing.p80_us, iters=timing.iters)
            if roof["floor_us"] is not None:
                row["fraction"] = roof["floor_us"] / timing.median_us
            # Every source against the float32 reference itself, so one failing source hides no other's error.
            if reference is None:
                reference = fused_experts_ref(**inputs.kwargs())
            row["ref_error"] = relative_error(out, reference)
            # torch does not quantize the activations of w8a8 dtypes: a few per cent apart is expected.
            loose = src.kind == "torch" and shape.dtype in ("fp8_w8a8", "int8_w8a8")
            row["mismatch"] = row["ref_error"] > bound * (2 if loose else 1)
            del fn, out
        if log:
            log(f"M={M}: " + ", ".join(
                f"{r['source']} {_fmt_time(r['time_us'])}" for r in rows if r["batch_size"] == M))
        del inputs, reference
    return rows


# ---- report --------------------------------------------------------------------------------------------------

def _geomean(values) -> float | None:
    values = [v for v in values if v is not None and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def summarize(rows: list[dict], sources: list[Source]) -> dict:
    """Per source: geomean and min fraction; per other source: speedup of default (its time / default's)."""
    by = {(r["source"], r["batch_size"]): r for r in rows}
    out = {"sources": {}, "default_speedup": {}}
    for src in sources:
        mine = [r for r in rows if r["source"] == src.name]
        fractions = [r for r in mine if r["fraction"] is not None]
        worst = min(fractions, key=lambda r: r["fraction"]) if fractions else None
        out["sources"][src.name] = {
            "geomean_fraction": _geomean(r["fraction"] for r in fractions),
            "min_fraction": worst and worst["fraction"], "min_fraction_batch_size": worst and worst["batch_size"],
            "mismatch_batch_sizes": [r["batch_size"] for r in mine if r["mismatch"]],
            "error_batch_sizes": [r["batch_size"] for r in mine if r["error"]],
        }
        if src.name == "default":
            continue
        ratios = {}
        for r in mine:
            d = by.get(("default", r["batch_size"]))
            if r["time_us"] and d and d["time_us"]:
                ratios[r["batch_size"]] = r["time_us"] / d["time_us"]
        if ratios:
            out["default_speedup"][src.name] = {
                "geomean": _geomean(ratios.values()), "min": min(ratios.values()), "max": max(ratios.values()),
                "min_batch_size": min(ratios, key=ratios.get), "max_batch_size": max(ratios, key=ratios.get),
                "batch_sizes": len(ratios)}
    return out


def _fmt_time(t) -> str:
    if t is None:
        return "-"
    return f"{t:.3g}" if t < 1 else f"{t:.1f}" if t < 1e4 else f"{t:.0f}"


def _fmt_frac(f) -> str:
    return "n/a" if f is None else f"{f:.2f}"


def _fmt_ratio(r: float) -> str:
    return f"{r:.2f}×" if r >= 0.1 else f"{r:.2g}×"


def format_table(rows: list[dict], sources: list[Source], *, markdown: bool = False) -> str:
    """Batch sizes down, sources across: each source's µs and fraction of the floor. '!': output mismatch."""
    header = ["M", "hit", "floor µs", "bound"]
    for src in sources:
        header += [f"{src.label} µs", "frac"]
    by = {(r["source"], r["batch_size"]): r for r in rows}
    table = []
    for M in dict.fromkeys(r["batch_size"] for r in rows):
        first = by[(sources[0].name, M)]
        line = [str(M), str(first["hit_experts"]), _fmt_time(first["floor_us"]) if first["floor_us"] else "n/a",
                first["bound"] or "n/a"]
        for src in sources:
            r = by[(src.name, M)]
            if r["skipped"]:
                line += ["-", "-"]
            elif r["error"]:
                line += ["ERR", "-"]
            else:
                line += [_fmt_time(r["time_us"]) + ("!" if r["mismatch"] else ""), _fmt_frac(r["fraction"])]
        table.append(line)
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
        lines += ["| " + " | ".join(line) + " |" for line in table]
        return "\n".join(lines)
    widths = [max(len(h), *(len(line[i]) for line in table)) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in table]
    return "\n".join(lines)


def format_summary(summary: dict, sources: list[Source]) -> str:
    lines = []
    for src in sources:
        s = summary["sources"][src.name]
        text = f"{src.label}: geomean fraction {_fmt_frac(s['geomean_fraction'])}"
        if s["min_fraction"] is not None:
            text += f", min {_fmt_frac(s['min_fraction'])} at M={s['min_fraction_batch_size']}"
        if s["mismatch_batch_sizes"]:
            text += f"; OUTPUT MISMATCH at M={s['mismatch_batch_sizes']}"
        if s["error_batch_sizes"]:
            text += f"; failed at M={s['error_batch_sizes']}"
        lines.append(text)
    if summary["default_speedup"]:
        lines.append("speedup of default = the other's time / the default's (geomean over batch sizes; >1: default "
                     "is faster)")
    for name, s in summary["default_speedup"].items():
        label = next(src.label for src in sources if src.name == name)
        lines.append(f"default vs {label}: {_fmt_ratio(s['geomean'])} geomean speedup "
                     f"(min {_fmt_ratio(s['min'])} at M={s['min_batch_size']}, max {_fmt_ratio(s['max'])} at "
                     f"M={s['max_batch_size']}, {s['batch_sizes']} batch sizes)")
    return "\n".join(lines)


def format_legend(sources: list[Source], rows: list[dict]) -> str:
    lines = []
    for src in sources:
        methods = sorted({r["method"] for r in rows if r["source"] == src.name and r["method"]})
        text = f"  {src.label}:" + (f" {src.name}" if src.label != src.name else "")
        if src.note:
            text += (" — " if src.label != src.name else " ") + src.note
        lines.append(text + (f" [timed with {', '.join(methods)}]" if methods else ""))
    lines.append("  frac = roofline floor / time (1 = at the roofline); '!' = output differs from the float32 "
                 "reference beyond the dtype's bound; ERR: see --json")
    return "\n".join(lines)


# ---- command line --------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m moekernel.bench", description=__doc__.split("\n\n")[0])
    g = p.add_argument_group("shape (default: Mixtral-8x7B tp=2, " + DEFAULT_KEY + ")")
    g.add_argument("--key", help="kernel key, e.g. E8-N7168-K4096-top2-bf16 (instead of --E/--N/--K/--topk/--dtype)")
    g.add_argument("--E", type=int, help="experts (default 8)")
    g.add_argument("--N", type=int, help="expert intermediate size per GPU (default 7168)")
    g.add_argument("--K", type=int, help="hidden size (default 4096)")
    g.add_argument("--topk", type=int, help="experts per token (default 2)")
    g.add_argument("--dtype", choices=DTYPES, help="default bf16")
    g.add_argument("--block-shape", help="block quantization bn,bk, e.g. 128,128")
    p.add_argument("--batch-sizes", default=",".join(map(str, STANDARD_BATCH_SIZES)),
                   help="comma-separated M (default: the 18 standard sizes, 1 to 4096)")
    p.add_argument("--configs", action="append", default=[], metavar="DIR",
                   help="a folder of engine config files to compare (repeatable)")
    p.add_argument("--tuned", action="append", default=[], metavar="DIR", help="same as --configs, labelled tuned")
    p.add_argument("--device-name", help="device name for config file lookup (default: this device's)")
    p.add_argument("--iters", type=int, default=20, help="timed CUDA-graph replays per measurement (default: 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default: 0)")
    p.add_argument("--routing", default="uniform", help="uniform (default), zipf:<s>, or a .npy/.pt file of top-k ids")
    p.add_argument("--skip-torch", action="store_true", help="no torch baseline")
    p.add_argument("--json", metavar="OUT", help="write every number to this JSON file")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown (for BENCHMARKS.md)")
    c = p.add_argument_group("ceilings")
    c.add_argument("--no-ceilings", action="store_true", help="measure no ceiling; use the values given below")
    c.add_argument("--bandwidth", type=float, metavar="TB/s", help="memory bandwidth (skips its measurement)")
    c.add_argument("--peak", type=float, metavar="TFLOP/s", help="bf16 matmul rate (skips its measurement)")
    c.add_argument("--peak-fp8", type=float, metavar="TFLOP/s", help="fp8 matmul rate (skips its measurement)")
    c.add_argument("--copy-gib", type=float, default=2.0, help="GiB of the copied tensor (default: 2)")
    c.add_argument("--read-gib", type=float, default=4.0, help="GiB of the summed tensor (default: 4)")
    c.add_argument("--matmul-size", type=int, default=8192, help="n of the n×n×n matmuls (default: 8192)")
    return p


def shape_from_args(args) -> KernelShape:
    explicit = [f"--{n.replace('_', '-')}" for n in ("E", "N", "K", "topk", "dtype", "block_shape")
                if getattr(args, n) is not None]
    if args.key:
        if explicit:
            raise ValueError(f"--key excludes {', '.join(explicit)}")
        return KernelShape.from_key(args.key)
    block = None
    if args.block_shape:
        try:
            block = tuple(int(v) for v in args.block_shape.replace("x", ",").split(","))
        except ValueError:
            raise ValueError(f"--block-shape {args.block_shape!r}: expected bn,bk e.g. 128,128") from None
    d = KernelShape.from_key(DEFAULT_KEY)
    pick = lambda v, default: default if v is None else v  # noqa: E731
    return KernelShape(pick(args.E, d.E), pick(args.N, d.N), pick(args.K, d.K), pick(args.topk, d.topk),
                       pick(args.dtype, d.dtype), block)


def parse_batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--batch-sizes {text!r}: expected comma-separated integers") from None
    if not sizes or min(sizes) < 1:
        raise ValueError(f"--batch-sizes {text!r}: expected positive integers")
    return sizes


def _backend(reexec: bool) -> str:
    from .tuning.tuner import kernels_mode, resolve_backend, wanted_backend

    if wanted_backend("auto") == "interpret" and kernels_mode() == "cuda":
        if not reexec:
            raise RuntimeError("no CUDA: set TRITON_INTERPRET=1 before importing moekernel to run the benchmark")
        importlib.import_module("moekernel.fused_moe").restart_in_interpreter("moekernel.bench")
    return resolve_backend("auto")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        shape = shape_from_args(args)
        batch_sizes = parse_batch_sizes(args.batch_sizes)
        if args.iters < 1:
            raise ValueError("--iters must be >= 1")
    except ValueError as exc:
        parser.error(str(exc))
    backend = _backend(reexec=argv is None)
    interpreter = backend != "cuda"
    if interpreter and shape.E * 3 * shape.N * shape.K > INTERPRETER_MAX_WEIGHTS:
        parser.error(f"no CUDA, and {shape.key} is far too large for Triton's interpreter; try "
                     "--key E4-N64-K64-top2-fp16 --batch-sizes 1,8")

    import torch
    import triton

    from . import __version__

    device = torch.cuda.get_device_name() if not interpreter else "cpu (Triton interpreter)"
    lookup_name = args.device_name or current_device_name()
    say = lambda text="": print(text, flush=True)  # noqa: E731
    progress = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    if interpreter:
        say(INTERPRETER_BANNER)
    try:
        sources = build_sources(args, shape, lookup_name)
    except ValueError as exc:
        parser.error(str(exc))
    say(f"moekernel.bench {shape.key} on {device}: torch {torch.__version__}, triton {triton.__version__}, "
        f"routing {args.routing}, seed {args.seed}")
    for src in sources:
        if src.kind == "file":
            say(f"{src.name}: {src.note}")
    ceilings = get_ceilings(args, backend)
    say(f"ceilings: {ceilings.describe()}")
    for note in ceilings.notes:
        say(f"  {note}")
    if shape.dtype == "int8_w8a8":
        say("  int8_w8a8: the fp8 matmul rate stands in for the tensor cores' int8 rate")

    try:
        rows = bench(shape, batch_sizes, sources, ceilings, backend=backend, iters=args.iters, seed=args.seed,
                     routing=args.routing, log=progress)
    except ValueError as exc:  # bad --routing file and the like: the inputs could not be made
        print(f"moekernel.bench: error: {exc}", file=sys.stderr)
        return 2
    summary = summarize(rows, sources)
    say()
    say(format_table(rows, sources, markdown=args.markdown))
    say(format_legend(sources, rows))
    say()
    say(format_summary(summary, sources))
    if interpreter:
        say(INTERPRETER_BANNER)

    if args.json:
        report = {
            "key": shape.key,
            "shape": {"E": shape.E, "N": shape.N, "K": shape.K, "topk": shape.topk, "dtype": shape.dtype,
                      "block_shape": list(shape.block_shape) if shape.block_shape else None},
            "device": device, "device_name": lookup_name, "backend": backend, "interpreter": interpreter,
            "torch_version": torch.__version__, "triton_version": triton.__version__,
            "moekernel_version": __version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "batch_sizes": batch_sizes, "routing": args.routing, "seed": args.seed, "iters": args.iters,
            "ceilings": ceilings.to_json(), "sources": [s.to_json() for s in sources], "rows": rows,
            "summary": summary, "argv": sys.argv[1:] if argv is None else list(argv),
        }
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")  # a killed run leaves no truncated report under the real name
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        os.replace(tmp, path)
        say(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
