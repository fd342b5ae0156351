# Each key's emitted file, loaded as an engine would, checked against the reference and timed against the
# default config (and the baseline folder, if any), on one GPU.


rule verify:
    input:
        # ancient: select rewrites the whole folder when any key changes; this key's file changes only with its
        # own shards, which are inputs below.
        configs=ancient("results/configs"),
        # The key's shards say which device (so which file name) it was tuned for.
        shards=lambda w: [PLAN.shard(w.key, m) for m in PLAN.batch_sizes],
        routing=[ROUTING_FILE] if ROUTING_FILE else [],
    output:
        "results/verify/{key}.parquet",
    log:
        "logs/verify/{key}.log",
    params:
        batch_sizes=PLAN.batch_sizes,
        routing=PLAN.settings.routing,
        seed=PLAN.settings.seed,
        iters=PLAN.settings.iters,
        backend=PLAN.backend,
        baseline=CFG["baseline_configs"],
        kernel_hash=PLAN.kernel_hash,
    resources:
        gpu=GPU_PER_JOB,
    conda:
        "../envs/moekernel.yaml"
    script:
        "../scripts/verify.py"
