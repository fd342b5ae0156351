"""Plots for results/report/: speedup over the default config, and fraction of the roofline floor.

The floor is :mod:`moekernel.roofline`'s, the benchmark's own model, with the ceilings it knows for the device
(:data:`moekernel.roofline.KNOWN_CEILINGS`) and the experts verify saw the routing hit (the uniform-routing
expectation where a row lacks them). A device without known ceilings gets no roofline plot.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd

from moekernel import roofline
from moekernel.shapes import KernelShape

INTERPRETER_TITLE = "Triton interpreter on CPU: timings meaningless"


def roofline_floor_us(shape: KernelShape, M: int, device: str, hit: float | None = None) -> float | None:
    """The fastest one call could possibly be on ``device``, in microseconds (None: unknown device).

    ``hit``: experts the routing sent tokens to (None: the expected number under uniform routing)."""
    ceilings = roofline.KNOWN_CEILINGS.get(device)
    if ceilings is None:
        return None
    if hit is None or pd.isna(hit):
        hit = roofline.expected_hit_experts(shape, M)
    return roofline.floor_us(shape, M, hit, ceilings)


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
        floors = [roofline_floor_us(shape, int(m), device, hit) for m, hit in zip(g["batch_size"], g["hit_experts"])]
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
