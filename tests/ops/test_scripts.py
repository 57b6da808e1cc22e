"""scripts/start.sh and scripts/stop.sh run for real (the gateway starts as a process on free
loopback ports) with fake ``docker``, ``systemctl`` and ``service`` on PATH that record
their calls, and a temporary daemon.json; shellcheck on both."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.clients import need
from tests.processes import free_port

REPO = Path(__file__).resolve().parents[2]
START, STOP = REPO / "scripts" / "start.sh", REPO / "scripts" / "stop.sh"
ORIGINAL = b'{"log-driver": "local",\n  "registry-mirrors": ["https://mirror.example"],' \
           b' "dns": ["192.0.2.53"]}\n'

FAKE_DOCKER = """#!/bin/sh
echo "docker $*" >> "$FAKE_LOG"
"""
FAKE_SERVICE = """#!/bin/sh
echo "service $*" >> "$FAKE_LOG"
if [ "$1 $2" = "docker restart" ] && [ -n "$FAKE_RESTART_FAILS" ]; then exit 1; fi
"""
# systemctl as a host with cachegate.service installed: "start" runs the real gateway in
# the background (as systemd would), "is-active" and "stop" follow its pid.
FAKE_SYSTEMCTL = """#!/bin/bash
echo "systemctl $*" >> "$FAKE_LOG"
pid_file=$FAKE_DIR/unit.pid
case "$1 $2" in
  "cat cachegate.service") exit 0 ;;
  "is-active "*) [[ -f $pid_file ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null ;;
  "start cachegate.service")
    "$CACHEGATE_VENV/bin/cachegate" --config "$CACHEGATE_CONFIG" serve \\
      >> "$FAKE_DIR/unit.log" 2>&1 < /dev/null &
    echo $! > "$pid_file" ;;
  "stop cachegate.service")
    pid=$(cat "$pid_file"); kill "$pid"
    while [[ -e /proc/$pid ]] && ! grep -q ') Z' "/proc/$pid/stat"; do sleep 0.1; done
    rm -f "$pid_file" ;;
  "restart docker") [[ -z ${FAKE_RESTART_FAILS:-} ]] ;;
  *) exit 0 ;;
esac
"""


class Host:
    """A temporary host: config, daemon.json, fake commands and their call log."""

    def __init__(self, tmp: Path, docker: bool = True) -> None:
        self.tmp, self.state = tmp, tmp / "state"
        self.docker = docker
        self.bin = tmp / "bin"
        self.bin.mkdir()
        fakes = {"systemctl": FAKE_SYSTEMCTL, "service": FAKE_SERVICE}
        if docker:
            fakes["docker"] = FAKE_DOCKER
        for name, text in fakes.items():
            (self.bin / name).write_text(text)
            (self.bin / name).chmod(0o755)
        self.log = tmp / "calls.log"
        self.log.touch()
        self.daemon_json = tmp / "docker" / "daemon.json"
        self.daemon_json.parent.mkdir()
        self.admin_port = free_port()
        self.mirror = f"http://127.0.0.1:{free_port()}"  # the registry mirror
        self.config = tmp / "cachegate.toml"
        self.config.write_text("\n".join([
            "[server]", f'state_dir = "{self.state}"', 'listen = ["127.0.0.1"]',
            f"http_port = {free_port()}", "https_port = 0",
            f'admin = "127.0.0.1:{self.admin_port}"',
            "[images]", f'listen = "{self.mirror[7:]}"',
            "[dns]", f"port = {free_port()}", 'forwarders = ["127.0.0.1:9"]', ""]))

    def run(self, script: Path | str, systemd: bool = False,
            **extra: str) -> subprocess.CompletedProcess:
        """``script`` (or a shell command line) with this host's environment and
        ``extra`` variables."""
        env = {"PATH": f"{self.bin}:{self.system_path()}", "HOME": str(self.tmp), "LANG": "C.UTF-8",
               "FAKE_LOG": str(self.log), "FAKE_DIR": str(self.tmp),
               "CACHEGATE_CONFIG": str(self.config), "CACHEGATE_VENV": str(REPO / ".venv"),
               "CACHEGATE_DOCKER_DAEMON_JSON": str(self.daemon_json),
               "CACHEGATE_SYSTEMD": "yes" if systemd else "no", "CACHEGATE_TIMEOUT": "30",
               **extra}
        argv = ["bash", str(script)] if isinstance(script, Path) else ["bash", "-c", script]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)

    def system_path(self) -> str:
        """/usr/bin:/bin, or for a host without Docker the same commands minus docker's
        (this machine may have a real Docker installed)."""
        if self.docker:
            return "/usr/bin:/bin"
        sysbin = self.tmp / "sysbin"
        if not sysbin.exists():
            sysbin.mkdir()
            for directory in (Path("/bin"), Path("/usr/bin")):
                for tool in directory.iterdir():
                    link = sysbin / tool.name
                    if not tool.name.startswith("docker") and not link.exists():
                        link.symlink_to(tool)
        return str(sysbin)

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines()

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/healthz",
                                        timeout=5) as reply:
                return json.load(reply)["status"] == "ok"
        except OSError:
            return False

    def pids(self) -> list[int]:
        found = []
        for pid_file in (self.state / "cachegate.pid", self.tmp / "unit.pid"):
            if pid_file.exists():
                found.append(int(pid_file.read_text()))
        return found

    def kill_leftovers(self) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def host(tmp_path):  # type: ignore[no-untyped-def]
    made: list[Host] = []

    def make(docker: bool = True) -> Host:
        made.append(Host(tmp_path, docker))
        return made[-1]
    yield make
    for h in made:
        h.kill_leftovers()


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, f"rc {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def alive(pid: int) -> bool:
    """Running: a zombie (exited, its reaper not yet run) counts as gone."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat_line.rpartition(") ")[2][:1] != "Z"


