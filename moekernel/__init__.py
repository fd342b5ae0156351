"""moekernel: a fused Mixture-of-Experts Triton kernel, its runtime config lookup, and the tuner behind them.

Public surface::

    fused_topk, moe_align_block_size, fused_experts, fused_moe, override_config
    moekernel.configs    config file names, loading, get_config
    moekernel.reference  the float32 torch reference
    moekernel.models     model configs -> kernel shapes
    moekernel.tuning     the tuner (CLI: python -m moekernel.tune)
"""

from .fused_moe import fused_experts, fused_moe, override_config
from .routing import fused_topk, moe_align_block_size
from .shapes import KernelShape

__version__ = "0.1.0"

__all__ = ["fused_experts", "fused_moe", "override_config", "fused_topk", "moe_align_block_size", "KernelShape",
           "__version__"]
