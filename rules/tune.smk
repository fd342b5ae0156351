# One job per (kernel key, batch size): the tuner sweeps the search space and writes every candidate's
# timing to a Parquet shard. Its params hold all it depends on, so a settings or kernel change re-runs
# exactly these jobs (Snakemake's params rerun trigger), and nothing else does.


rule tune:
    input:
        [ROUTING_FILE] if ROUTING_FILE else [],
    output:
        PLAN.shard("{key}", "{bs}"),
    log:
        "logs/tune/{key}/bs{bs}.log",
    params:
        settings=PLAN.settings.as_dict(),
        kernel_hash=PLAN.kernel_hash,
    threads: TUNE_THREADS  # parallel compiles
    resources:
        gpu=GPU_PER_JOB,
    conda:
        "../envs/moekernel.yaml"
    script:
        "../scripts/tune.py"
