"""What the benchmark runs: config rules (our default, the engines'), folders of config files, and plain torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..configs import (config_file_name, extended_config_file_name, is_engine_file_name, load_configs,
                       nearest_batch_size)
from ..heuristics import default_config, engine_default_config
from ..shapes import KernelShape


@dataclass
class Source:
    """One way of running the MoE: a config rule, a config file's table, or plain torch."""

    name: str  # default, default-six, engine-default, folder:DIR, tuned:DIR, torch
    kind: str  # heuristic, file, torch
    label: str  # table column
    table: dict | None = None  # batch size -> config (kind "file")
    file: str | None = None
    note: str | None = None

    def config(self, shape: KernelShape, M: int) -> tuple[dict, int | None]:
        """(config, the file's batch size it came from) — as an engine picks: the nearest batch size."""
        args = (M, shape.E, shape.N, shape.K, shape.topk, shape.dtype, shape.block_shape)
        if self.name == "default":
            return default_config(*args, extended=True), None
        if self.name == "default-six":
            return default_config(*args), None
        if self.name == "engine-default":
            return engine_default_config(*args), None
        m = nearest_batch_size(self.table, M)
        return self.table[m], m

    def to_json(self) -> dict:
        return {"name": self.name, "kind": self.kind, "label": self.label, "file": self.file, "note": self.note}


def find_config_file(folder, shape: KernelShape, device_name: str) -> tuple[Path | None, str | None, str]:
    """(path, its device name, message): the folder's file of this shape for ``device_name``, else the file of
    another device with the same E, N, dtype and block shape (the message says which), else (None, None, why)."""
    folder = Path(folder)
    args = (shape.E, shape.N, shape.config_dtype, shape.block_shape)
    exact = folder / config_file_name(*args, device_name=device_name)
    if exact.is_file():
        return exact, device_name, f"using {exact.name}"
    marker = "\x00"
    prefix, suffix = config_file_name(*args, device_name=marker).split(marker)
    found = {}
    for path in sorted(folder.iterdir()):
        name = path.name
        if not (path.is_file() and name.startswith(prefix) and name.endswith(suffix) and is_engine_file_name(name)):
            continue
        device = name[len(prefix):len(name) - len(suffix)]
        if device and "," not in device:  # a comma: a longer name (another dtype or block shape)
            found[device] = path
    if not found:
        return None, None, (f"no file for E={shape.E}, N={shape.N}, dtype={shape.dtype}"
                            f"{f', block_shape={list(shape.block_shape)}' if shape.block_shape else ''} in {folder}")
    device, path = next(iter(found.items()))
    message = f"no file for device {device_name} in {folder}; falling back to {path.name} (tuned for {device})"
    if len(found) > 1:
        message += f"; other devices there: {', '.join(list(found)[1:])}"
    return path, device, message


def folder_source(prefix: str, folder, shape: KernelShape, device_name: str) -> Source:
    path, device, message = find_config_file(folder, shape, device_name)
    name = f"{prefix}:{folder}"
    label = f"{prefix}:{Path(folder).name or folder}"
    if path is None:
        return Source(name, "file", label, note=message)
    # The engine file found above (and its _down.json twin), what an engine would run: not moekernel's own file.
    table = load_configs(shape.E, shape.N, shape.config_dtype, shape.block_shape, device_name=device,
                         folders=[Path(folder)], extended=False)
    return Source(name, "file", label, table=table, file=str(path), note=message)


def own_file_source(folder, shape: KernelShape, device_name: str) -> Source | None:
    """moekernel's own file of this shape and device in ``folder`` (extended parameters: what moekernel's runtime
    runs from that folder), or None where there is none."""
    name = extended_config_file_name(shape.E, shape.N, shape.config_dtype, shape.block_shape, device_name)
    path = Path(folder) / name
    if not path.is_file():
        return None
    table = load_configs(shape.E, shape.N, shape.config_dtype, shape.block_shape, device_name=device_name,
                         folders=[Path(folder)], fallback=False)
    return Source(f"own:{folder}", "file", f"own:{Path(folder).name or folder}", table=table, file=str(path),
                  note=f"using {name}, moekernel's own file (extended parameters)")


