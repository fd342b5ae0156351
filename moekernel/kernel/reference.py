"""A plain-torch float32 fused MoE for every quantization mode: the ground truth for tests and the tuner.

It follows the kernel's conventions exactly where they change the numbers (activations quantized with
scale = max|x| / qmax, int8 rounding half away from zero, the intermediate stored in the hidden dtype), and is
otherwise written for clarity, not speed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..dtypes import info as dtype_info
from .quant import _to_storage, dequantize_weights, qmax, storage_dtype


def _round_to_storage(y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return _to_storage(y, dtype).float()


def _fake_quant(t: torch.Tensor, quant_dtype, scale, block_shape, per_channel) -> torch.Tensor:
    """What a w8a8 GEMM sees of activation t (float32 [rows, cols]): quantized, then scaled back."""
    if quant_dtype is None or not dtype_info(quant_dtype).quantizes_activations:
        return t
    dtype = storage_dtype(quant_dtype)
    rows, cols = t.shape
    if block_shape is not None or per_channel:
        group = block_shape[1] if block_shape is not None else cols
        n_groups = -(-cols // group)
        padded = torch.zeros((rows, n_groups * group), dtype=torch.float32, device=t.device)
        padded[:, :cols] = t
        g = padded.view(rows, n_groups, group)
        s = g.abs().amax(dim=2, keepdim=True).clamp_min(1e-10) / qmax(dtype)
        return (_round_to_storage(g / s, dtype) * s).view(rows, -1)[:, :cols]
    if scale is None:
        s = (t.abs().amax() / qmax(dtype)).clamp_min(1e-10)
    else:
        s = scale.float().reshape(())
    return _round_to_storage(t / s, dtype) * s


def fused_experts_ref(hidden_states, w1, w2, topk_weights, topk_ids, *, config=None, quant_dtype=None,
                      w1_scale=None, w2_scale=None, a1_scale=None, a2_scale=None, block_shape=None,
                      per_channel=False, expert_map=None, activation="silu") -> torch.Tensor:
    """Same arguments as moekernel.fused_experts (config is ignored); returns float32 [M, K]."""
    if activation != "silu":
        raise ValueError(f"activation {activation!r} is not supported; supported: 'silu'")
    M, K = hidden_states.shape
    E, N = w2.shape[0], w2.shape[2]
    topk = topk_ids.shape[1]
    quantized = quant_dtype is not None
    W1 = dequantize_weights(w1, w1_scale, block_shape=block_shape) if quantized else w1.float()
    W2 = dequantize_weights(w2, w2_scale, block_shape=block_shape) if quantized else w2.float()

    ids = topk_ids.long().flatten()
    local = expert_map.long()[ids] if expert_map is not None else ids
    weights = topk_weights.float().flatten()

    rows_of = [(local == e).nonzero().flatten() for e in range(E)]  # each expert's (token, k) entries
    xa = _fake_quant(hidden_states.float(), quant_dtype, a1_scale, block_shape, per_channel)
    inter = torch.zeros((M * topk, N), dtype=torch.float32, device=hidden_states.device)
    for e, rows in enumerate(rows_of):
        if rows.numel():
            h = xa[rows // topk] @ W1[e].T
            inter[rows] = F.silu(h[:, :N]) * h[:, N:]
    # The kernel keeps the intermediate in the hidden dtype between the two GEMMs.
    inter = inter.to(hidden_states.dtype).float()
    ia = _fake_quant(inter, quant_dtype, a2_scale, block_shape, per_channel)
    out = torch.zeros((M * topk, K), dtype=torch.float32, device=hidden_states.device)
    for e, rows in enumerate(rows_of):
        if rows.numel():
            out[rows] = (ia[rows] @ W2[e].T) * weights[rows, None]
    return out.view(M, topk, K).sum(dim=1)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64; NaN anywhere gives inf so it never passes a bound."""
    out64, ref64 = out.double(), ref.double()
    if not torch.isfinite(out64).all():
        return float("inf")
    denom = ref64.norm().item()
    return (out64 - ref64).norm().item() / (denom if denom > 0 else 1.0)
