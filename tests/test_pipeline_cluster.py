"""moekernel.pipeline.cluster: what stops a cluster run before it submits (the SLURM side runs in test_slurm.py)."""

from moekernel.pipeline import cluster


def test_cores_that_would_cut_a_cluster_jobs_threads_stop_the_run():
    assert cluster.thread_cap(None, {"tune": 16}) == []  # a cluster run without --cores: nothing is cut
    assert cluster.thread_cap(16, {"tune": 16, "select": 1}) == []
    (problem,) = cluster.thread_cap(2, {"tune": 16, "select": 1})
    assert "--cores is 2" in problem and "tune asks for 16" in problem and "select" not in problem
    assert "--workflow-profile none" in problem  # what to do


def test_without_sacct_the_executor_asks_squeue_itself(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # a login node without SLURM's accounting tools
    assert cluster.slurm_status_query("sacct", 40) == []
