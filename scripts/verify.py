"""Snakemake adapter: one key's emitted configs -> comparison rows (moekernel.verify)."""

import logging
import os

p = snakemake.params
# Before anything imports triton or initialises CUDA: the interpreter switch, or this job's own GPU.
if p.backend == "interpret":
    os.environ["TRITON_INTERPRET"] = "1"
else:
    from moekernel import gpus

    if gpus.pin_process(gpus.default_pool()) is None:
        raise SystemExit("verify: no CUDA device visible to this job (backend: cuda needs one)")

from moekernel import verify

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(levelname)s %(message)s")
device = verify.tuned_device(list(snakemake.input.shards))
rows = verify.verify_key(snakemake.wildcards.key, list(p.batch_sizes), snakemake.input.configs, device,
                         routing=p.routing, seed=p.seed, iters=p.iters, baseline_dir=p.baseline, backend=p.backend)
rows.to_parquet(snakemake.output[0], index=False)
logging.info("%d rows, %d not ok", len(rows), int((~rows["ok"]).sum()))
