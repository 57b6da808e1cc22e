"""A private Docker daemon for the test session: Debian's ``dockerd`` (docker.io 20.10)
with its own data-root, exec-root, socket, pidfile and bridge, no iptables, and its
containers' DNS (``daemon.json`` ``dns``) on the bridge address, where the tests run
cachegate.  Nothing here touches a system dockerd, ``/etc/docker`` or ``/var/lib/docker``.

    bridge  cgd<pid>      10.203.N.1/24   <- cachegate listens here (DNS, :80, :443)
    containers            10.203.N.2-126  resolv.conf: nameserver 10.203.N.1

The bridge is made here (``dockerd -b`` only creates ``docker0`` itself, and ``--bip``
cannot be combined with ``-b``), under a lock, on a /24 no host interface uses.  With
``--iptables=false`` nothing is NATed: a container reaches the bridge address and
nothing beyond it.  dockerd starts its own containerd (``exec-root/containerd``) when
none runs at ``/run/containerd``; either way it gets a containerd namespace of its own,
so two sessions (or a system dockerd) never see each other's containers.

The daemon's settings live in ``daemon.json`` in its work directory, always passed as
``--config-file``, so that ``restart()`` (also ``python -m tests.docker_daemon restart
WORKDIR``, what the ``systemctl``/``service`` stand-ins of the script tests run) picks
up whatever scripts/start.sh wrote there.  Stopped by its pid at session end; a crashed
session's daemon, mounts and bridge are swept by the next one (its pid is in the names).

Root only: ``unavailable()`` says why not.  The ``docker_daemon`` fixture skips with that
reason outside CI and fails under CI=true.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from gateway.ops.hostsetup import process_alive

DOCKERD = Path("/usr/sbin/dockerd")
DOCKER = Path("/usr/bin/docker")  # Debian's 20.10 CLI: BuildKit built in (no buildx plugin)
PREFIX = "cgd"  # bridges and work directories: cgd<pid>
NETWORK = ipaddress.ip_network("10.203.0.0/16")  # netns.py has 10.201/16
RUN_DIR = Path("/run")  # exec-root and socket: short paths (a unix socket path < 108 bytes)
DATA_DIR = Path("/var/tmp")  # data-root: overlay2 needs a real filesystem, not tmpfs
LOCK = Path("/run/lock/cachegate-dockerd.lock")
START_SECONDS = 60
STOP_SECONDS = 30
_NAME = re.compile(rf"^{PREFIX}(\d+)$")


def unavailable() -> str | None:
    """Why a private dockerd cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "a private Docker daemon needs root"
    for path, package in ((DOCKERD, "docker.io"), (DOCKER, "docker.io")):
        if not path.exists():
            return f"{path} not installed (Debian package {package})"
    for binary, package in (("containerd", "containerd"), ("runc", "runc"), ("ip", "iproute2")):
        if shutil.which(binary) is None:
            return f"{binary} not installed (Debian package {package})"
    return None


def _ip(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *argv], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(argv)}: {done.stderr.strip()}")
    return done


def _alive(pid: int) -> bool:
    """``process_alive``, and not a zombie."""
    if not process_alive(pid):
        return False
    stat = Path(f"/proc/{pid}/stat")
    try:  # a zombie is not alive
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@contextmanager
def _locked() -> Iterator[None]:
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _free_subnet() -> int:
    """The third octet of a 10.203.N.0/24 no host interface has an address in."""
    text = _ip("-4", "-o", "addr", "show").stdout
    used = {int(m.group(1)) for m in re.finditer(r"inet 10\.203\.(\d+)\.", text)}
    free = [n for n in range(1, 255) if n not in used]
    if not free:
        raise RuntimeError(f"no free /24 left in {NETWORK}")
    return free[0]


