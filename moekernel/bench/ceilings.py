"""The ceilings of the roofline, measured on this GPU: memory bandwidth, and the bf16 and fp8 matmul rates."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..roofline import Ceilings


@dataclass
class MeasuredCeilings(Ceilings):
    """The roofline's ceilings as this run got them: measured on the GPU or given, with how."""

    copy_bandwidth: float | None = None  # device-to-device copy, bytes read + written
    read_bandwidth: float | None = None  # sum reduction, bytes read
    origin: dict = field(default_factory=dict)  # figure -> "measured" / "given"
    notes: list = field(default_factory=list)

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
    from ..kernel.timing import time_callable

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


def get_ceilings(args, backend: str) -> MeasuredCeilings:
    """Given values win; the rest is measured on the GPU unless --no-ceilings (or there is no GPU)."""
    c = MeasuredCeilings()
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

