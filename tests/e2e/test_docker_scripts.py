"""``scripts/start.sh`` and ``scripts/stop.sh`` against the session's real dockerd
(tests/docker_daemon.py).  Only the service manager is a stand-in: ``systemctl`` and
``service`` on PATH whose ``restart docker`` restarts the test's dockerd, which reads the
``daemon.json`` start.sh wrote.  After start.sh a build's RUN steps resolve through
cachegate; ``cachegate doctor`` finds Docker's DNS and the trusted image right; after
stop.sh the daemon.json is back byte for byte, the image is the original again and the
builds no longer resolve through cachegate.

Root only: skipped elsewhere, a failure under CI=true."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor, threads

from tests import docker_builds as db
from tests import rootfs
from tests.origin import Origin

REPO = Path(__file__).resolve().parents[2]
START, STOP = REPO / "scripts/start.sh", REPO / "scripts/stop.sh"
IMAGE = "cachegate-test/scripts:bookworm"  # a stock image, shadowed and restored
# The service-manager stand-ins: `restart docker` restarts the test's dockerd; anything
# else (`systemctl cat cachegate.service`: is the unit installed?) says no.
STAND_IN = """#!/bin/sh
echo "$(basename "$0") $*" >> {log}
case "$*" in
  "restart docker"|"restart docker.service"|"docker restart")
    exec {python} -m tests.docker_daemon restart {run_dir} ;;
esac
exit 1
"""
RESOLVE = """\
FROM {image}
ARG BUILD=0
RUN cat /etc/resolv.conf{lookup}
"""
LOOKUP = " && getent hosts deb.debian.org cachegate.internal"


class ScriptHost:
    """The environment start.sh and stop.sh run in: the stand-ins and Debian's docker
    CLI on PATH, the daemon's socket, its daemon.json, a config for cachegate on the
    bridge address."""

    def __init__(self, daemon, origin: Origin, tmp: Path) -> None:  # type: ignore[no-untyped-def]
        self.daemon, self.tmp = daemon, tmp
        self.bin = tmp / "bin"
        self.bin.mkdir()
        self.calls = tmp / "service-calls.log"
        self.calls.touch()
        for name in ("systemctl", "service"):
            (self.bin / name).write_text(STAND_IN.format(log=self.calls, python=sys.executable,
                                                         run_dir=daemon.run_dir))
            (self.bin / name).chmod(0o755)
        self.config = tmp / "cachegate.toml"
        self.state = tmp / "state"
        self.mirror = f"http://127.0.0.1:{db.free_port()}"  # the registry mirror
        toml = db.gateway_toml(self.state, daemon.address, origin.url, "127.0.0.1:9",
                               db.free_port())
        self.config.write_text(toml.replace('[images]\nlisten = ""',
                                            f'[images]\nlisten = "{self.mirror[7:]}"'))

    def env(self, systemd: bool) -> dict[str, str]:
        env = self.daemon.env(CACHEGATE_CONFIG=str(self.config),
                              CACHEGATE_VENV=str(REPO / ".venv"),
                              CACHEGATE_DOCKER_DAEMON_JSON=str(self.daemon.daemon_json),
                              CACHEGATE_SYSTEMD="yes" if systemd else "no",
                              CACHEGATE_TIMEOUT="60", PYTHONPATH=str(REPO))
        env["PATH"] = f"{self.bin}:{env['PATH']}"
        return env

    def run(self, argv: list[str], systemd: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run(argv, env=self.env(systemd), capture_output=True, text=True,
                              timeout=300, cwd=REPO)

    def script(self, script: Path, *args: str, systemd: bool = False):  # type: ignore[no-untyped-def]
        return threads.deferToThread(self.run, ["bash", str(script), *args], systemd)

    def cachegate(self, *argv: str):  # type: ignore[no-untyped-def]
        return threads.deferToThread(self.run, [sys.executable, "-m", "gateway.ops.cli",
                                                "--config", str(self.config), *argv])

    def gateway_pid(self) -> int | None:
        try:
            return int((self.state / "cachegate.pid").read_text())
        except (OSError, ValueError):
            return None


@pytest.fixture
def origin(tmp_path):  # type: ignore[no-untyped-def]
    """An empty origin: doctor's upstream checks reach it; no build here fetches."""
    (tmp_path / "origin").mkdir()
    server = Origin(tmp_path / "origin", reactor)
    server.listen()
    yield server
    pytest_twisted.blockon(server.stop_serving())


