"""Plots for results/report/: speedup over the default config, and fraction of the roofline floor.

The roofline floor of one fused-MoE call is max(bytes / bandwidth, flops / peak): the expert weights
the batch touches (uniform routing: E·(1 − (1 − topk/E)^M) experts) plus activations in and out,
against 6·M·topk·N·K flops. Peaks are per device; a device not in :data:`PEAKS` gets no roofline plot.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd

from moekernel.shapes import KernelShape

#: Bandwidth (bytes/s) and dense matrix peaks (flop/s) by engine device name (spaces as '_').
PEAKS = {
    # Measured here (DESIGN.md, 2026-11-26): torch copy bandwidth and matmul throughput.
    "NVIDIA_H200": {"bw": 4.2e12, "16bit": 797e12, "8bit": 1466e12},
    # Datasheet figures (SXM), not measured: fractions against them read low.
    "NVIDIA_H100_80GB_HBM3": {"bw": 3.35e12, "16bit": 989e12, "8bit": 1979e12},
}

INTERPRETER_TITLE = "Triton interpreter on CPU: timings meaningless"


def roofline_floor_us(shape: KernelShape, M: int, device: str) -> float | None:
    """The fastest one call could possibly be on ``device``, in microseconds (None: unknown device)."""
    peaks = PEAKS.get(device)
    if peaks is None:
        return None
    w_bytes = 1 if shape.quant_dtype else 2
    a_bytes = 1 if shape.dtype in ("fp8_w8a8", "int8_w8a8") else 2
    experts = shape.E * (1 - (1 - min(shape.topk, shape.E) / shape.E) ** M)
    weight_bytes = experts * 3 * shape.N * shape.K * w_bytes          # w1 [2N, K] and w2 [K, N] per expert
    act_bytes = M * shape.K * (a_bytes + 2) + M * shape.topk * 3 * shape.N * 2  # x in, out, intermediates
    flops = 6.0 * M * shape.topk * shape.N * shape.K
    peak = peaks["8bit"] if a_bytes == 1 else peaks["16bit"]
    return max((weight_bytes + act_bytes) / peaks["bw"], flops / peak) * 1e6


def load_comparisons(db_path) -> pd.DataFrame:
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        return con.execute("SELECT * FROM comparisons WHERE time_us IS NOT NULL ORDER BY key, source, batch_size").df()
    finally:
        con.close()


def _finish(fig, ax, title: str, interpreted: bool, path) -> None:
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.set_xlabel("batch size M (tokens)")
    ax.grid(True, alpha=0.3)
    if interpreted:
        ax.set_title(f"{title}\n{INTERPRETER_TITLE}", color="red")
    else:
        ax.set_title(title)
    if ax.lines:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def make_report(db_path, out_dir) -> dict[str, Path]:
    """Write speedup.png, roofline.png and comparisons.csv into ``out_dir``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df = load_comparisons(db_path)
    interpreted = bool(len(df)) and (df["backend"] == "interpret").any()
    paths = {"speedup": out / "speedup.png", "roofline": out / "roofline.png", "table": out / "comparisons.csv"}

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for key, g in df.groupby("key"):
        times = g.pivot_table(index="batch_size", columns="source", values="time_us")
        for other in ("default", "baseline"):
            if "tuned" in times and other in times:
                ax.plot(times.index, times[other] / times["tuned"], marker="o", label=f"{key} vs {other}")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_ylabel("speedup of tuned config (×)")
    _finish(fig, ax, "Tuned config speedup", interpreted, paths["speedup"])
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    unknown = set()
    for (key, source, device), g in df.groupby(["key", "source", "device"]):
        shape = KernelShape.from_key(key)
        floors = [roofline_floor_us(shape, int(m), device) for m in g["batch_size"]]
        if None in floors:
            unknown.add(device)
            continue
        ax.plot(g["batch_size"], [f / t for f, t in zip(floors, g["time_us"])], marker="o", label=f"{key} {source}")
    if unknown:
        ax.text(0.5, 0.5, f"no peak figures for {', '.join(sorted(unknown))}", transform=ax.transAxes, ha="center")
    ax.set_ylim(bottom=0)
    ax.set_ylabel("fraction of roofline floor")
    _finish(fig, ax, "Fraction of roofline", interpreted, paths["roofline"])
    plt.close(fig)

    df.to_csv(paths["table"], index=False)
    return paths
