# The configs verify chose (the tuned winner, or the default where it lost on held-out routing) as engine config
# files: one per (E, N, GPU model, dtype, block shape). The output is the account of what was published; the
# files themselves are never deleted by Snakemake, and a hand-edited one is backed up before it is replaced.


rule select:
    input:
        tuned=PLAN.tuned_records(),
        verified=PLAN.verify_results(),
    output:
        SELECTED,
    log:
        "logs/select.log",
    params:
        folder="results/configs",
    conda:
        "../envs/moekernel.yaml"
    script:
        "../scripts/select.py"
