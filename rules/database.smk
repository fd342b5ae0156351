# The one writer of results/tuning.duckdb: rebuilt from the shards (the source of truth), the shapes
# table of this config and the verify results.


rule database:
    input:
        shards=PLAN.shards(),
        comparisons=expand("results/verify/{key}.parquet", key=PLAN.keys),
    output:
        "results/tuning.duckdb",
    log:
        "logs/database.log",
    params:
        shapes=PLAN.shapes,
        meta=PLAN.meta(),
    conda:
        "../envs/moekernel.yaml"
    script:
        "../scripts/database.py"
