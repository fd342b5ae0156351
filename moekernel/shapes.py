"""Kernel shapes and their keys.

A kernel key names everything a timing depends on, e.g. ``E8-N7168-K4096-top2-bf16`` or
``E256-N256-K7168-top8-fp8_w8a8-block128x128``. It is the one string the pipeline passes
around as a wildcard; :func:`KernelShape.from_key` is the only place that parses it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import dtypes
from .dtypes import DTYPE_NAMES as DTYPES  # noqa: F401 - the names, for argument choices and messages
from .dtypes import QUANT_DTYPES  # noqa: F401

_KEY_RE = re.compile(
    r"^E(?P<E>\d+)-N(?P<N>\d+)-K(?P<K>\d+)-top(?P<topk>\d+)-(?P<dtype>[a-z0-9_]+?)"
    r"(?:-block(?P<bn>\d+)x(?P<bk>\d+))?(?:-(?P<pc>perchannel))?$"
)


@dataclass(frozen=True)
class KernelShape:
    """What one GPU's fused-MoE call computes: E local experts, w1 [E, 2N, K], w2 [E, K, N]."""

    E: int
    N: int
    K: int
    topk: int
    dtype: str = "bf16"
    block_shape: tuple[int, int] | None = None
    per_channel: bool = False

    def __post_init__(self):
        for name in ("E", "N", "K", "topk"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"KernelShape.{name} must be a positive integer, got {value!r}")
        if self.dtype not in dtypes.DTYPES:
            raise ValueError(f"KernelShape.dtype must be one of {', '.join(dtypes.DTYPES)}; got {self.dtype!r}")
        if self.block_shape is not None:
            bs = tuple(int(b) for b in self.block_shape)
            if len(bs) != 2 or min(bs) < 1:
                raise ValueError(f"block_shape must be [block_n, block_k] of positive ints, got {self.block_shape!r}")
            object.__setattr__(self, "block_shape", bs)
        self.info.mode(self.block_shape, self.per_channel)  # raises if the dtype has no such layout
        # topk may exceed E: with expert parallelism a rank holds fewer experts than a token picks.

    @property
    def info(self) -> dtypes.DtypeInfo:
        """The dtype's facts (:mod:`moekernel.dtypes`)."""
        return dtypes.DTYPES[self.dtype]

    @property
    def quant_mode(self) -> dtypes.QuantMode:
        return self.info.mode(self.block_shape, self.per_channel)

    @property
    def quant_dtype(self) -> str | None:
        """The ``quant_dtype`` argument of :func:`moekernel.fused_experts`."""
        return self.dtype if self.info.quantized else None

    @property
    def config_dtype(self) -> str | None:
        """The dtype part of an engine config file name (None for bf16/fp16)."""
        return self.quant_dtype

    @property
    def key(self) -> str:
        key = f"E{self.E}-N{self.N}-K{self.K}-top{self.topk}-{self.dtype}"
        if self.block_shape is not None:
            key += f"-block{self.block_shape[0]}x{self.block_shape[1]}"
        if self.per_channel:
            key += "-perchannel"
        return key

    @classmethod
    def from_key(cls, key: str) -> "KernelShape":
        m = _KEY_RE.match(key)
        if not m:
            raise ValueError(
                f"not a kernel key: {key!r}; expected e.g. 'E8-N7168-K4096-top2-bf16' "
                "or 'E256-N256-K7168-top8-fp8_w8a8-block128x128'"
            )
        block = (int(m["bn"]), int(m["bk"])) if m["bn"] else None
        return cls(int(m["E"]), int(m["N"]), int(m["K"]), int(m["topk"]), m["dtype"], block, bool(m["pc"]))

    def __str__(self) -> str:
        return self.key
