"""A one-node SLURM cluster on localhost for the tests, from Debian's packages, started by hand and stopped by PID.

Packages: slurm-wlm, slurmdbd, munge, mariadb-server (.ci/run installs them). No systemd: each daemon runs in the
foreground as a child of this process, so its PID is known and it is stopped by that PID alone.

The cluster has what a GPU cluster has, GPUs aside: accounting (slurmdbd over MariaDB) with the account ACCOUNT, which
jobs must name or default to (AccountingStorageEnforce), and a node of NODE_CPUS CPUs whatever the host has
(SlurmdParameters=config_overrides), so a job may ask for more CPUs than the submitting host has. MinJobAge keeps
finished jobs in ``squeue --states=all`` for an hour, where the tests look for them.

The configs sit at SLURM's default paths (/etc/slurm): the executor plugin's job step clears every SLURM_* variable,
SLURM_CONF too, before its nested srun, so a config elsewhere is lost inside the jobs. Hence one such cluster per
machine: a lock file serialises them, and a slurm.conf that is not ours is never replaced.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

ACCOUNT = "moekernel-ci"
CLUSTER_NAME = "moekernel-test"
NODE_CPUS = 8
NODE_MEMORY_MB = 8000
MIN_JOB_AGE_S = 3600  # finished jobs stay in squeue --states=all this long
FEATURE = "interpreter"  # the node's feature, standing in for a GPU model (config gpu_constraints selects it)
SLURM_PORTS = {"slurmctld": 6817, "slurmd": 6818, "slurmdbd": 6819}  # SLURM's defaults
CONF_DIR = Path("/etc/slurm")
MARKER = "# Written by moekernel's tests/slurm/cluster.py; removed when its cluster stops."
LOCK = Path(tempfile.gettempdir()) / "moekernel-test-slurm-cluster.lock"
COMMANDS = ("munged", "munge", "mariadb-install-db", "mariadbd", "mariadb", "slurmdbd", "slurmctld", "slurmd",
            "sbatch", "squeue", "sinfo", "scontrol", "sacct", "sacctmgr")
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")


class Unavailable(Exception):
    """This machine cannot host the test cluster; the message says why."""


def unavailable() -> str | None:
    """Why the cluster cannot start here, or None."""
    if os.geteuid() != 0:
        return "the test SLURM cluster must run as root (its daemons, and its configs under /etc/slurm)"
    missing = [c for c in COMMANDS if shutil.which(c) is None]
    if missing:
        return (f"not installed: {', '.join(missing)} (apt-get install slurm-wlm slurmdbd munge mariadb-server, "
                "as .ci/run does)")
    conf = CONF_DIR / "slurm.conf"
    if conf.exists() and MARKER not in conf.read_text():
        return f"{conf} belongs to another SLURM setup; the test cluster would replace it"
    return None


@dataclass(frozen=True)
class Job:
    id: str
    state: str
    comment: str  # the executor's, naming the rule and wildcards: rule_tune_wildcards_<gpu>_<key>
    cpus: int
    account: str
    workdir: str
    features: str  # the constraint the job asked for ("(null)": none)


@dataclass
class Cluster:
    state: Path  # daemons' state and logs
    daemons: dict[str, subprocess.Popen] = field(default_factory=dict)

    def jobs(self, workdir: Path) -> list[Job]:
        """Every job submitted from ``workdir``, finished ones too (MinJobAge)."""
        out = _run(["squeue", "--states=all", "--noheader", "--format=%i|%T|%k|%C|%a|%Z|%f"]).stdout
        rows = [Job(i, s, k, int(c), a, z, f) for i, s, k, c, a, z, f in (line.split("|") for line in out.splitlines())]
        return [j for j in rows if Path(j.workdir).resolve() == Path(workdir).resolve()]

    @contextmanager
    def accounting_stopped(self) -> Iterator[None]:
        """As on a cluster without its accounting database: slurmdbd down, sacct refused."""
        self._stop("slurmdbd")
        try:
            yield
        finally:
            self._start_slurmdbd()

    def logs(self, lines: int = 30) -> str:
        """The tail of each daemon's log, for a failing test's message."""
        parts = []
        for name in self.daemons:
            log = self.state / f"{name}.log"
            if log.exists():
                parts.append(f"--- {log} (last {lines} lines)\n" + "\n".join(log.read_text().splitlines()[-lines:]))
        return "\n".join(parts)

    # ---------------------------------------------------------------- starting and stopping

    def _spawn(self, name: str, command: list[str], **popen) -> None:
        log = open(self.state / f"{name}.log", "ab")
        self.daemons[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, **popen)
        log.close()

    def _stop(self, name: str) -> None:
        process = self.daemons.pop(name, None)
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _wait(self, name: str, ready, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            process = self.daemons.get(name)
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"{name} exited with status {process.returncode}\n{self.logs()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready after {timeout} s\n{self.logs()}")
            time.sleep(0.3)

    def _start_munged(self) -> None:
        if _ok(["munge", "--no-input"]):
            return  # the machine's own munged: use it, leave it running
        MUNGE_SOCKET.parent.mkdir(parents=True, exist_ok=True)
        shutil.chown(MUNGE_SOCKET.parent, "munge", "munge")
        self._spawn("munged", ["munged", "--foreground"], user="munge", group="munge")
        self._wait("munged", lambda: _ok(["munge", "--no-input"]))

    def _start_mariadb(self) -> int:
        data, sock = self.state / "mariadb", self.state / "mariadb.sock"
        _run(["mariadb-install-db", "--no-defaults", "--user=root", f"--datadir={data}",
              "--auth-root-authentication-method=socket", "--skip-test-db"])
        port = _free_port()
        self._spawn("mariadbd", ["mariadbd", "--no-defaults", "--user=root", f"--datadir={data}", f"--socket={sock}",
                                 f"--port={port}", "--bind-address=127.0.0.1"])
        client = ["mariadb", "--no-defaults", f"--socket={sock}", "--user=root"]
        self._wait("mariadbd", lambda: _ok([*client, "--execute=SELECT 1"]))
        _run([*client, "--execute=CREATE USER 'slurm'@'%' IDENTIFIED BY 'slurm'; "
                       "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'%';"])
        return port

    def _start_slurmdbd(self) -> None:
        self._spawn("slurmdbd", ["slurmdbd", "-D"])
        self._wait("slurmdbd", lambda: _ok(["sacctmgr", "--noheader", "list", "cluster"]))

    def _start_slurm(self) -> None:
        self._spawn("slurmctld", ["slurmctld", "-D"])
        self._wait("slurmctld", lambda: "UP" in _run(["scontrol", "ping"], check=False).stdout)
        self._spawn("slurmd", ["slurmd", "-D"])
        self._wait("slurmd", lambda: _run(["sinfo", "--noheader", "--format=%T"], check=False).stdout.strip()
                   in ("idle", "mixed", "allocated"))


@contextmanager
def running(state: Path) -> Iterator[Cluster]:
    """Start the cluster (state and logs under ``state``), yield it, stop every daemon it started by its PID."""
    reason = unavailable()
    if reason:
        raise Unavailable(reason)
    with _machine_lock():
        busy = [f"{name} ({port})" for name, port in SLURM_PORTS.items() if _listening(port)]
        if busy:
            raise Unavailable(f"SLURM's ports are taken: {', '.join(busy)}; another SLURM runs on this machine")
        cluster = Cluster(state)
        written = []
        try:
            cluster._start_munged()
            port = cluster._start_mariadb()
            written += _write_configs(state, port)
            cluster._start_slurmdbd()
            for command in (["add", "cluster", CLUSTER_NAME], ["add", "account", ACCOUNT],
                            ["add", "user", "root", f"account={ACCOUNT}"]):
                _run(["sacctmgr", "--immediate", *command])
            cluster._start_slurm()
            yield cluster
        finally:
            for name in reversed(list(cluster.daemons)):
                cluster._stop(name)
            for path in written:
                path.unlink(missing_ok=True)


def _write_configs(state: Path, mariadb_port: int) -> list[Path]:
    CONF_DIR.mkdir(parents=True, exist_ok=True)
    for folder in ("slurmctld-state", "slurmd-spool"):
        (state / folder).mkdir(exist_ok=True)
    slurm_conf, dbd_conf = CONF_DIR / "slurm.conf", CONF_DIR / "slurmdbd.conf"
    slurm_conf.write_text(f"""{MARKER}
