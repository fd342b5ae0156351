# Plots and the comparison table, also shown by `snakemake --report report.html`.

rule report:
    input:
        DATABASE,
    output:
        speedup=report("results/report/speedup.png", category="Comparison", labels={"figure": "speedup"}),
        roofline=report("results/report/roofline.png", category="Comparison", labels={"figure": "roofline"}),
        table=report("results/report/comparisons.csv", category="Comparison", labels={"figure": "table"}),
    log:
        "logs/report.log",
    conda:
        "../envs/moekernel.yaml"
    script:
        "../scripts/report.py"
