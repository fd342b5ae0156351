"""The fused-MoE kernel package: the op and what it needs at run time (torch and triton).

Public modules::

    moe        fused_experts, fused_moe, override_config; make_runner, compile_config, smem_bytes (for the tuner)
    routing    fused_topk, moe_align_block_size
    quant      the quantization conventions (scale layouts, storage dtypes)
    reference  the float32 torch reference
    testing    seeded random inputs (make_inputs, meta_inputs)
    timing     the timing method the tuner, the benchmark and verify share (time_callable; time_interleaved to
               compare several)

Private: ``_kernels`` (the @triton.jit code). Launch-config defaults live in ``moekernel.heuristics`` and the tuned
files' lookup in ``moekernel.configs``, both light enough for a host without a GPU stack.

The op's names are also ``moekernel.fused_experts`` and so on. This file imports nothing, so importing one module
of the package loads only what that module needs.
"""
