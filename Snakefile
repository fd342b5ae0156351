# moekernel tuning pipeline: tune every (kernel key, batch size) on its own GPU, gather all timings
# into DuckDB, write engine config files, check them and plot how much they gain.
#
#   snakemake --snakefile <repo>/Snakefile --directory <dir> --configfile <f>   (profiles/default applies by itself)
#
# Results go under the working directory (--directory). See docs/PIPELINE.md.

from snakemake.utils import min_version

min_version("9.0")


include: "rules/common.smk"
include: "rules/tune.smk"
include: "rules/select.smk"
include: "rules/verify.smk"
include: "rules/database.smk"
include: "rules/report.smk"
include: "rules/cluster.smk"


# Cheap bookkeeping stays on the submitting host under a cluster executor.
localrules:
    all,
    select,
    database,
    report,


rule all:
    default_target: True
    input:
        "results/tuning.duckdb",
        "results/configs",
        rules.report.output,
