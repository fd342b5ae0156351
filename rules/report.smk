# Plots and the comparison table, also shown by `snakemake --report report.html`.

REPORT_FILES = [f"results/report/{name}" for name in ("speedup.png", "roofline.png", "comparisons.csv")]


rule report:
    input:
        "results/tuning.duckdb",
    output:
        speedup=report("results/report/speedup.png", category="Comparison", labels={"figure": "speedup"}),
        roofline=report("results/report/roofline.png", category="Comparison", labels={"figure": "roofline"}),
        table=report("results/report/comparisons.csv", category="Comparison", labels={"figure": "table"}),
    log:
        "logs/report.log",
    script:
        "../scripts/report.py"
