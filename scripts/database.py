"""Snakemake adapter: shards + shapes + verify results -> results/tuning.duckdb (moekernel.database)."""

import logging

from moekernel import database

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(levelname)s %(message)s")
path = database.build(snakemake.output[0], list(snakemake.input.shards), list(snakemake.params.shapes),
                      comparisons=list(snakemake.input.comparisons), meta=dict(snakemake.params.meta))
logging.info("wrote %s", path)
