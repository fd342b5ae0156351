"""Snakemake adapter: results/tuning.duckdb -> plots and table under results/report (moekernel.report)."""

import logging
from pathlib import Path

from moekernel import report

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(levelname)s %(message)s")
paths = report.make_report(snakemake.input[0], Path(snakemake.output.speedup).parent)
assert {str(p) for p in paths.values()} == set(map(str, snakemake.output)), "report file names out of step"
logging.info("wrote %s", ", ".join(map(str, paths.values())))
