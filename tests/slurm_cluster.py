"""A real one-node SLURM cluster on loopback for the tests, from Debian 12's packages: munged, MariaDB and slurmdbd
(so `sacct` answers: 22.05 has no file-based accounting), slurmctld and slurmd, all in one private folder.

    python -m tests.slurm_cluster up       # idempotent; a running cluster is reused at once; prints SLURM_CONF
    python -m tests.slurm_cluster down     # cancels every job, stops the five daemons
    python -m tests.slurm_cluster status

Needs root (slurmd starts jobs as their user) and `apt-get install slurmctld slurmd slurm-client munge slurmdbd
mariadb-server` (INSTALL). No cgroups: proctrack/linuxproc and task/none. Clients find the cluster through
SLURM_CONF. The folder (CLIPSIM_SLURM_DIR, default /tmp/clipsim-slurm-<uid>) keeps the database and the job-id
counter between runs, so a second bring-up skips the database set-up and job ids never repeat.
"""
from __future__ import annotations

import dataclasses
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

INSTALL = "apt-get install -y slurmctld slurmd slurm-client munge slurmdbd mariadb-server"
PARTITION = "clipsim"
PORTS = {"slurmctld": 16817, "slurmd": 16818, "slurmdbd": 16819, "mariadbd": 13306}  # not SLURM's 6817-6819
# start order; `down` stops them in reverse. munged and the SLURM daemons fork into the background themselves.
DAEMONS = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd")
EXECUTABLES = (*DAEMONS, "munge", "mariadb", "mariadb-install-db", "sbatch", "sacct", "scancel", "squeue", "sinfo",
               "scontrol", "srun")
READY_S = 60.0  # a daemon that is not ready after this long has failed (its log says why)


@dataclasses.dataclass(frozen=True)
class Cluster:
    """The cluster's folder; its configuration file is `conf` (pass it to clients as SLURM_CONF)."""

    root: Path

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """The environment a client needs: os.environ plus SLURM_CONF."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def run(self, *argv: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster; returns its completed process (text output)."""
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, check=check, timeout=timeout)


def default_root() -> Path:
    return Path(os.environ.get("CLIPSIM_SLURM_DIR") or f"/tmp/clipsim-slurm-{os.getuid()}")


def unavailable() -> str | None:
    """Why a cluster cannot be started here (missing packages, not root); None when it can."""
    missing = [name for name in EXECUTABLES if shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin")
               is None]
    if missing:
        return f"SLURM packages are not installed (missing {', '.join(missing)}); as root on Debian 12: {INSTALL}"
    if os.geteuid() != 0:
        return "a one-node SLURM cluster needs root (slurmd starts jobs as their user); run the tests as root"
    return None


# ----- configuration -------------------------------------------------------------------------------------
def _node() -> tuple[str, int, int]:
    """(node name, CPUs, memory MB to offer): this host as slurmd sees it, keeping a quarter of the RAM back."""
    line = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout.split("\n")[0]
    fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
    return socket.gethostname().split(".")[0], int(fields["CPUs"]), int(fields["RealMemory"]) * 3 // 4


def _slurm_conf(c: Cluster) -> str:
    name, cpus, mem = _node()
    return f"""# written by tests/slurm_cluster.py
ClusterName=clipsim
SlurmctldHost={name}(127.0.0.1)
SlurmctldPort={PORTS['slurmctld']}
SlurmdPort={PORTS['slurmd']}
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket={c.path('run', 'munge.sock')}
CredType=cred/munge
StateSaveLocation={c.path('state')}
SlurmdSpoolDir={c.path('spool')}
SlurmctldPidFile={c.path('run', 'slurmctld.pid')}
SlurmdPidFile={c.path('run', 'slurmd.pid')}
SlurmctldLogFile={c.path('log', 'slurmctld.log')}
SlurmdLogFile={c.path('log', 'slurmd.log')}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={PORTS['slurmdbd']}
# the munge socket for talking to slurmdbd (AuthInfo covers only slurmctld <-> slurmd <-> clients)
AccountingStoragePass={c.path('run', 'munge.sock')}
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
# start array tasks and freed-up jobs within a second (defaults: 30 s backfill, 60 s main loop)
SchedulerParameters=bf_interval=1,sched_interval=1
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
KillWait=5
MinJobAge=60
NodeName={name} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem} State=UNKNOWN
PartitionName={PARTITION} Nodes={name} Default=YES MaxTime=INFINITE State=UP
"""


