"""The end-of-run summary: which files were written, how much faster they are, and what to do next."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb

from moekernel.configs import EXTENDED_SUFFIX
from moekernel.launch_params import EXTENDED_PARAMS

SPEEDUPS = """
    SELECT key, device, backend, count(*) AS sizes,
           exp(avg(ln(default_us / CASE WHEN emitted = 'tuned' THEN tuned_us ELSE default_us END))) AS geomean,
           min(default_us / CASE WHEN emitted = 'tuned' THEN tuned_us ELSE default_us END) AS worst,
           count(*) FILTER (WHERE emitted = 'default') AS default_sizes,
           count(*) FILTER (WHERE extended_emitted) AS split_sizes
    FROM speedup WHERE tuned_us IS NOT NULL AND default_us IS NOT NULL
    GROUP BY key, device, backend ORDER BY device, key"""


def summary(db_path, selected_path, configs_dir) -> str:
    """A few lines for the user at the end of a successful run."""
    lines = []
    configs_dir = Path(configs_dir)
    try:
        selected = json.loads(Path(selected_path).read_text())
    except (OSError, ValueError):
        selected = {}
    files = sorted(selected.get("written", []) + selected.get("unchanged", []))
    own = [name for name in files if name.endswith(EXTENDED_SUFFIX)]
    lines.append(f"moekernel: {len(files) - len(own)} engine config file(s) in {configs_dir}/"
                 + (f" and {len(own)} of moekernel's own ({', '.join(EXTENDED_PARAMS)} where they pay; only moekernel reads them)"
                    if own else "")
                 + (f" ({len(selected.get('written', []))} written this run)" if files else ""))
    for name in files:
        lines.append(f"  {name}")
    for name, backup in selected.get("backed_up", []):
        lines.append(f"  {name} had been edited by hand: your version is kept as {backup}")
    interpreted = False
    try:
        con = duckdb.connect(str(db_path), read_only=True)
        try:
            rows = con.execute(SPEEDUPS).fetchall()
        finally:
            con.close()
    except duckdb.Error:
        rows = []
    for key, device, backend, sizes, geomean, worst, default_sizes, split_sizes in rows:
        interpreted |= backend == "interpret"
        held = f"; {default_sizes} size(s) keep the default" if default_sizes else ""
        held += f"; moekernel's own file holds its own parameters at {split_sizes} size(s)" if split_sizes else ""
        lines.append(f"  {key} on {device}: {geomean:.2f}x the default config (geomean over {sizes} batch sizes, "
                     f"worst {worst:.2f}x, on held-out routing){held}")
    if interpreted:
        lines.append("  (Triton interpreter: these times are meaningless; run on a GPU for real configs)")
    lines += [
        f"Details: SQL over {db_path} (see the README: winners, speedup, versions views); plots in results/report/.",
        f"Next: VLLM_TUNED_CONFIG_FOLDER={configs_dir.resolve()} vllm serve <model> ..., or for moekernel's own "
        f"kernel MOEKERNEL_CONFIG_FOLDER={configs_dir.resolve()}.",
    ]
    return "\n".join(lines)
