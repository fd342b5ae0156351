"""moekernel: a fused Mixture-of-Experts Triton kernel, the tuner behind its launch configs, and the pipeline.

Three parts::

    moekernel.kernel     the op (torch + triton): fused_experts, fused_moe, override_config, fused_topk, ...
    moekernel.tuning     the tuner (CLI: python -m moekernel.tune)
    moekernel.pipeline   the Snakemake workflow's logic: plan, database, emit, verify, report, GPU pinning

and what they share, none of which needs torch or triton to import: ``dtypes`` (the facts of each dtype),
``shapes`` (kernel keys), ``configs`` (engine config files, the runtime lookup), ``heuristics`` (default configs),
``models`` (model configs → kernel shapes), ``backend`` (cuda or the interpreter), ``roofline``, ``provenance``.
The benchmark is ``python -m moekernel.bench``.

``import moekernel`` is light: the op's names below load the kernel package on first use.
"""

from .shapes import KernelShape

__version__ = "0.1.0"

#: The op's public names and the kernel module that defines each.
_KERNEL_NAMES = {"fused_experts": "moe", "fused_moe": "moe", "override_config": "moe", "fused_topk": "routing",
                 "moe_align_block_size": "routing"}

__all__ = [*_KERNEL_NAMES, "KernelShape", "__version__"]


def __getattr__(name: str):
    # PEP 562: the kernel (and with it torch and triton) loads when one of its names is first asked for.
    if name in _KERNEL_NAMES:
        import importlib

        return getattr(importlib.import_module(f"moekernel.kernel.{_KERNEL_NAMES[name]}"), name)
    raise AttributeError(f"module 'moekernel' has no attribute {name!r}")
