"""Quantization conventions shared by the kernel, the reference and the test inputs.

Scale layouts follow the engines:
- per-tensor w8a8: weight scale [E], activation scale a scalar tensor (static) or computed per call (dynamic);
- per-channel w8a8: weight scale [E, rows], activation scale per token [tokens, 1];
- block-wise w8a8: weight scale [E, ceil(rows/block_n), ceil(cols/block_k)], activations per token per group of
  block_k columns [tokens, ceil(cols/block_k)];
- int8_w8a16: weight scale [E, rows] per output channel, activations stay 16 bit.
"""

from __future__ import annotations

import torch
import triton

from ..dtypes import QuantMode
from ..dtypes import info as dtype_info
from . import pdl

FP8_DTYPE = torch.float8_e4m3fn


def storage_dtype(quant_dtype: str) -> torch.dtype:
    """The torch dtype quantized weights of ``quant_dtype`` are stored in (moekernel.dtypes names it)."""
    return getattr(torch, dtype_info(quant_dtype).storage)


def hidden_dtype(dtype: str) -> torch.dtype:
    """The torch dtype of a dtype's activations and output."""
    return getattr(torch, dtype_info(dtype).hidden)


def expected_scale_shape(mode: QuantMode, E: int, rows: int, cols: int, block_shape=None) -> tuple[int, ...]:
    """The scale tensor of [E, rows, cols] weights in ``mode``, as :func:`quantize_weights` makes it."""
    if mode == QuantMode.PER_TENSOR:
        return (E,)
    if mode == QuantMode.BLOCK:
        bn, bk = block_shape
        return (E, triton.cdiv(rows, bn), triton.cdiv(cols, bk))
    if mode in (QuantMode.PER_CHANNEL, QuantMode.WEIGHT_ONLY):
        return (E, rows)
    raise ValueError(f"no weight scales in mode {mode!r}")


def scale_strides(mode: QuantMode, a_scale, b_scale) -> tuple[int, int, int, int, int]:
    """The GEMM kernel's (stride_asm, stride_ask, stride_bse, stride_bsn, stride_bsk) for each mode's scale layouts:
    a_scale of the activations ([rows, groups] or a scalar), b_scale of the weights (:func:`expected_scale_shape`)."""
    if mode == QuantMode.NONE:
        return 0, 0, 0, 0, 0
    if mode == QuantMode.PER_TENSOR:
        return 0, 0, b_scale.stride(0), 0, 0
    if mode == QuantMode.WEIGHT_ONLY:
        return 0, 0, b_scale.stride(0), b_scale.stride(1), 0
    if mode == QuantMode.PER_CHANNEL:
        return a_scale.stride(0), 0, b_scale.stride(0), b_scale.stride(1), 0
    return a_scale.stride(0), a_scale.stride(1), b_scale.stride(0), b_scale.stride(1), b_scale.stride(2)


def qmax(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).max) if dtype.is_floating_point else float(torch.iinfo(dtype).max)


