"""The benchmark's report: per-source summary, the batch-size table (plain or Markdown) and its legend."""

from __future__ import annotations

import math

from .sources import Source


def _geomean(values) -> float | None:
    values = [v for v in values if v is not None and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def summarize(rows: list[dict], sources: list[Source]) -> dict:
    """Per source: geomean and min fraction; per other source: speedup of default (its time / default's)."""
    by = {(r["source"], r["batch_size"]): r for r in rows}
    out = {"sources": {}, "default_speedup": {}}
    for src in sources:
        mine = [r for r in rows if r["source"] == src.name]
        fractions = [r for r in mine if r["fraction"] is not None]
        worst = min(fractions, key=lambda r: r["fraction"]) if fractions else None
        out["sources"][src.name] = {
            "geomean_fraction": _geomean(r["fraction"] for r in fractions),
            "min_fraction": worst and worst["fraction"], "min_fraction_batch_size": worst and worst["batch_size"],
            "mismatch_batch_sizes": [r["batch_size"] for r in mine if r["mismatch"]],
            "error_batch_sizes": [r["batch_size"] for r in mine if r["error"]],
        }
        if src.name == "default":
            continue
        ratios = {}
        for r in mine:
            d = by.get(("default", r["batch_size"]))
            if r["time_us"] and d and d["time_us"]:
                ratios[r["batch_size"]] = r["time_us"] / d["time_us"]
        if ratios:
            out["default_speedup"][src.name] = {
                "geomean": _geomean(ratios.values()), "min": min(ratios.values()), "max": max(ratios.values()),
                "min_batch_size": min(ratios, key=ratios.get), "max_batch_size": max(ratios, key=ratios.get),
                "batch_sizes": len(ratios)}
    return out


def fmt_time(t) -> str:
    if t is None:
        return "-"
    return f"{t:.3g}" if t < 1 else f"{t:.1f}" if t < 1e4 else f"{t:.0f}"


def _fmt_frac(f) -> str:
    return "n/a" if f is None else f"{f:.2f}"


def _fmt_ratio(r: float) -> str:
    return f"{r:.2f}×" if r >= 0.1 else f"{r:.2g}×"


def format_table(rows: list[dict], sources: list[Source], *, markdown: bool = False) -> str:
    """Batch sizes down, sources across: each source's µs and fraction of the floor. '!': output mismatch."""
    header = ["M", "hit", "floor µs", "bound"]
    for src in sources:
        header += [f"{src.label} µs", "frac"]
    by = {(r["source"], r["batch_size"]): r for r in rows}
    table = []
    for M in dict.fromkeys(r["batch_size"] for r in rows):
        first = by[(sources[0].name, M)]
        line = [str(M), str(first["hit_experts"]), fmt_time(first["floor_us"]) if first["floor_us"] else "n/a",
                first["bound"] or "n/a"]
        for src in sources:
            r = by[(src.name, M)]
            if r["skipped"]:
                line += ["-", "-"]
            elif r["error"]:
                line += ["ERR", "-"]
            else:
                line += [fmt_time(r["time_us"]) + ("!" if r["mismatch"] else ""), _fmt_frac(r["fraction"])]
        table.append(line)
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
        lines += ["| " + " | ".join(line) + " |" for line in table]
        return "\n".join(lines)
    widths = [max(len(h), *(len(line[i]) for line in table)) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in table]
    return "\n".join(lines)


def format_summary(summary: dict, sources: list[Source]) -> str:
    lines = []
    for src in sources:
        s = summary["sources"][src.name]
        text = f"{src.label}: geomean fraction {_fmt_frac(s['geomean_fraction'])}"
        if s["min_fraction"] is not None:
            text += f", min {_fmt_frac(s['min_fraction'])} at M={s['min_fraction_batch_size']}"
        if s["mismatch_batch_sizes"]:
            text += f"; OUTPUT MISMATCH at M={s['mismatch_batch_sizes']}"
        if s["error_batch_sizes"]:
            text += f"; failed at M={s['error_batch_sizes']}"
        lines.append(text)
    if summary["default_speedup"]:
        lines.append("speedup of default = the other's time / the default's (geomean over batch sizes; >1: default "
                     "is faster)")
    for name, s in summary["default_speedup"].items():
        label = next(src.label for src in sources if src.name == name)
        lines.append(f"default vs {label}: {_fmt_ratio(s['geomean'])} geomean speedup "
                     f"(min {_fmt_ratio(s['min'])} at M={s['min_batch_size']}, max {_fmt_ratio(s['max'])} at "
                     f"M={s['max_batch_size']}, {s['batch_sizes']} batch sizes)")
    return "\n".join(lines)


def format_legend(sources: list[Source], rows: list[dict]) -> str:
    lines = []
    for src in sources:
        methods = sorted({r["method"] for r in rows if r["source"] == src.name and r["method"]})
        text = f"  {src.label}:" + (f" {src.name}" if src.label != src.name else "")
        if src.note:
            text += (" — " if src.label != src.name else " ") + src.note
        lines.append(text + (f" [timed with {', '.join(methods)}]" if methods else ""))
    lines.append("  frac = roofline floor / time (1 = at the roofline); '!' = output differs from the float32 "
                 "reference beyond the dtype's bound; ERR: see --json")
    return "\n".join(lines)

