"""Snakemake adapter: shards + shapes + verify results -> results/tuning.duckdb (moekernel.pipeline.database)."""

from _common import setup

log = setup(snakemake)

from moekernel.pipeline import database, jobs  # after setup: moekernel from this checkout

records = [jobs.read_record(r) for r in snakemake.input.tuned]
shards = [s for r in records for s in r["shards"].values()]
superseded = [s for r in records for s in r["superseded"]]
path = database.build(snakemake.output[0], shards, list(snakemake.params.shapes),
                      comparisons=list(snakemake.input.comparisons), meta=dict(snakemake.params.meta),
                      superseded=superseded)
log.info("wrote %s from %d shards (%d superseded)", path, len(shards), len(superseded))