def _to_storage(y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """y is already scaled into range; int8 rounds half away from zero, as the Triton kernel does."""
    limit = qmax(dtype)
    y = y.clamp(-limit, limit)
    if not dtype.is_floating_point:
        y = torch.sign(y) * torch.floor(y.abs() + 0.5)
    return y.to(dtype)


def quantize_activations(
    x: torch.Tensor,
    quant_dtype: str,
    *,
    group_k: int | None = None,
    interpret: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic quantization of a [rows, cols] activation, one scale per row and group of ``group_k`` columns (None:
    one scale per row); returns (q, scale [rows, groups]). Per-tensor scales: :func:`quantize_per_tensor`."""
    dtype = storage_dtype(quant_dtype)
    x = x.contiguous()  # the kernel steps along a row with unit stride
    rows, cols = x.shape
    group = group_k if group_k is not None else cols
    n_groups = triton.cdiv(cols, group)
    if interpret:
        # The interpreter's float-to-fp8 conversion does not round to nearest; torch's does, like the GPU.
        return _quantize_groups_torch(x, dtype, group, n_groups)
    from ._kernels import _quant_groups

    q = torch.empty((rows, cols), dtype=dtype, device=x.device)
    s = torch.empty((rows, n_groups), dtype=torch.float32, device=x.device)
    if rows:
        _quant_groups[(rows, n_groups)](
            x, q, s, cols, x.stride(0), q.stride(0), s.stride(0),
            GROUP=group, BLOCK=triton.next_power_of_2(group), QMAX=qmax(dtype),
            IS_INT=not dtype.is_floating_point, **pdl.launch_meta(),
        )
    return q, s


def quantize_per_tensor(x, quant_dtype, *, scale=None, amax=None, amax_ready=False, interpret=False):
    """One scale for the whole tensor: ``scale`` if given (static), else max|x| / qmax (dynamic).

    ``amax`` is a one-element float32 slot for the running maximum; with ``amax_ready`` it already holds max|x|
    (gathered by the GEMM that wrote x), so no extra pass over x is made. On the GPU this is two launches at most.
    """
    dtype = storage_dtype(quant_dtype)
    if interpret or not x.is_contiguous():
        # The interpreter's float-to-fp8 conversion does not round to nearest; torch's does, like the GPU.
        if scale is None:
            peak = amax.reshape(()) if amax_ready else x.abs().amax().float()
            scale = (peak / qmax(dtype)).clamp_min(1e-10)
        scale = scale.float().reshape(1)
        return _to_storage(x.float() / scale, dtype), scale
    from ._kernels import _amax, _quant_per_tensor

    static = scale is not None
    q = torch.empty(x.shape, dtype=dtype, device=x.device)
    s = scale.float().reshape(1) if static else torch.empty(1, dtype=torch.float32, device=x.device)
    if amax is None:
        amax = torch.zeros(1, dtype=torch.float32, device=x.device)
    numel, block = x.numel(), 4096
    grid = (max(1, triton.cdiv(numel, block)),)
    overlap = pdl.launch_meta()
    if not static and not amax_ready:
        _amax[grid](x, amax, numel, BLOCK=block, **overlap)
    _quant_per_tensor[grid](x, q, s, amax, numel, BLOCK=block, QMAX=qmax(dtype), IS_INT=not dtype.is_floating_point,
                            STATIC=static, **overlap)
    return q, s


def _quantize_groups_torch(x, dtype, group, n_groups):
    rows, cols = x.shape
    padded = torch.zeros((rows, n_groups * group), dtype=torch.float32, device=x.device)
    padded[:, :cols] = x.float()
    g = padded.view(rows, n_groups, group)
    s = g.abs().amax(dim=2).clamp_min(1e-10) / qmax(dtype)
    q = _to_storage(g / s[:, :, None], dtype).view(rows, -1)[:, :cols].contiguous()
    return q, s


def quantize_weights(
    w: torch.Tensor, quant_dtype: str, *, block_shape=None, per_channel: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize [E, rows, cols] weights the way checkpoints ship them; returns (q, scale)."""
    dtype = storage_dtype(quant_dtype)
    E, rows, cols = w.shape
    wf = w.float()
    if block_shape is not None:
        bn, bk = block_shape
        nr, nc = triton.cdiv(rows, bn), triton.cdiv(cols, bk)
        padded = torch.zeros((E, nr * bn, nc * bk), dtype=torch.float32, device=w.device)
        padded[:, :rows, :cols] = wf
        blocks = padded.view(E, nr, bn, nc, bk)
        scale = (blocks.abs().amax(dim=(2, 4)) / qmax(dtype)).clamp_min(1e-10)
        q = _to_storage(blocks / scale[:, :, None, :, None], dtype).view(E, nr * bn, nc * bk)
        return q[:, :rows, :cols].contiguous(), scale
    if dtype_info(quant_dtype).mode(None, per_channel) in (QuantMode.PER_CHANNEL, QuantMode.WEIGHT_ONLY):
        scale = (wf.abs().amax(dim=2) / qmax(dtype)).clamp_min(1e-10)
        return _to_storage(wf / scale[:, :, None], dtype), scale
    scale = (wf.abs().amax(dim=(1, 2)) / qmax(dtype)).clamp_min(1e-10)
    return _to_storage(wf / scale[:, None, None], dtype), scale


def dequantize_weights(q: torch.Tensor, scale: torch.Tensor | None, *, block_shape=None) -> torch.Tensor:
    """Float32 weights [E, rows, cols] from a quantized tensor and its scale (any layout above)."""
    wf = q.float()
    if scale is None:
        return wf
    E, rows, cols = q.shape
    if block_shape is not None:
        bn, bk = block_shape
        s = scale.float().repeat_interleave(bn, dim=1).repeat_interleave(bk, dim=2)
        return wf * s[:, :rows, :cols]
    if scale.dim() == 1:
        return wf * scale.float()[:, None, None]
    return wf * scale.float().reshape(E, rows)[:, :, None]