def _dbd_conf(c: Cluster) -> str:
    return f"""# written by tests/slurm_cluster.py
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={PORTS['slurmdbd']}
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket={c.path('run', 'munge.sock')}
PidFile={c.path('run', 'slurmdbd.pid')}
LogFile={c.path('log', 'slurmdbd.log')}
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={PORTS['mariadbd']}
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
"""


def _my_cnf(c: Cluster) -> str:
    return f"""[mariadbd]
user=root
datadir={c.path('mysql')}
socket={c.path('run', 'mysqld.sock')}
pid-file={c.path('run', 'mariadbd.pid')}
log-error={c.path('log', 'mariadbd.log')}
port={PORTS['mariadbd']}
bind-address=127.0.0.1
skip-name-resolve
performance_schema=OFF
# a test database of a few hundred rows: small buffers (slurmdbd logs that they are below its recommendations)
innodb_buffer_pool_size=16M
innodb_log_file_size=8M
"""


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    path.chmod(mode)


def _prepare(c: Cluster) -> None:
    """Folders, the munge key and the configuration files (rewritten only when they change)."""
    for sub, mode in (("run", 0o755), ("log", 0o755), ("state", 0o700), ("spool", 0o755), ("munge", 0o700)):
        c.path(sub).mkdir(parents=True, exist_ok=True)
        c.path(sub).chmod(mode)  # munged refuses a socket folder others cannot enter, a key others can read
    key = c.path("munge", "munge.key")
    if not key.exists():
        key.write_bytes(os.urandom(128))
    key.chmod(0o400)
    _write(c.conf, _slurm_conf(c))
    _write(c.path("slurmdbd.conf"), _dbd_conf(c), 0o600)  # slurmdbd reads it beside SLURM_CONF; it must be private
    _write(c.path("my.cnf"), _my_cnf(c))


# ----- daemons -------------------------------------------------------------------------------------------
def _pid(c: Cluster, name: str) -> int | None:
    """The pid of daemon `name` from its pid file, when that process runs and is that daemon (not a reused pid)."""
    try:
        pid = int(c.path("run", f"{name}.pid").read_text().split()[0])
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ValueError, IndexError):
        return None
    comm, state = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2]
    return pid if comm == name[:15] and state not in "ZX" else None


def _until(check, what: str, log: Path | None, timeout: float = READY_S):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:]) if log and log.exists() else "(no log)"
    raise RuntimeError(f"{what} not ready after {timeout:.0f} s; last lines of {log}:\n{tail}")


def _ok(c: Cluster, *argv: str) -> str | None:
    """stdout of a command that succeeded, else None."""
    try:
        done = c.run(*argv, check=False, timeout=10)
    except subprocess.TimeoutExpired:
        return None
    return done.stdout if done.returncode == 0 else None


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _start(c: Cluster, name: str) -> None:
    """Start daemon `name` in the background (orphaned: this process never has to reap it)."""
    argv = {
        "munged": ["munged", f"--key-file={c.path('munge', 'munge.key')}", f"--socket={c.path('run', 'munge.sock')}",
                   f"--pid-file={c.path('run', 'munged.pid')}", f"--log-file={c.path('log', 'munged.log')}",
                   f"--seed-file={c.path('munge', 'munged.seed')}"],
        "mariadbd": ["sh", "-c", 'exec mariadbd --defaults-file="$0" </dev/null >/dev/null 2>&1 &', str(c.path("my.cnf"))],
    }.get(name, [name])
    subprocess.run(argv, env=c.env, check=True, timeout=30, stdin=subprocess.DEVNULL, capture_output=True)


