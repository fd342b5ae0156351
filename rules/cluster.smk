# Before a cluster run queues anything, stop it if it would go wrong without a word (moekernel.pipeline.cluster).
# onstart runs once the jobs are planned: in real runs only (not dry runs, not inside cluster jobs), and it is the
# first point at which the executor is known.

from snakemake.exceptions import WorkflowError

from moekernel.pipeline import cluster


onstart:
    if workflow.non_local_exec:
        asked = {r.name: r.resources["_cores"] for r in workflow.rules if not workflow.is_local(r)}  # threads
        problems = cluster.thread_cap(workflow.resource_settings.cores,
                                      {name: t.value for name, t in asked.items() if not t.is_evaluable()})
        if workflow.executor_plugin.name == "slurm":
            settings = workflow.executor_settings
            problems += cluster.slurm_status_query(settings.status_command, settings.init_seconds_before_status_checks)
        if problems:
            raise WorkflowError("this cluster run would go wrong; nothing was submitted:\n"
                                + "\n".join(f"  - {p}" for p in problems))
