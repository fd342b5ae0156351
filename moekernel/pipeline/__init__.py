"""The tuning pipeline's logic; the Snakefile, rules/ and scripts/ only wire it into Snakemake.

    plan      config.yaml → validated config, kernel keys, the tune jobs and their settings
    jobs      what the GPU jobs do around the tuner and verify (a GPU each, a fresh process to resume)
    gpus      the per-machine lock pool that gives each GPU job its own GPU
    emit      winners → engine config files
    verify    the emitted files checked against the reference and timed against the default
    database  results/tuning.duckdb: tables and views
    report    plots (speedup, fraction of the roofline)

None of these imports torch or triton at import time: a cluster's login node can plan a run without them.
"""