@pytest.fixture
def host(docker_daemon, origin, tmp_path):  # type: ignore[no-untyped-def]
    """A host whose Docker has a daemon.json of its own and no DNS setting; afterwards
    the daemon runs with the session's settings again and no gateway is left."""
    docker_daemon.docker("tag", rootfs.base_image(docker_daemon), IMAGE)
    docker_daemon.write_settings({"log-level": "warn"})
    docker_daemon.restart()
    made = ScriptHost(docker_daemon, origin, tmp_path)
    yield made
    pid = made.gateway_pid()
    if pid is not None:
        subprocess.run(["kill", str(pid)], capture_output=True)
    docker_daemon.write_settings(docker_daemon.default_settings())
    docker_daemon.restart()


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, f"rc {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def resolves(daemon, tmp: Path, build_arg: str, lookup: bool):  # type: ignore[no-untyped-def]
    """A BuildKit build's RUN output: its resolv.conf and (``lookup``) what two names
    resolve to.  (No lookup without cachegate: the host's resolvers are beyond a bridge
    with no NAT, so it would only time out.)"""
    context = tmp / f"resolve-{build_arg}"
    context.mkdir()
    (context / "Dockerfile").write_text(RESOLVE.format(image=IMAGE,
                                                       lookup=LOOKUP if lookup else ""))
    return threads.deferToThread(db.build, daemon, context, "buildkit", build_arg)


@pytest_twisted.ensureDeferred
async def test_start_points_the_real_daemon_at_cachegate_and_stop_undoes_it(
        docker_daemon, host, tmp_path):
    address = docker_daemon.address
    original = docker_daemon.daemon_json.read_bytes()
    original_id = docker_daemon.docker("image", "inspect", "--format", "{{.Id}}",
                                       IMAGE).stdout.strip()

    out = ok(await host.script(START, "--trust-images", IMAGE, systemd=True))
    assert "systemctl restart docker" in host.calls.read_text()
    assert "Docker restarted and answering" in out
    assert f"{IMAGE}: now trusts the cachegate CA" in out
    assert json.loads(docker_daemon.daemon_json.read_text()) == {
        "log-level": "warn", "dns": [address], "registry-mirrors": [host.mirror]}
    mirrors = docker_daemon.docker("info", "--format", "{{json .RegistryConfig.Mirrors}}")
    assert host.mirror in mirrors.stdout
    built = await resolves(docker_daemon, tmp_path, "started", lookup=True)
    assert built.returncode == 0, built.output
    assert f"nameserver {address}" in built.output
    for name in ("deb.debian.org", "cachegate.internal"):
        assert re.search(rf"{re.escape(address)}\s+{name}", built.output), built.output
    derived = docker_daemon.docker("image", "inspect", IMAGE).stdout
    assert "io.cachegate.trusted-from" in derived and original_id in derived

    doctor = await host.cachegate("doctor")
    lines = doctor.stdout.splitlines()
    docker_line = next(line for line in lines if "Docker DNS" in line)
    assert docker_line.startswith("✓") and f"['{address}']" in docker_line, doctor.stdout
    mirror_line = next(line for line in lines if "Docker registry mirror" in line)
    assert mirror_line.startswith("✓") and host.mirror in mirror_line, doctor.stdout
    images_line = next(line for line in lines if "build images trust the CA" in line)
    assert images_line.startswith("✓") and IMAGE in images_line, doctor.stdout
    assert "the running dockerd uses it" in mirror_line, doctor.stdout

    # daemon.json names the mirror, but the daemon running was started without it: the
    # file alone would pass, the pulls would go to Docker Hub.
    with_mirror = docker_daemon.daemon_json.read_text()
    docker_daemon.write_settings({"log-level": "warn", "dns": [address]})
    docker_daemon.restart()
    docker_daemon.daemon_json.write_text(with_mirror)
    doctor = await host.cachegate("doctor")
    mirror_line = next(line for line in doctor.stdout.splitlines()
                       if "Docker registry mirror" in line)
    assert mirror_line.startswith("✗") and "has not loaded it" in mirror_line, doctor.stdout
    docker_daemon.restart()

    out = ok(await host.script(STOP, "--restore-images"))
    assert "service docker restart" in host.calls.read_text()
    assert "restored" in out and f"{IMAGE}: restored to the original" in out
    assert docker_daemon.daemon_json.read_bytes() == original
    assert docker_daemon.docker("image", "inspect", "--format", "{{.Id}}",
                                IMAGE).stdout.strip() == original_id
    assert host.gateway_pid() is None
    built = await resolves(docker_daemon, tmp_path, "stopped", lookup=False)
    assert built.returncode == 0, built.output
    assert "nameserver" in built.output and address not in built.output, built.output

    doctor = await host.cachegate("doctor")
    docker_line = next(line for line in doctor.stdout.splitlines() if "Docker DNS" in line)
    assert docker_line.startswith("✗") and 'no "dns" key' in docker_line, doctor.stdout
