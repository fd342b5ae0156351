# moekernel tuning pipeline: tune every (GPU model, kernel key) on a GPU of its own, re-time the winners on
# held-out routing, write engine config files, gather every timing into DuckDB and plot how much they gain.
#
#   snakemake --snakefile <repo>/Snakefile --directory <dir> --configfile <f>   (profiles/default applies by itself)
#
# Results go under the working directory (--directory). See docs/PIPELINE.md.

from snakemake.utils import min_version

min_version("9.0")


include: "rules/common.smk"
include: "rules/tune.smk"
include: "rules/select.smk"
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
        # The tune records too: one set aside by moekernel.pipeline.recover (a shard went missing) is rebuilt.
        PLAN.tuned_records(),
        DATABASE,
        SELECTED,
        rules.report.output,


onsuccess:
    from moekernel.pipeline.summary import summary

    if Path(DATABASE).is_file():
        print(summary(DATABASE, SELECTED, "results/configs"), file=sys.stderr)