ClusterName={CLUSTER_NAME}
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={state}/slurmctld-state
SlurmdSpoolDir={state}/slurmd-spool
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd.pid
SlurmctldLogFile={state}/slurmctld.log
SlurmdLogFile={state}/slurmd.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge={MIN_JOB_AGE_S}
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageEnforce=associations
SlurmdParameters=config_overrides
NodeName=localhost CPUs={NODE_CPUS} RealMemory={NODE_MEMORY_MB} Features={FEATURE} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
""")
    dbd_conf.write_text(f"""{MARKER}
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile={state}/slurmdbd.pid
LogFile={state}/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={mariadb_port}
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
""")
    dbd_conf.chmod(0o600)  # slurmdbd refuses a config others can read: it holds the database password
    return [slurm_conf, dbd_conf]


@contextmanager
def _machine_lock(timeout_s: float = 900) -> Iterator[None]:
    """One test cluster per machine at a time (the configs' paths are fixed)."""
    with open(LOCK, "w") as lock:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise Unavailable(f"another test SLURM cluster held {LOCK} for {timeout_s} s") from None
                time.sleep(1)
        yield


def _run(command: list[str], *, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if check and done.returncode:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: {done.stderr or done.stdout}")
    return done


def _ok(command: list[str]) -> bool:
    return _run(command, check=False).returncode == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
