"""Snakemake adapter: shards + shapes + verify results -> results/tuning.duckdb (moekernel.pipeline.database)."""

from _common import setup

log = setup(snakemake)

from moekernel.pipeline import database  # after setup: moekernel from this checkout

path = database.build(snakemake.output[0], list(snakemake.input.shards), list(snakemake.params.shapes),
                      comparisons=list(snakemake.input.comparisons), meta=dict(snakemake.params.meta))
log.info("wrote %s", path)
