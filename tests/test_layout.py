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


def test_install_sh_says_what_it_installs_one_line_a_step(tmp_path):
    # Stand-ins for python3 and nvidia-smi: no torch yet, no GPU; every pip call is logged instead of run.
    log = tmp_path / "calls"
    (tmp_path / "python3").write_text(
        "#!/usr/bin/env bash\n"
        f"echo \"$*\" >> {log}\n"
        '[ "$*" = "-c import torch" ] && exit 1\n'
        'case "$*" in "-c import moekernel"*) echo "moekernel 0.1.0: torch 2.13.0, triton 3.9.0";; esac\n'
        "exit 0\n")
    (tmp_path / "nvidia-smi").write_text("#!/usr/bin/env bash\nexit 1\n")
    for stub in ("python3", "nvidia-smi"):
        (tmp_path / stub).chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(["bash", str(REPO / "install.sh"), "test"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    steps = [line.split("] ", 1)[1] for line in proc.stdout.splitlines() if line.startswith("install.sh [")]
    assert [s.split(" (")[0].split(":")[0] for s in steps] == [
        "installing torch 2.13.0", "installing moekernel", "checking the install", "done"]
    assert "pytest and pytest-xdist" in steps[1]
    pip_calls = [line for line in log.read_text().splitlines() if line.startswith("-m pip install")]
    # Not a terminal: pip stays quiet, so a CI log holds the step lines and little else.
    assert pip_calls == ["-m pip install --disable-pip-version-check -q torch==2.13.0",
                         "-m pip install --disable-pip-version-check -q -e .[pipeline,test]"]
