# The one writer of results/tuning.duckdb: rebuilt from the shards the tune records name (the source of truth), the
# shards they superseded, the shapes table of this config and the verify results.


rule database:
    input:
        tuned=PLAN.tuned_records(),
        comparisons=PLAN.verify_results(),
    output:
        DATABASE,
    log:
        "logs/database.log",
    params:
        shapes=PLAN.shapes,
        meta=PLAN.meta(),
    conda:
        "../envs/moekernel.yaml"
    script:
        "../scripts/database.py"
