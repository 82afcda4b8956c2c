"""A real one-node SLURM cluster on loopback for the tests, from Debian 12's packages: munged, MariaDB and slurmdbd
(submitit follows jobs through `sacct`; without slurmdbd it says "Slurm accounting storage is disabled", and 22.05
has no file-based accounting storage), slurmctld and slurmd, all in one private folder.

    python -m tests.slurm.cluster up       # idempotent; a running cluster is reused at once; prints SLURM_CONF
    python -m tests.slurm.cluster down     # cancels every job, stops the five daemons
    python -m tests.slurm.cluster status
    python3 -m tests.slurm.cluster packages   # the Debian packages it needs (standard library only: before any venv)

Needs root (slurmd starts jobs as their user) and the Debian packages PACKAGES (INSTALL). No cgroups:
proctrack/linuxproc and task/none. Clients find the cluster through SLURM_CONF. The folder (CLIPSIM_SLURM_DIR,
default /tmp/clipsim-slurm-<uid>) keeps the database and the job-id counter between runs, so a second bring-up
skips the database set-up and job ids never repeat.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge", "slurmdbd", "mariadb-server")  # Debian 12: SLURM 22.05
INSTALL = f"apt-get install -y --no-install-recommends {' '.join(PACKAGES)}"
PARTITION = "clipsim"
PORTS = {"slurmctld": 16817, "slurmd": 16818, "slurmdbd": 16819, "mariadbd": 13306}  # not SLURM's 6817-6819
# start order; `down` stops them in reverse. munged and the SLURM daemons fork into the background themselves.
DAEMONS = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd")
EXECUTABLES = (*DAEMONS, "munge", "mariadb", "mariadb-install-db", "sbatch", "sacct", "scancel", "squeue", "sinfo",
               "scontrol", "srun")
HERE = Path(__file__).parent
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


def _render(c: Cluster, template: str) -> str:
    """A configuration template beside this file with the cluster's paths, ports and node filled in."""
    name, cpus, mem = _node()
    values = {"root": str(c.root), "node": name, "cpus": cpus, "mem": mem, "partition": PARTITION,
              **{f"{daemon}_port": port for daemon, port in PORTS.items()}}
    return string.Template((HERE / template).read_text()).substitute(values)


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
    _write(c.conf, _render(c, "slurm.conf.in"))
    _write(c.path("slurmdbd.conf"), _render(c, "slurmdbd.conf.in"), 0o600)  # read beside SLURM_CONF; must be private
    _write(c.path("my.cnf"), _render(c, "my.cnf.in"))


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


def _wait(check, timeout: float) -> bool:
    """Poll `check` until it is true (True) or `timeout` s have passed (False)."""
    deadline = time.time() + timeout
    while not check():
        if time.time() > deadline:
            return False
        time.sleep(0.1)
    return True


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
    if not _wait(checks[name], READY_S):
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:]) if log.exists() else "(no log)"
        raise RuntimeError(f"{name} not ready after {READY_S:.0f} s; last lines of {log}:\n{tail}")


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


def processes(c: Cluster) -> dict[int, str]:
    """Every process of this cluster (pid -> name), found by its SLURM_CONF in their environment: the SLURM daemons,
    job steps (slurmstepd), slurmd's forked helpers and job tasks (the test process itself has no SLURM_JOB_ID)."""
    mark, found = f"SLURM_CONF={c.conf}".encode(), {}
    for entry in Path("/proc").iterdir():
        try:
            env = (entry / "environ").read_bytes().split(b"\0") if entry.name.isdigit() else []
            comm = (entry / "comm").read_text().strip() if mark in env else ""
            zombie = comm and (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
        except OSError:  # gone meanwhile
            continue
        if comm and not zombie and (comm.startswith("slurm") or any(e.startswith(b"SLURM_JOB_ID=") for e in env)):
            found[int(entry.name)] = comm
    return found


def down(c: Cluster, grace: float = 30.0) -> list[str]:
    """Cancel every job and let its steps finish, stop the daemons (SIGTERM, SIGKILL after `grace` s), then kill
    whatever they left behind (a step still reporting a node failure to a stopped slurmctld never ends).

    Returns:
        The daemons stopped, then 'strays: N' when processes had to be killed.
    """
    if _pid(c, "slurmctld") and _pid(c, "slurmd"):
        jobs = (_ok(c, "squeue", "-h", "-o", "%A") or "").split()
        if jobs:
            c.run("scancel", *jobs, check=False)
        _wait(lambda: _ok(c, "squeue", "-h", "-o", "%A") in ("", None), grace)
        _wait(lambda: "slurmstepd" not in processes(c).values(), grace)
    stopped = []
    for name in reversed(DAEMONS):
        pid = _pid(c, name)
        if pid is None:
            continue
        os.kill(pid, signal.SIGTERM)
        if not _wait(lambda n=name, p=pid: _pid(c, n) != p, grace):
            os.kill(pid, signal.SIGKILL)
        stopped.append(name)
    left = processes(c)  # what the daemons left behind
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _wait(lambda: not processes(c), 10)
    return stopped + ([f"strays: {len(left)}"] if left else [])


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
    """`python -m tests.slurm.cluster up|down|status|packages`."""
    argv = sys.argv[1:] if argv is None else argv
    if argv not in (["up"], ["down"], ["status"], ["packages"]):
        print("usage: python -m tests.slurm.cluster up|down|status|packages", file=sys.stderr)
        return 2
    c, t0 = Cluster(default_root()), time.time()
    if argv in (["status"], ["packages"]):
        print({"daemons": {n: _pid(c, n) for n in DAEMONS}, "processes": processes(c)} if argv == ["status"]
              else " ".join(PACKAGES))
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