def torch_baseline(inputs, shape: KernelShape):
    """(callable, label, graph-capturable): the same MoE in plain torch ops.

    torch._grouped_mm: sort the (token, slot) pairs by expert, one grouped GEMM up (x·w1ᵀ), silu(gate)·up,
    one grouped GEMM down, routing weights, scatter-add over the top-k. Where grouped mm does not run (old torch,
    dtype or GPU it does not support) a per-expert loop of torch.matmul (its boolean masks sync with the host,
    so it cannot be captured in a CUDA graph). Quantized weights are dequantized to the hidden dtype up front.
    """
    import torch
    import torch.nn.functional as F

    from ..kernel.quant import dequantize_weights

    x, weights, ids = inputs.hidden_states, inputs.topk_weights, inputs.topk_ids
    M, K = x.shape
    E, N, topk = shape.E, shape.N, shape.topk
    how = str(x.dtype).replace("torch.", "")
    if shape.quant_dtype is not None:
        w1 = dequantize_weights(inputs.w1, inputs.w1_scale, block_shape=shape.block_shape).to(x.dtype)
        w2 = dequantize_weights(inputs.w2, inputs.w2_scale, block_shape=shape.block_shape).to(x.dtype)
        how += f", {shape.dtype} weights dequantized" + (
            ", activations not quantized" if shape.info.quantizes_activations else "")
    else:
        w1, w2 = inputs.w1, inputs.w2
    w1t, w2t = w1.transpose(1, 2), w2.transpose(1, 2)  # [E, K, 2N], [E, N, K], column-major views
    experts = torch.arange(E, device=x.device)

    def grouped():
        sorted_ids, order = torch.sort(ids.reshape(-1).long(), stable=True)
        offsets = torch.searchsorted(sorted_ids, experts, right=True, out_int32=True)  # end of each group
        tokens = order // topk
        h = torch._grouped_mm(x[tokens], w1t, offs=offsets)
        y = torch._grouped_mm(F.silu(h[:, :N]) * h[:, N:], w2t, offs=offsets)
        y = y.float() * weights.reshape(-1)[order, None]
        return torch.zeros((M, K), dtype=torch.float32, device=x.device).index_add_(0, tokens, y).to(x.dtype)

    def loop():
        flat = ids.reshape(-1).long()
        flat_weights = weights.reshape(-1)
        out = torch.zeros((M, K), dtype=torch.float32, device=x.device)
        for e in range(E):
            slots = (flat == e).nonzero().squeeze(1)
            if slots.numel():
                tokens = slots // topk
                h = x[tokens] @ w1[e].t()
                y = (F.silu(h[:, :N]) * h[:, N:]) @ w2[e].t()
                out.index_add_(0, tokens, y.float() * flat_weights[slots, None])
        return out.to(x.dtype)

    why = "torch._grouped_mm missing"
    if hasattr(torch, "_grouped_mm"):
        try:
            grouped()
            if x.is_cuda:
                torch.cuda.synchronize()
            return grouped, f"torch._grouped_mm ({how})", True
        except Exception as exc:  # noqa: BLE001 - dtype/GPU/stride not supported by this torch
            why = f"torch._grouped_mm failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    return loop, f"torch.matmul per-expert loop ({how}; {why})", False


def build_sources(args, shape: KernelShape, device_name: str) -> list[Source]:
    sources = [Source("default", "heuristic", "default",
                      note="moekernel.heuristics.default_config(extended=True), what moekernel falls back to"),
               Source("default-six", "heuristic", "default-six",
                      note="moekernel.heuristics.default_config: the six engine parameters only (no TMA, SPLIT_K=1)"),
               Source("engine-default", "heuristic", "engine-default",
                      note="moekernel.heuristics.engine_default_config (vLLM's fallback without tuned files)")]
    for prefix, folders in (("folder", args.configs), ("tuned", args.tuned)):
        for folder in folders:
            if not Path(folder).is_dir():
                raise ValueError(f"--{'configs' if prefix == 'folder' else 'tuned'} {folder}: not a folder")
            sources.append(folder_source(prefix, folder, shape, device_name))
            own = own_file_source(folder, shape, device_name)
            if own is not None:
                sources.append(own)
    if not args.skip_torch:
        sources.append(Source("torch", "torch", "torch"))
    return sources

