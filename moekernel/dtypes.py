"""What each dtype of the kernel is: the one table every part reads (kernel, reference, tuner, roofline, models).

A dtype names how one GPU's fused-MoE call computes: the weights' storage, whether activations are quantized
too, which quantization layouts (:class:`QuantMode`) it admits, how exact its output must be, and which matrix
rate bounds it. Adding a dtype is one row of :data:`DTYPES` (docs/ARCHITECTURE.md has the checklist).

No torch here: the storage dtype is named, and ``moekernel.kernel.quant`` turns the name into a torch dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class QuantMode(IntEnum):
    """The GEMM kernel's quantization modes (its constexpr ``QUANT``)."""

    NONE = 0  # 16-bit weights and activations
    PER_TENSOR = 1  # w8a8: one scale per expert for w, one scalar for a
    PER_CHANNEL = 2  # w8a8: one scale per output channel for w, one per row for a
    BLOCK = 3  # w8a8: one scale per [block_n, block_k] of w and per [row, block_k] of a
    WEIGHT_ONLY = 4  # 8-bit weights with a per-output-channel scale, 16-bit activations


@dataclass(frozen=True)
class DtypeInfo:
    name: str  # as in kernel keys and config.yaml
    weight_bytes: int  # bytes per weight element as stored
    act_bytes: int  # bytes per element of a GEMM's A operand (1: activations are quantized)
    storage: str | None  # torch dtype name of the quantized weights (None: the hidden dtype)
    hidden: str  # torch dtype name of activations and output
    modes: tuple[QuantMode, ...]  # layouts it admits; the first is the one with no block shape or per-channel flag
    rel_error_bound: float  # largest accepted ‖out − ref‖ / ‖ref‖ against the float32 reference
    peak: str  # which matrix rate bounds its GEMMs: "bf16" or "fp8" (int8 tensor cores: the fp8 rate stands in)

    @property
    def quantized(self) -> bool:
        """Weights are 8-bit and need scales (the ``quant_dtype`` argument of fused_experts)."""
        return self.storage is not None

    @property
    def quantizes_activations(self) -> bool:
        return self.act_bytes == 1

    @property
    def int_accumulate(self) -> bool:
        """int8 × int8 products accumulate in int32."""
        return self.storage == "int8" and self.act_bytes == 1

    def mode(self, block_shape=None, per_channel: bool = False) -> QuantMode:
        """The kernel mode of this dtype with a block shape or per-channel scales; ValueError if it has none."""
        wanted = QuantMode.BLOCK if block_shape is not None else QuantMode.PER_CHANNEL if per_channel else None
        if block_shape is not None and per_channel:
            raise ValueError("per_channel and block_shape exclude each other")
        if wanted is None:
            return self.modes[0]
        if wanted not in self.modes:
            allowed = [d.name for d in DTYPES.values() if wanted in d.modes]
            what = "block_shape" if wanted == QuantMode.BLOCK else "per_channel"
            raise ValueError(f"{what} applies to {'/'.join(allowed)} only, not {self.name}")
        return wanted


_W8A8 = (QuantMode.PER_TENSOR, QuantMode.PER_CHANNEL, QuantMode.BLOCK)

#: Every dtype the kernel computes in, in the order messages list them.
DTYPES: dict[str, DtypeInfo] = {d.name: d for d in (
    DtypeInfo("bf16", 2, 2, None, "bfloat16", (QuantMode.NONE,), 2e-2, "bf16"),
    DtypeInfo("fp16", 2, 2, None, "float16", (QuantMode.NONE,), 2e-2, "bf16"),
    DtypeInfo("fp8_w8a8", 1, 1, "float8_e4m3fn", "bfloat16", _W8A8, 5e-2, "fp8"),
    DtypeInfo("int8_w8a16", 1, 2, "int8", "bfloat16", (QuantMode.WEIGHT_ONLY,), 5e-2, "bf16"),
    DtypeInfo("int8_w8a8", 1, 1, "int8", "bfloat16", _W8A8, 5e-2, "fp8"),
)}

DTYPE_NAMES = tuple(DTYPES)
QUANT_DTYPES = tuple(name for name, d in DTYPES.items() if d.quantized)


def info(name: str) -> DtypeInfo:
    """The facts of one dtype; ValueError naming the allowed ones otherwise."""
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {name!r}") from None
