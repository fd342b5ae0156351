# One job per (GPU model, kernel key) tunes all its batch sizes in one warm process, a Parquet shard per size, then
# re-times the winners against the default config (and the baseline folder, if any) on routing draws the tuner never
# saw, which decides per batch size what the engine file holds. Its params hold all its results depend on, so a
# settings, kernel, software, verify or batch-size change re-runs exactly these jobs (Snakemake's params rerun
# trigger), and nothing else does; a rerun keeps every shard of the same job (then only verify runs again).


rule tune:
    input:
        [ROUTING_FILE] if ROUTING_FILE else [],
    output:
        tuned=PLAN.tuned("{gpu}", "{key}"),
        verified=PLAN.verified("{gpu}", "{key}"),
    log:
        "logs/tune/{gpu}/{key}.log",
    params:
        batch_sizes=PLAN.batch_sizes,
        settings=PLAN.settings.as_dict(),
        kernel_hash=PLAN.kernel_hash,
        software=PLAN.software,
        seed_keys=CFG["search"]["seed_from_other_keys"],
        verify={"draws": CFG["verify"]["draws"], "max_loss": CFG["verify"]["max_loss"],
                "baseline": CFG["baseline_configs"]},
    threads: TUNE_THREADS  # parallel compiles
    resources:
        gpu=GPU_PER_JOB,
        constraint=lambda w: PLAN.constraint(w.gpu),
    conda:
        "../envs/moekernel.yaml"
    script:
        "../scripts/tune.py"