def _ready(c: Cluster, name: str) -> None:
    """Wait until daemon `name` answers."""
    log = c.path("log", f"{name}.log")
    sql = ("CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm'; "
           "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'")
    checks = {
        "munged": lambda: c.path("run", "munge.sock").exists(),
        "mariadbd": lambda: _ok(c, "mariadb", "-S", str(c.path("run", "mysqld.sock")), "-u", "root", "-e", sql)
        is not None,
        "slurmdbd": lambda: _port_open(PORTS["slurmdbd"]),
        "slurmctld": lambda: "is UP" in (_ok(c, "scontrol", "ping") or ""),
        "slurmd": lambda: (_ok(c, "sinfo", "-h", "-o", "%T") or "").strip().rstrip("*") in ("idle", "mixed",
                                                                                          "allocated"),
    }
    _until(checks[name], name, log)


def up(c: Cluster) -> list[str]:
    """Start whatever of the cluster is not running and wait until all of it answers.

    Returns:
        The daemons started by this call (empty when the cluster was already up).

    Raises:
        RuntimeError: packages missing, not root, or a daemon not ready in time (with its log tail).
    """
    why = unavailable()
    if why:
        raise RuntimeError(why)
    c.root.mkdir(parents=True, exist_ok=True)
    started = []
    with open(c.path("setup.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one bring-up at a time
        _prepare(c)
        if not c.path("mysql", "mysql").is_dir():  # first bring-up: a private MariaDB data folder (~4 s)
            subprocess.run(["mariadb-install-db", f"--defaults-file={c.path('my.cnf')}", "--skip-test-db",
                            "--auth-root-authentication-method=normal"], check=True, capture_output=True, timeout=120)
        for name in DAEMONS:
            if _pid(c, name) is None:
                _start(c, name)
                started.append(name)
            _ready(c, name)
    return started


def down(c: Cluster, grace: float = 30.0) -> list[str]:
    """Cancel every job, then stop the daemons (SIGTERM, SIGKILL after `grace` s).

    Returns:
        The daemons stopped.
    """
    if _pid(c, "slurmctld") and _pid(c, "slurmd"):
        jobs = (_ok(c, "squeue", "-h", "-o", "%A") or "").split()
        if jobs:
            c.run("scancel", *jobs, check=False)
            _until(lambda: _ok(c, "squeue", "-h", "-o", "%A") == "", "every job to end", None, grace)
    stopped = []
    for name in reversed(DAEMONS):
        pid = _pid(c, name)
        if pid is None:
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.time() + grace
        while time.time() < deadline and _pid(c, name) == pid:
            time.sleep(0.05)
        if _pid(c, name) == pid:
            os.kill(pid, signal.SIGKILL)
        stopped.append(name)
    return stopped


def running(c: Cluster) -> dict[str, int | None]:
    """Each daemon's pid (None when it is not running)."""
    return {name: _pid(c, name) for name in DAEMONS}


class Session:
    """Hold the cluster up for a block (a test session); the last session to leave stops it.

    Every session holds a shared lock on `users.lock`; on leaving, a session that can take it exclusively is the
    last user and stops the daemons (whoever started them), so none outlives the tests.
    """

    def __init__(self, root: Path | None = None):
        self.cluster = Cluster(root or default_root())
        self._users = None

    def __enter__(self) -> Cluster:
        self.cluster.root.mkdir(parents=True, exist_ok=True)
        self._users = open(self.cluster.path("users.lock"), "a")
        fcntl.flock(self._users, fcntl.LOCK_SH)
        try:
            up(self.cluster)
        except BaseException:
            self.__exit__()
            raise
        return self.cluster

    def __exit__(self, *exc) -> None:
        try:
            fcntl.flock(self._users, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # another session still uses the cluster; it stops it when it leaves
        else:
            down(self.cluster)
        finally:
            self._users.close()


def main(argv: list[str] | None = None) -> int:
    """`python -m tests.slurm_cluster up|down|status`."""
    argv = sys.argv[1:] if argv is None else argv
    if argv not in (["up"], ["down"], ["status"]):
        print("usage: python -m tests.slurm_cluster up|down|status", file=sys.stderr)
        return 2
    c, t0 = Cluster(default_root()), time.time()
    if argv == ["status"]:
        print(running(c))
        return 0
    try:
        done = up(c) if argv == ["up"] else down(c)
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{argv[0]}: {', '.join(done) or 'nothing to do'} in {time.time() - t0:.1f} s; SLURM_CONF={c.conf}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
