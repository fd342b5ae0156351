"""Snakemake adapter: one (GPU model, key) -> a shard per batch size, the verify rows and the job's record
(moekernel.pipeline.jobs)."""

from _common import setup

log = setup(snakemake)

from moekernel.pipeline import jobs  # after setup: moekernel from this checkout

p = snakemake.params
jobs.tune(snakemake.wildcards.gpu, snakemake.wildcards.key, list(p.batch_sizes), snakemake.output.tuned,
          snakemake.output.verified, settings=p.settings, software=p.software, seed_keys=p.seed_keys,
          verify=p.verify, threads=snakemake.threads, log=log)