@dataclass(frozen=True)
class DockerDaemon:
    """One private dockerd: where its parts live and how to drive its CLI."""

    name: str  # cgd<pid>: the bridge, the containerd namespace, the directories
    address: str  # the bridge's address: the containers' gateway and DNS server
    run_dir: Path  # exec-root/, docker.sock, dockerd.pid, daemon.json, dockerd.log
    data_root: Path

    @property
    def socket(self) -> Path:
        return self.run_dir / "docker.sock"

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "dockerd.pid"

    @property
    def daemon_json(self) -> Path:
        return self.run_dir / "daemon.json"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "dockerd.log"

    @property
    def subnet(self) -> str:
        return str(ipaddress.ip_interface(f"{self.address}/24").network)

    @property
    def container_cidr(self) -> str:
        """Where containers get their addresses: the lower half of the /24, so the upper
        half is free for the tests' own host addresses (``spare_address``)."""
        return str(ipaddress.ip_interface(f"{self.address}/25").network)

    def spare_address(self, index: int = 0) -> str:
        """A bridge-subnet address no container is ever given (.254, .253, …)."""
        return str(ipaddress.ip_address(self.address) + 253 - index)

    def default_settings(self) -> dict:
        """daemon.json as the session runs it: the containers' DNS is the bridge address."""
        return {"dns": [self.address]}

    def env(self, **extra: str) -> dict[str, str]:
        """An environment whose ``docker`` is Debian's CLI talking to this daemon, with a
        client config directory of its own (no credentials or contexts of this machine)."""
        config = self.run_dir / "client"
        config.mkdir(exist_ok=True)
        path = f"{DOCKER.parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        return {"PATH": path, "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8",
                "DOCKER_HOST": self.host, "DOCKER_CONFIG": str(config), **extra}

    def docker(self, *argv: str, buildkit: bool | None = None, timeout: float = 600,
               check: bool = True) -> subprocess.CompletedProcess:
        """``docker ARGV`` against this daemon; ``buildkit`` sets DOCKER_BUILDKIT."""
        extra = {} if buildkit is None else {"DOCKER_BUILDKIT": "1" if buildkit else "0"}
        done = subprocess.run([str(DOCKER), *argv], env=self.env(**extra), capture_output=True,
                              text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise RuntimeError(f"docker {' '.join(argv[:3])}... exited {done.returncode}:\n"
                               f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done

    def argv(self) -> list[str]:
        return [str(DOCKERD), "--iptables=false", "--ip6tables=false",
                "--storage-driver=overlay2", "--data-root", str(self.data_root),
                "--exec-root", str(self.run_dir / "exec"), "-H", self.host,
                "--pidfile", str(self.pidfile), "--bridge", self.name,
                "--fixed-cidr", self.container_cidr,
                "--containerd-namespace", self.name,
                "--containerd-plugins-namespace", f"{self.name}-plugins",
                "--config-file", str(self.daemon_json)]

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def start(self) -> "DockerDaemon":
        """Start dockerd in a session of its own (it outlives a ``restart`` stand-in that
        started it) and wait until it answers."""
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_SECONDS
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"dockerd exited with {proc.returncode}:\n{self.log_tail()}")
            if self.pid() == proc.pid and self.docker("version", check=False,
                                                      timeout=10).returncode == 0:
                return self
            if time.monotonic() > deadline:
                raise TimeoutError(f"dockerd not answering after {START_SECONDS}s:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM by its pid, SIGKILL if it lingers; its containerd goes with it."""
        pid = self.pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        while _alive(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.1)
        _kill_managed_containerd(self.run_dir)

    def restart(self) -> "DockerDaemon":
        """Stop and start again, reading ``daemon.json`` afresh."""
        self.stop()
        return self.start()

    def write_settings(self, settings: dict) -> None:
        self.daemon_json.write_text(json.dumps(settings, indent=2) + "\n")

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "address": self.address,
                           "run_dir": str(self.run_dir), "data_root": str(self.data_root)})

    @classmethod
    def from_run_dir(cls, run_dir: Path) -> "DockerDaemon":
        raw = json.loads((Path(run_dir) / "daemon.state.json").read_text())
        return cls(raw["name"], raw["address"], Path(raw["run_dir"]), Path(raw["data_root"]))


def create() -> DockerDaemon:
    """A daemon's bridge and directories (not yet started), after a sweep."""
    sweep()
    name = f"{PREFIX}{os.getpid()}"
    with _locked():
        address = f"10.203.{_free_subnet()}.1"
        _ip("link", "add", name, "type", "bridge")
        _ip("addr", "add", f"{address}/24", "dev", name)
        _ip("link", "set", name, "up")
    daemon = DockerDaemon(name, address, RUN_DIR / name, DATA_DIR / name)
    daemon.run_dir.mkdir(mode=0o700, exist_ok=True)
    daemon.data_root.mkdir(mode=0o700, exist_ok=True)
    (daemon.run_dir / "daemon.state.json").write_text(daemon.to_json())
    daemon.write_settings(daemon.default_settings())
    return daemon


def destroy(daemon: DockerDaemon) -> None:
    """Stop it and remove its bridge, mounts and directories.  Never raises."""
    try:
        daemon.stop()
    except Exception:  # noqa: BLE001 - cleanup must not hide the failure that led here
        pass
    _remove(daemon.name, daemon.run_dir, daemon.data_root)