def test_start_merges_dns_and_stop_restores_the_file_byte_for_byte(host):
    h = host()
    h.daemon_json.write_bytes(ORIGINAL)
    h.daemon_json.chmod(0o640)
    out = ok(h.run(START))
    assert "started in the background" in out and "pointed Docker's DNS at 127.0.0.1" in out
    merged = json.loads(h.daemon_json.read_text())
    assert merged == {"log-driver": "local", "dns": ["127.0.0.1"],
                      "registry-mirrors": [h.mirror, "https://mirror.example"]}
    assert stat.S_IMODE(h.daemon_json.stat().st_mode) == 0o640
    assert (h.tmp / "docker" / "daemon.json.cachegate-backup").read_bytes() == ORIGINAL
    assert h.calls() == ["service docker restart", "docker info"]
    assert h.healthy()
    [pid] = h.pids()
    assert (h.state / "cachegate.log").read_text().count("cachegate serving on") == 1

    again = ok(h.run(START))  # a no-op
    assert f"already running in the background (pid {pid})" in again
    assert "already points Docker's DNS at 127.0.0.1" in again
    assert h.calls() == ["service docker restart", "docker info"]
    assert h.pids() == [pid] and json.loads(h.daemon_json.read_text()) == merged

    out = ok(h.run(STOP))
    assert "restored" in out and f"stopped the gateway (pid {pid})" in out
    assert h.daemon_json.read_bytes() == ORIGINAL
    assert stat.S_IMODE(h.daemon_json.stat().st_mode) == 0o640
    assert not (h.tmp / "docker" / "daemon.json.cachegate-backup").exists()
    assert h.calls()[2:] == ["service docker restart", "docker info"]
    assert not alive(pid) and not h.healthy() and h.pids() == []

    out = ok(h.run(STOP))  # nothing left to undo
    assert "was not changed by start.sh" in out and "the gateway is not running" in out
    assert len(h.calls()) == 4 and h.daemon_json.read_bytes() == ORIGINAL


