"""Snakemake adapter: one (key, batch size) -> its timing shard (moekernel.pipeline.jobs.tune)."""

from _common import setup

log = setup(snakemake)

from moekernel.pipeline import jobs  # after setup: moekernel from this checkout

jobs.tune(snakemake.wildcards.key, [int(snakemake.wildcards.bs)], snakemake.output[0],
          settings=snakemake.params.settings, threads=snakemake.threads, log=log)
