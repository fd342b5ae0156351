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
3. Sources, all on the same seeded inputs (moekernel.kernel.testing.make_inputs) and timed with the tuner's helper
   (moekernel.kernel.timing.time_interleaved: CUDA graph of up to 10 calls, median of the replays; the sources of
   one batch size take turns, a few replays each, so a drift of the GPU's clocks weighs on them alike):
   ``default`` (moekernel.heuristics.default_config with extended=True: TMA loads, and may split the down GEMM),
   ``default-six`` (the same rule held to the engines' six parameters, what an engine file can carry),
   ``engine-default`` (what vLLM falls back to without tuned files), ``folder:DIR`` / ``tuned:DIR`` for each
   ``--configs`` / ``--tuned`` folder (its engine file for this device, else another device's engine file of the
   same E, N, dtype and block shape, said so), ``own:DIR`` where the folder also holds moekernel's own file of
   this shape and device (its extended parameters, what moekernel's runtime runs from DIR), and ``torch``
   (torch._grouped_mm where it runs, else a per-expert torch.matmul loop; quantized weights are dequantized
   to bf16 for it). Every output is compared once with the float32 reference.

Without CUDA the kernels run in Triton's CPU interpreter: the command still runs (tiny shapes only), but its
times are interpreter times, the ceilings are skipped and fractions read n/a.

Modules: ``ceilings`` (measured ceilings), ``sources`` (config rules, files and torch), ``run`` (timing every
source at every batch size), ``table`` (summary and tables), ``cli`` (the command line). The roofline model itself
is ``moekernel.roofline``, shared with the pipeline's report.
"""
