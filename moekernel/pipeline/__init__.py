"""The tuning pipeline's logic; the Snakefile, rules/ and scripts/ only wire it into Snakemake.

    plan      config.yaml → validated config, kernel keys, the tune jobs and their settings
    jobs      a tune job: its GPU, the planned software, one warm child process that tunes then verifies
    gpus      the per-machine lock pool that gives each GPU job its own GPU
    emit      verify's choices → engine config files (and moekernel's own files where its own parameters pay)
    verify    winners re-timed against the default (and baseline) on held-out routing: what each file holds
    database  results/tuning.duckdb: tables and views
    report    plots (speedup, fraction of the roofline)

None of these imports torch or triton at import time: a cluster's login node can plan a run without them.
"""
