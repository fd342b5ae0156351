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
        args=PLAN.tune_args(),
        kernel_hash=PLAN.settings["kernel_hash"],
    threads: TUNE_THREADS  # parallel compiles
    resources:
        gpu=GPU_PER_JOB,
    shell:
        # Exit status 75: a CUDA error poisoned the tuner's process after it saved its checkpoint; a fresh
        # process resumes past the culprit. Anything else is final.
        """
        : > {log}
        for attempt in 1 2 3 4 5; do
            rc=0
            {TUNE_LAUNCHER} {PYTHON} -m moekernel.tune --key {wildcards.key} --batch-size {wildcards.bs} --out {output} --jobs {threads} --quiet {params.args} >> {log} 2>&1 || rc=$?
            [ $rc -eq 75 ] || exit $rc
        done
        exit 75
        """
