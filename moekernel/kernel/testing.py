"""Seeded random inputs for one kernel shape and batch size: shared by tests, the tuner, the benchmark and verify."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..shapes import KernelShape
from .quant import quantize_weights
from .routing import fused_topk


@dataclass
class MoEInputs:
    hidden_states: torch.Tensor
    w1: torch.Tensor
    w2: torch.Tensor
    topk_weights: torch.Tensor
    topk_ids: torch.Tensor
    gating_output: torch.Tensor | None = None
    quant_dtype: str | None = None
    w1_scale: torch.Tensor | None = None
    w2_scale: torch.Tensor | None = None
    a1_scale: torch.Tensor | None = None
    a2_scale: torch.Tensor | None = None
    block_shape: tuple | None = None
    per_channel: bool = False
    expert_map: torch.Tensor | None = None

    def kwargs(self) -> dict:
        """Keyword arguments of fused_experts / fused_experts_ref (everything but config)."""
        return dict(hidden_states=self.hidden_states, w1=self.w1, w2=self.w2, topk_weights=self.topk_weights,
                    topk_ids=self.topk_ids, quant_dtype=self.quant_dtype, w1_scale=self.w1_scale,
                    w2_scale=self.w2_scale, a1_scale=self.a1_scale, a2_scale=self.a2_scale,
                    block_shape=self.block_shape, per_channel=self.per_channel, expert_map=self.expert_map)


def hidden_dtype(shape: KernelShape) -> torch.dtype:
    from .quant import hidden_dtype as of_dtype

    return of_dtype(shape.dtype)


def _routing(shape: KernelShape, M: int, routing: str, gen: torch.Generator, device, offset: int = 0):
    E, topk = shape.E, shape.topk
    logits = torch.randn((M, E), generator=gen, device=device, dtype=torch.float32)
    if routing == "uniform":
        weights, ids = fused_topk(logits, logits, topk, renormalize=True)
        return logits, weights, ids
    if routing.startswith("zipf:"):
        try:
            s = float(routing.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"routing {routing!r}: expected zipf:<exponent>, e.g. zipf:1.2") from None
        probs = 1.0 / torch.arange(1, E + 1, device=device, dtype=torch.float32) ** s
        ids = torch.multinomial(probs.expand(M, E), topk, replacement=False, generator=gen).to(torch.int32)
    else:
        ids = load_recorded_ids(routing, M, shape, offset).to(device)
    weights = torch.softmax(logits, dim=-1).gather(1, ids.long())
    weights = weights / weights.sum(dim=-1, keepdim=True)
    return logits, weights, ids


def load_recorded_ids(path, M: int, shape: KernelShape, offset: int = 0) -> torch.Tensor:
    """Top-k ids recorded from a real run ([tokens, topk], .npy or .pt); rows are taken cyclically from ``offset``
    to fill M."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"routing: {path} is neither 'uniform', 'zipf:<s>' nor an existing .npy/.pt file of top-k ids")
    data = np.load(path) if path.suffix == ".npy" else torch.load(path, map_location="cpu")
    ids = torch.as_tensor(data).to(torch.int32)
    if ids.dim() != 2 or ids.shape[1] != shape.topk or ids.numel() == 0:
        raise ValueError(f"{path}: expected top-k ids of shape [tokens, {shape.topk}], got {list(ids.shape)}")
    if int(ids.min()) < 0 or int(ids.max()) >= shape.E:
        raise ValueError(f"{path}: expert ids must lie in 0..{shape.E - 1}")
    start = offset % ids.shape[0]
    reps = -(-(start + M) // ids.shape[0])
    return ids.repeat(reps, 1)[start:start + M].contiguous()


def make_inputs(shape: KernelShape, M: int, *, routing: str = "uniform", seed: int = 0, device=None) -> MoEInputs:
    """Random (never zero) activations, weights and routing for one call; same seed and device, same inputs."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    dt = hidden_dtype(shape)
    E, N, K = shape.E, shape.N, shape.K
    x = torch.randn((M, K), generator=gen, device=device, dtype=torch.float32).to(dt)
    # Weights scaled so each GEMM's outputs stay O(1), as in a trained layer.
    w1 = (torch.randn((E, 2 * N, K), generator=gen, device=device, dtype=torch.float32) / K ** 0.5)
    w2 = (torch.randn((E, K, N), generator=gen, device=device, dtype=torch.float32) / N ** 0.5)
    logits, weights, ids = _routing(shape, M, routing, gen, device)
    inputs = MoEInputs(x, w1.to(dt), w2.to(dt), weights, ids, logits)
    if shape.quant_dtype is not None:
        inputs.quant_dtype = shape.quant_dtype
        inputs.block_shape = shape.block_shape
        inputs.per_channel = shape.per_channel
        inputs.w1, inputs.w1_scale = quantize_weights(w1, shape.quant_dtype, block_shape=shape.block_shape,
                                                      per_channel=shape.per_channel)
        inputs.w2, inputs.w2_scale = quantize_weights(w2, shape.quant_dtype, block_shape=shape.block_shape,
                                                      per_channel=shape.per_channel)
    return inputs


#: Routing draws of one (shape, M, seed): the tuner times its finalists on draws 0..draws-1 (draw 0 is make_inputs'
#: own); verify re-times the winners on draws from HELD_OUT_DRAW on, which the tuner never sees.
HELD_OUT_DRAW = 1000


def redraw(inputs: MoEInputs, shape: KernelShape, M: int, *, routing: str = "uniform", seed: int = 0,
           draw: int = 1) -> MoEInputs:
    """The same activations and weights with routing draw ``draw`` (0: the inputs as make_inputs made them).

    Each draw has its own generator, so a draw is the same on any machine; recorded ids are read from another
    offset per draw."""
    if draw == 0:
        return inputs
    device = inputs.hidden_states.device
    gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + draw)
    logits, weights, ids = _routing(shape, M, routing, gen, device, offset=draw * M)
    return dataclasses.replace(inputs, topk_weights=weights, topk_ids=ids, gating_output=logits)


def meta_inputs(shape: KernelShape, M: int) -> MoEInputs:
    """Shape-only tensors ('meta' device) with the dtypes and strides of make_inputs, for compiling."""
    meta = dict(device="meta")
    dt = hidden_dtype(shape)
    E, N, K = shape.E, shape.N, shape.K
    inputs = MoEInputs(
        torch.empty((M, K), dtype=dt, **meta),
        torch.empty((E, 2 * N, K), dtype=dt, **meta),
        torch.empty((E, K, N), dtype=dt, **meta),
        torch.empty((M, shape.topk), dtype=torch.float32, **meta),
        torch.empty((M, shape.topk), dtype=torch.int32, **meta),
    )
    if shape.quant_dtype is not None:
        inputs.quant_dtype, inputs.block_shape, inputs.per_channel = shape.quant_dtype, shape.block_shape, shape.per_channel
        # quantize_weights on meta tensors: the weights' and scales' layouts exactly as make_inputs gets them.
        layout = dict(block_shape=shape.block_shape, per_channel=shape.per_channel)
        inputs.w1, inputs.w1_scale = quantize_weights(inputs.w1, shape.quant_dtype, **layout)
        inputs.w2, inputs.w2_scale = quantize_weights(inputs.w2, shape.quant_dtype, **layout)
    return inputs
