"""The house rules a newcomer relies on: a light package for planning hosts, and a clean workflow lint."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# As on a login node without a GPU stack: importing torch or triton fails, and probes find nothing.
NO_GPU_STACK = """
import sys
sys.modules.update(torch=None, triton=None)
"""


def run_python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("TRITON_INTERPRET", None)
    return subprocess.run([sys.executable, "-c", NO_GPU_STACK + code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


def test_planning_needs_neither_torch_nor_triton():
    proc = run_python(
        "import moekernel, moekernel.shapes, moekernel.configs, moekernel.models, moekernel.dtypes\n"
        "from moekernel.pipeline import plan\n"
        "p = plan.make_plan({'models': ['mixtral-8x7b'], 'tp_sizes': [2]}, cuda_available=True)\n"
        "print(p.keys, p.kernel_hash)\n"
        "print(sorted(m for m, mod in sys.modules.items() if mod and m.split('.')[0] in ('torch', 'triton')))\n"
    )
    assert proc.returncode == 0, proc.stderr
    keys, loaded = proc.stdout.strip().splitlines()
    assert "E8-N7168-K4096-top2-bf16" in keys and loaded == "[]"


def test_the_kernel_loads_only_when_its_names_are_used():
    proc = run_python("import moekernel\nmoekernel.fused_experts\n")
    assert proc.returncode != 0 and "import of torch halted" in proc.stderr


@pytest.mark.skipif(shutil.which("snakemake") is None, reason="snakemake not installed")
def test_snakemake_lint_is_clean():
    proc = subprocess.run(["snakemake", "--lint"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Lints for" not in proc.stdout + proc.stderr