def test_with_systemd_the_unit_runs_the_gateway_and_systemctl_restarts_docker(host):
    h = host()  # and no daemon.json at all before
    out = ok(h.run(START, systemd=True))
    assert "started cachegate.service" in out and h.healthy()
    assert json.loads(h.daemon_json.read_text()) == {"dns": ["127.0.0.1"],
                                                     "registry-mirrors": [h.mirror]}
    unit = ["systemctl cat cachegate.service", "systemctl is-active --quiet cachegate.service"]
    restart = ["systemctl restart docker", "docker info"]
    assert h.calls() == unit + ["systemctl start cachegate.service"] + restart
    assert not (h.state / "cachegate.pid").exists()

    again = ok(h.run(START, systemd=True))
    assert "cachegate.service is already running" in again
    assert h.calls()[5:] == unit

    out = ok(h.run(STOP, systemd=True))
    assert "removed" in out and "stopped cachegate.service" in out
    assert not h.daemon_json.exists() and not h.healthy()
    assert h.calls()[7:] == restart + unit + ["systemctl stop cachegate.service"]


def test_without_docker_the_gateway_still_starts_and_daemon_json_is_left_alone(host):
    h = host(docker=False)
    out = ok(h.run(START))
    assert "Docker is not installed" in out and h.healthy()
    assert not h.daemon_json.exists() and h.calls() == []
    out = ok(h.run(STOP))
    assert "not changed by start.sh" in out and "stopped the gateway" in out
    assert not h.healthy()


def test_a_broken_daemon_json_is_an_error_and_is_not_touched(host):
    h = host()
    h.daemon_json.write_bytes(b'{"dns": [')
    done = h.run(START)
    assert done.returncode == 1
    assert "is not valid JSON" in done.stderr and "fix it first" in done.stderr
    assert h.daemon_json.read_bytes() == b'{"dns": ['
    assert not (h.tmp / "docker" / "daemon.json.cachegate-backup").exists()
    assert h.calls() == []
    ok(h.run(STOP))
    assert not h.healthy()


def test_a_gateway_that_cannot_start_fails_start_with_its_log(host):
    h = host()
    h.daemon_json.write_bytes(ORIGINAL)
    port = int(h.config.read_text().split("http_port = ")[1].split()[0])
    with socket.socket() as taken:  # someone else holds our HTTP port
        taken.bind(("127.0.0.1", port))
        taken.listen()
        done = h.run(START)
    assert done.returncode == 1
    assert "exited" in done.stderr and f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "the gateway did not come up" in done.stderr
    assert h.daemon_json.read_bytes() == ORIGINAL and h.calls() == []
    out = ok(h.run(STOP))
    assert "the gateway is not running" in out


@pytest.mark.parametrize("systemd", [False, True], ids=["service", "systemd"])
def test_stop_where_docker_cannot_be_restarted_says_where_the_host_is_and_how_to_finish(
        host, systemd):
    """Issue 13: stop.sh restored daemon.json, failed to restart Docker and exited without
    a word about the gateway it left running with Docker still pointed at it."""
    h = host()
    h.daemon_json.write_bytes(ORIGINAL)
    ok(h.run(START, systemd=systemd))
    before = len(h.calls())
    done = h.run(STOP, systemd=systemd, FAKE_RESTART_FAILS="1")
    assert done.returncode == 1
    restart = "systemctl restart docker" if systemd else "service docker restart"
    assert f"error: Docker could not be restarted: '{restart}' failed" in done.stderr
    assert f"{h.daemon_json} is restored" in done.stderr, done.stderr
    assert "still sends its containers' DNS to the gateway" in done.stderr
    gateway = "cachegate.service" if systemd else f"pid {h.pids()[0]}"
    assert f"the gateway is left running ({gateway})" in done.stderr, done.stderr
    assert h.daemon_json.read_bytes() == ORIGINAL and h.healthy()  # as the message says
    assert restart in h.calls()[before:]
    failed = len(h.calls())

    [finish] = [line.split("to finish, run: ", 1)[1] for line in done.stderr.splitlines()
                if "to finish, run: " in line]
    assert finish.startswith(f"{restart} && ") and finish.endswith("/scripts/stop.sh")
    out = ok(h.run(finish, systemd=False))  # the command alone, in a plain shell
    assert "stopped" in out and not h.healthy() and h.daemon_json.read_bytes() == ORIGINAL
    assert restart in h.calls()[failed:]


