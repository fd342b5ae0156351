"""Snakemake adapter: one key's emitted configs -> comparison rows (moekernel.pipeline.verify)."""

import os

from _common import setup

log = setup(snakemake)
p = snakemake.params
# Before anything imports triton or initialises CUDA: the interpreter switch, or this job's own GPU.
if p.backend == "interpret":
    os.environ["TRITON_INTERPRET"] = "1"

from moekernel.pipeline import jobs, verify  # after setup: moekernel from this checkout

jobs.pin_gpu(p.backend, log)
device = verify.tuned_device(list(snakemake.input.shards))
rows = verify.verify_key(snakemake.wildcards.key, list(p.batch_sizes), snakemake.input.configs, device,
                         routing=p.routing, seed=p.seed, iters=p.iters, baseline_dir=p.baseline, backend=p.backend)
rows.to_parquet(snakemake.output[0], index=False)
log.info("%d rows, %d not ok", len(rows), int((~rows["ok"]).sum()))
