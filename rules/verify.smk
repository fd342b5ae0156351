# Each (GPU model, key)'s winners re-timed against the default config (and the baseline folder, if any) on routing
# draws the tuner never saw, on one GPU of that model; decides, per batch size, what the engine file holds.


rule verify:
    input:
        tuned=PLAN.tuned("{gpu}", "{key}"),
        routing=[ROUTING_FILE] if ROUTING_FILE else [],
    output:
        PLAN.verified("{gpu}", "{key}"),
    log:
        "logs/verify/{gpu}/{key}.log",
    params:
        routing=PLAN.settings.routing,
        seed=PLAN.settings.seed,
        iters=PLAN.settings.iters,
        draws=CFG["verify"]["draws"],
        max_loss=CFG["verify"]["max_loss"],
        backend=PLAN.backend,
        baseline=CFG["baseline_configs"],
        kernel_hash=PLAN.kernel_hash,
        software=PLAN.software,
    resources:
        gpu=GPU_PER_JOB,
        constraint=lambda w: PLAN.constraint(w.gpu),
    conda:
        "../envs/moekernel.yaml"
    script:
        "../scripts/verify.py"
