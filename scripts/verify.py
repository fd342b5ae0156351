"""Snakemake adapter: one (GPU model, key)'s winners -> comparison rows and decisions (moekernel.pipeline.verify)."""

import os

from _common import setup

log = setup(snakemake)
p = snakemake.params
# Before anything imports triton or initialises CUDA: the interpreter switch, or this job's own GPU.
if p.backend == "interpret":
    os.environ["TRITON_INTERPRET"] = "1"

from moekernel.pipeline import jobs, verify  # after setup: moekernel from this checkout

gpu, key = snakemake.wildcards.gpu, snakemake.wildcards.key
jobs.pin_gpu(p.backend, gpu, log)
jobs.check_software(p.software, log)
shards = {int(m): path for m, path in jobs.read_record(snakemake.input.tuned)["shards"].items()}
rows = verify.verify_key(gpu, key, shards, routing=p.routing, seed=p.seed, iters=p.iters, draws=p.draws,
                         max_loss=p.max_loss, baseline_dir=p.baseline, backend=p.backend)
rows.to_parquet(snakemake.output[0], index=False)
log.info("%d rows, %d not ok, %d size(s) keep the default", len(rows), int((rows["ok"] == False).sum()),  # noqa: E712
         int(((rows["source"] == "default") & rows["emitted"].fillna(False)).sum()))