def _kill_managed_containerd(run_dir: Path) -> None:
    """The containerd dockerd started for itself, if it outlived dockerd (SIGKILL)."""
    pidfile = run_dir / "exec" / "containerd" / "containerd.pid"
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    if _alive(pid) and "containerd" in Path(f"/proc/{pid}/comm").read_text():
        os.kill(pid, signal.SIGKILL)


def _shims() -> dict[int, str]:
    """pid → containerd namespace of every containerd-shim running."""
    found = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and b"containerd-shim" in argv[0] and b"-namespace" in argv:
            index = argv.index(b"-namespace") + 1
            if index < len(argv):
                found[int(proc.name)] = argv[index].decode(errors="replace")
    return found


def _kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every descendant (a shim and its container's processes)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    pending = [pid]
    while pending:
        current = pending.pop()
        pending += children.get(current, [])
        try:
            os.kill(current, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _kill_shims(name: str) -> None:
    """The shims of namespace ``name`` and their containers: they outlive a dockerd that
    was killed (a shim is detached by design)."""
    for pid, namespace in _shims().items():
        if namespace == name:
            _kill_tree(pid)


def _unmount_below(*roots: Path) -> None:
    """Every mount under ``roots`` (overlay layers, shm, netns files) and on them (dockerd
    bind-mounts its data-root onto itself), deepest first."""
    prefixes = tuple(f"{r}/" for r in roots)
    exact = {str(r) for r in roots}
    mounts = [line.split()[1].replace("\\040", " ")
              for line in Path("/proc/self/mounts").read_text().splitlines()]
    inside = [m for m in mounts if m.startswith(prefixes) or m in exact]
    for point in sorted(inside, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def _remove(name: str, run_dir: Path, data_root: Path) -> None:
    _kill_shims(name)
    _unmount_below(run_dir, data_root)
    _ip("link", "del", name, check=False)
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(data_root, ignore_errors=True)


def sweep() -> list[str]:
    """Remove what a crashed session left: daemons, bridges and directories whose pid in
    ``cgd<pid>`` no longer runs.  Returns their names."""
    names = set(re.findall(rf"^\d+: ({PREFIX}\d+)[@:]",
                           _ip("-o", "link", "show", check=False).stdout, re.M))
    for parent in (RUN_DIR, DATA_DIR):
        names |= {p.name for p in parent.glob(f"{PREFIX}*")}
    names |= set(_shims().values())
    stale = sorted(n for n in names if (m := _NAME.match(n)) and not _alive(int(m.group(1))))
    for name in stale:
        pidfile = RUN_DIR / name / "dockerd.pid"
        try:
            pid = int(pidfile.read_text().strip())
            if _alive(pid) and Path(f"/proc/{pid}/comm").read_text().strip() == "dockerd":
                os.kill(pid, signal.SIGKILL)
                for _ in range(100):  # its mounts go once it is gone
                    if not _alive(pid):
                        break
                    time.sleep(0.05)
        except (OSError, ValueError):
            pass
        _kill_managed_containerd(RUN_DIR / name)
        _remove(name, RUN_DIR / name, DATA_DIR / name)
    return stale


# --- the session fixture ----------------------------------------------------------------

@pytest.fixture(scope="session")
def docker_daemon() -> Iterator[DockerDaemon]:
    """The session's private dockerd, started on first use, stopped at the end."""
    from tests.clients import need
    why = unavailable()
    need(why is None, f"Docker tests: {why}")
    daemon = create()
    try:
        try:
            daemon.start()
        except (RuntimeError, TimeoutError) as e:  # e.g. a kernel without overlayfs
            need(False, f"Docker tests: dockerd did not start: {e}")
        yield daemon
    finally:
        destroy(daemon)


def main(argv: list[str]) -> int:
    """``python -m tests.docker_daemon restart RUN_DIR``: what the service-manager
    stand-ins run for ``systemctl restart docker`` / ``service docker restart``."""
    if len(argv) != 2 or argv[0] not in ("restart", "stop", "start"):
        print("usage: python -m tests.docker_daemon restart|stop|start RUN_DIR", file=sys.stderr)
        return 2
    daemon = DockerDaemon.from_run_dir(Path(argv[1]))
    try:
        {"restart": daemon.restart, "stop": daemon.stop, "start": daemon.start}[argv[0]]()
    except (RuntimeError, TimeoutError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
