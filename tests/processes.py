"""The gateway as a real process (``cachegate serve``), for what needs one: kill -9,
restart, and memory measured from outside."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from twisted.internet import defer, reactor, task

ROOT = Path(__file__).resolve().parents[1]


@defer.inlineCallbacks
def api_stats(gw: "GatewayProcess"):  # type: ignore[no-untyped-def]
    """The running gateway's ``/api/stats``."""
    from twisted.web.client import Agent, readBody
    response = yield Agent(reactor).request(
        b"GET", f"http://127.0.0.1:{gw.admin_port}/api/stats".encode())
    return json.loads((yield readBody(response)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def toml_config(state_dir: Path, http_port: int, origin_url: str, names: list[str],
                extra: str = "", workers: int = 1, admin_port: int = 0) -> str:
    lines = ["[server]", f'state_dir = "{state_dir}"', 'listen = ["127.0.0.1"]',
             f"http_port = {http_port}", "https_port = 0",
             f'admin = "127.0.0.1:{admin_port or free_port()}"', f"workers = {workers}",
             "", "[dns]", "port = 0",
             'forwarders = ["127.0.0.1:9"]', "", "[images]", 'listen = ""', "", extra, ""]
    for name in names:
        lines += [f"[upstreams.{name}]", f'origin = "{origin_url}/{name}"', ""]
    return "\n".join(lines)


def serve(config: Path, log: Path, core: str | None = None) -> subprocess.Popen:
    """``cachegate --config CONFIG serve`` in a child process logging to ``log``; pinned to
    one CPU core (taskset) when ``core`` is given, as the benchmarks run it."""
    pin = ["taskset", "-c", core] if core is not None else []
    with open(log, "wb") as out:  # the child keeps its own copy
        return subprocess.Popen([*pin, sys.executable, "-m", "gateway.ops.cli", "--config",
                                 str(config), "serve"], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT)


def stop_all(procs: list[subprocess.Popen]) -> None:
    """SIGTERM every child, then wait for each (SIGKILL after 10 s)."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class GatewayProcess:
    """``cachegate serve`` in a child process, on a free loopback port."""

    def __init__(self, tmp: Path, origin_url: str, state_dir: Path | None = None,
                 extra: str = "", workers: int = 1) -> None:
        self.port, self.admin_port = free_port(), free_port()
        self.state_dir = state_dir or tmp / "state"
        self.config = tmp / f"cachegate-{self.port}.toml"
        names = ["debian", "ubuntu", "alpine", "pypi", "npm", "maven"]
        self.config.write_text(toml_config(self.state_dir, self.port, origin_url, names, extra,
                                           workers, self.admin_port))
        self.proc = serve(self.config, tmp / f"gateway-{self.port}.log")

    @defer.inlineCallbacks
    def ready(self, timeout: float = 20.0):  # type: ignore[no-untyped-def]
        """Wait (without blocking the reactor) until the HTTP port accepts connections."""
        for _ in range(int(timeout / 0.05)):
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            yield task.deferLater(reactor, 0.05, lambda: None)
        raise TimeoutError("gateway did not start listening")

    def status(self, field: str) -> int:
        """A /proc/PID/status figure in KiB (VmRSS, VmHWM)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)
        return self.proc.returncode