def test_start_succeeds_when_dns_allow_names_no_address_of_this_host(host):
    """Issue 13: a host whose own addresses are all outside dns.allow (a public primary
    address). start.sh's probe (from 127.0.0.1 to 127.0.0.2 here, as from 192.0.2.2 to
    the bridge there) got REFUSED and start.sh waited out its timeout."""
    h = host()
    text = h.config.read_text().replace('listen = ["127.0.0.1"]', 'listen = ["127.0.0.2"]')
    h.config.write_text(text + 'allow = ["192.0.2.128/25"]\n')
    out = ok(h.run(START))
    assert "answering" in out and "pointed Docker's DNS at" in out and h.healthy()
    ok(h.run(STOP))
    assert not h.healthy()


def test_scripts_are_shellcheck_clean():
    shellcheck = shutil.which("shellcheck")
    need(shellcheck, "shellcheck not installed (Debian package shellcheck)")
    done = subprocess.run([shellcheck, "-x", str(START), str(STOP), str(START.parent / "lib.sh")],
                          capture_output=True, text=True, cwd=START.parent.parent)
    assert done.returncode == 0, done.stdout


# -- systemd/cachegate.service ---------------------------------------------------------------

UNIT = REPO / "systemd" / "cachegate.service"
INSTALLED_BINARY = "/opt/cachegate/bin/cachegate"


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    need(path, "systemd-analyze not installed (Debian package systemd)")
    return path  # type: ignore[return-value]


def unit_here(tmp_path: Path, text: str | None = None) -> Path:
    """The unit with ExecStart aimed at this checkout's venv: verify checks the binary
    exists, and /opt/cachegate is where the install instructions put it."""
    text = text if text is not None else UNIT.read_text()
    assert INSTALLED_BINARY in text
    path = tmp_path / "cachegate.service"
    path.write_text(text.replace(INSTALLED_BINARY, str(REPO / ".venv" / "bin" / "cachegate")))
    return path


def verify_unit(path: Path) -> str:
    """systemd-analyze verify's complaints: a warning (e.g. an unknown key) still exits 0."""
    done = subprocess.run([systemd_analyze(), "verify", str(path)], capture_output=True,
                          text=True, timeout=60)
    return f"rc {done.returncode}: {done.stderr}" if done.returncode or done.stderr else ""


def unit_settings(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def test_the_unit_passes_systemd_analyze_verify_and_security(tmp_path):
    assert verify_unit(unit_here(tmp_path)) == ""
    done = subprocess.run([systemd_analyze(), "security", "--offline=yes", "--threshold=20",
                           str(unit_here(tmp_path))], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout[-3000:]  # exposure 2.0 or better ("OK")


def test_a_broken_unit_fails_the_same_check(tmp_path):
    typo = UNIT.read_text().replace("ProtectSystem=strict", "ProtectSytem=strict")
    assert "ProtectSytem" in verify_unit(unit_here(tmp_path, typo))


def test_the_unit_runs_serve_as_a_dedicated_sandboxed_notify_service():
    from gateway.ops.cli import build_parser

    settings = unit_settings(UNIT.read_text())
    wanted = {"Type": "notify", "DynamicUser": "yes", "User": "cachegate",
              "StateDirectory": "cachegate", "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
              "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE", "NoNewPrivileges": "yes",
              "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes"}
    assert {key: settings.get(key, [None])[0] for key in wanted} == wanted
    binary, *argv = settings["ExecStart"][0].split()
    assert binary == INSTALLED_BINARY
    args = build_parser().parse_args(argv)
    assert args.command == "serve" and str(args.state_dir) == "/var/lib/cachegate"


def test_serve_tells_systemd_it_is_ready_once_every_listener_is_up(tmp_path):
    h = Host(tmp_path)
    http_port = int(h.config.read_text().split("http_port = ")[1].split()[0])
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(tmp_path / "notify"))
        notify.settimeout(60)
        env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify")}
        proc = subprocess.Popen([str(REPO / ".venv" / "bin" / "cachegate"), "--config",
                                 str(h.config), "serve"], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            assert notify.recv(256) == b"READY=1"
            for port in (http_port, h.admin_port):  # already accepting, no retry
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
            assert h.healthy()
        finally:
            proc.terminate()
            proc.wait(30)
