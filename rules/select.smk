# The tuner's winners, straight from the shards, as engine config files (one per E, N, device, dtype, block).


rule select:
    input:
        PLAN.shards(),
    output:
        report(directory("results/configs"), patterns=["{name}.json"], category="Engine configs"),
    log:
        "logs/select.log",
    conda:
        "../envs/moekernel.yaml"
    script:
        "../scripts/select.py"
