"""Snakemake adapter: results/tuning.duckdb -> plots and table under results/report (moekernel.pipeline.report)."""

from pathlib import Path

from _common import setup

log = setup(snakemake)

from moekernel.pipeline import report  # after setup: moekernel from this checkout

paths = report.make_report(snakemake.input[0], Path(snakemake.output.speedup).parent)
assert {str(p) for p in paths.values()} == set(map(str, snakemake.output)), "report file names out of step"
log.info("wrote %s", ", ".join(map(str, paths.values())))
