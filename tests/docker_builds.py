"""Real ``docker build``s through cachegate, for tests/e2e/test_docker_*.py and
``scripts/bench/build_sim.py --docker``.

The session's private dockerd (tests/docker_daemon.py) points its containers' DNS at its
bridge address; ``cachegate serve`` listens there on 53/80/443 with every catalogue
entry's origin set to the fixture origin (tests/origin.py) on the host's loopback, which
no container can reach.  Dockerfiles carry no proxy, index or registry settings.

The images (all from the debootstrap rootfs of tests/rootfs.py, ``docker import``ed):

- ``STOCK`` (``debian:bookworm``): the rootfs as a registry would give it, except that
  what stands in for the internet is trusted as the real thing would be: the stand-in
  public CA (``StandIn``) among its roots (``update-ca-certificates``, which also fills
  the JRE's cacerts; ``NODE_EXTRA_CA_CERTS`` for Node's bundled roots) and the fixture
  archive key among apt's.
- ``TRUSTED`` (``debian:bookworm-slim``): the same image under another name, shadowed
  by ``cachegate trust image`` (run against the daemon) so that it trusts cachegate's CA.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from gateway.config import parse_config
from tests import netns
from tests import rootfs
from tests.docker_daemon import DockerDaemon
from tests.processes import free_port

STOCK = "debian:bookworm"
TRUSTED = "debian:bookworm-slim"
ARCHIVE_KEY = "/etc/apt/trusted.gpg.d/cachegate-fixture.gpg"
STAND_IN_CA = "/usr/local/share/ca-certificates/stand-in-public-roots.crt"
CATALOGUE = tuple(u.name for u in parse_config({}, "defaults").upstreams)
ROOT = Path(__file__).resolve().parents[1]


def gateway_toml(state_dir: Path, address: str, origin_url: str, forwarder: str,
                 admin_port: int, trust_images: tuple[str, ...] = ()) -> str:
    """cachegate on the bridge address: real ports, ``forwarder`` as its only upstream
    DNS, the fixture origin behind every catalogue entry."""
    images = ", ".join(f'"{i}"' for i in trust_images)
    lines = ["[server]", f'state_dir = "{state_dir}"', f'listen = ["{address}"]',
             "http_port = 80", "https_port = 443", f'admin = "127.0.0.1:{admin_port}"', "",
             "[dns]", "port = 53", f'forwarders = ["{forwarder}"]', "",
             "[trust]", f"images = [{images}]", "",
             # No registry mirror: its fixed loopback port may be another test's.
             "[images]", 'listen = ""', ""]
    for name in CATALOGUE:
        lines += [f"[upstreams.{name}]", f'origin = "{origin_url}/{name}"', ""]
    return "\n".join(lines)


class DockerGateway(netns.HostGateway):
    """``cachegate serve`` on the daemon's bridge address (see ``netns.HostGateway`` for
    waiting, the request log and stopping)."""

    def __init__(self, workdir: Path, address: str, origin_url: str, forwarder: str,
                 trust_images: tuple[str, ...] = ()) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.state_dir = self.workdir / "state"
        self.addresses = [address]
        self.admin_port = free_port()
        self.config = self.workdir / "cachegate.toml"
        self.config.write_text(gateway_toml(self.state_dir, address, origin_url, forwarder,
                                            self.admin_port, trust_images))
        self.log_path = self.workdir / "gateway.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.ops.cli", "--config", str(self.config), "serve"],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT,
            preexec_fn=netns.die_with_parent, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def cli(self, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """``cachegate --config … ARGV`` (``env``: e.g. the daemon's, for ``trust``)."""
        return subprocess.run([sys.executable, "-m", "gateway.ops.cli", "--config",
                               str(self.config), *argv], cwd=ROOT, capture_output=True,
                              text=True, timeout=600, env=env)

    def clear_cache(self) -> None:
        done = self.cli("cache", "clear", "--yes")
        assert done.returncode == 0, done.stderr


# --- "the internet" for tunnels ---------------------------------------------------------

class StandIn:
    """What a stock image's HTTPS clients reach through cachegate's tunnels once they
    have rejected its certificate: the fixture origin over TLS under a CA of its own (the
    stand-in for the public roots) on a spare bridge address, and a resolver giving that
    address for every host the origin knows (cachegate's only forwarder).  Not on the
    host's loopback: cachegate never tunnels a container there."""

    def __init__(self, origin, daemon: DockerDaemon, work: Path) -> None:  # type: ignore[no-untyped-def]
        from twisted.internet import reactor
        from twisted.web import server

        from tests.dns_helpers import FakeUpstream
        from tests.origin import PROXY_HOSTS, ByHost, OriginResource
        from tls.ca import create_ca
        from tls.context import SNIContexts
        from tls.leaf import LeafCache

        self.address = daemon.spare_address()
        self.bridge = daemon.name
        subprocess.run(["ip", "addr", "add", f"{self.address}/32", "dev", self.bridge],
                       check=True, capture_output=True)
        ca = create_ca(tuple(PROXY_HOSTS), "ecdsa", False, time.time())
        self.ca_cert = Path(work) / "stand-in-ca.crt"
        self.ca_cert.parent.mkdir(parents=True, exist_ok=True)
        self.ca_cert.write_bytes(ca.cert_pem())
        self.tls = reactor.listenSSL(
            443, server.Site(ByHost(OriginResource(origin))),
            SNIContexts(LeafCache(ca, reactor, "ecdsa"), lambda name: True).options,
            interface=self.address)
        self.dns = FakeUpstream(reactor, {host: [f"{host}. 60 IN A {self.address}"]
                                          for host in PROXY_HOSTS}).start()

    def stop(self):  # type: ignore[no-untyped-def]
        from twisted.internet import defer
        subprocess.run(["ip", "addr", "del", f"{self.address}/32", "dev", self.bridge],
                       capture_output=True, check=False)
        return defer.gatherResults([defer.maybeDeferred(self.tls.stopListening),
                                    self.dns.stop()])


# --- images -------------------------------------------------------------------------------

STOCK_DOCKERFILE = f"""\
FROM {{base}}
COPY stand-in-ca.crt {STAND_IN_CA}
COPY archive-keyring.gpg {ARCHIVE_KEY}
RUN update-ca-certificates >/dev/null
ENV NODE_EXTRA_CA_CERTS={STAND_IN_CA}
"""


def make_stock_image(daemon: DockerDaemon, stand_in_ca: Path, archive_keyring: Path,
                     work: Path) -> str:
    """``STOCK``: the imported rootfs trusting the stand-in internet (see the module
    docstring); also tagged ``TRUSTED`` for ``cachegate trust image`` to shadow."""
    context = Path(work) / "stock-context"
    context.mkdir(parents=True, exist_ok=True)
    shutil.copy(stand_in_ca, context / "stand-in-ca.crt")
    shutil.copy(archive_keyring, context / "archive-keyring.gpg")
    (context / "Dockerfile").write_text(STOCK_DOCKERFILE.format(base=rootfs.base_image(daemon)))
    daemon.docker("build", "--tag", STOCK, str(context), buildkit=False)
    daemon.docker("tag", STOCK, TRUSTED)
    return STOCK


# --- Dockerfiles --------------------------------------------------------------------------

# One RUN step per client, each checking what it installed; ARG BUILD makes concurrent
# builds distinct (no builder may merge them into one).
STEPS = {
    "apt": "RUN apt-get update && apt-get install -y --no-install-recommends hello-cachegate"
           " && dpkg -s hello-cachegate cachegate-data >/dev/null",
    "pip": "RUN python3 -m pip install --disable-pip-version-check --target /tmp/pip "
           "cachegate-fixture-a && test -f /tmp/pip/cachegate_fixture_b/__init__.py",
    "npm": "RUN mkdir /tmp/npm && cd /tmp/npm && echo '{\"name\": \"app\", \"version\": "
           "\"1.0.0\", \"private\": true}' > package.json && npm install --no-audit --no-fund "
           "--no-update-notifier @cachegate/fixture && test -f "
           "node_modules/cachegate-fixture/package.json",
    # The dependency plugin from the image's own Debian maven-repo (Central is the
    # fixture); the artifacts from the super POM's Central, repo.maven.apache.org.
    "mvn": "RUN plugins=/usr/share/maven-repo/org/apache/maven/plugins/maven-dependency-plugin"
           " && version=$(ls $plugins | grep -v debian | sort -V | tail -n 1)"
           " && mvn -B -q -s /tmp/m2-settings.xml -Dmaven.repo.local=/tmp/m2"
           " org.apache.maven.plugins:maven-dependency-plugin:$version:get"
           " -Dartifact=org.cachegate:fixture:1.0"
           " && test -f /tmp/m2/org/cachegate/fixture-dep/1.0/fixture-dep-1.0.jar",
    "curl": "RUN curl -sS --fail -o /dev/null "
            "https://deb.debian.org/debian/dists/bookworm/InRelease",
}
CLIENTS = ("apt", "pip", "npm", "mvn")
# What a cold build of each client must have fetched from the origin (path suffixes).
KEY_OBJECTS = {
    "apt": ("/hello-cachegate_1.0_all.deb", "/cachegate-data_1.0_all.deb"),
    "pip": ("/cachegate_fixture_a-1.0-py3-none-any.whl",
            "/cachegate_fixture_b-1.0-py3-none-any.whl"),
    "npm": ("/fixture/-/fixture-1.0.0.tgz", "/cachegate-fixture-1.1.0.tgz"),
    "mvn": ("/fixture-1.0.jar", "/fixture-dep-1.0.jar"),
}
ORIGIN_PREFIX = {"apt": "/debian/", "pip": "/pypi/", "npm": "/npm/", "mvn": "/maven/"}
HOSTS = {"apt": {"deb.debian.org"}, "pip": {"pypi.org", "files.pythonhosted.org"},
         "npm": {"registry.npmjs.org"}, "mvn": {"repo.maven.apache.org"},
         "curl": {"deb.debian.org"}}


def dockerfile(base: str, clients: tuple[str, ...]) -> str:
    lines = [f"FROM {base}", "ARG BUILD=0"]
    if "mvn" in clients:
        lines.append("COPY m2-settings.xml /tmp/m2-settings.xml")
    lines += [STEPS[c] for c in clients]
    return "\n".join(lines) + "\n"


def write_context(directory: Path, base: str, clients: tuple[str, ...]) -> Path:
    from tests import fixtures as fx
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "Dockerfile").write_text(dockerfile(base, clients))
    (directory / "m2-settings.xml").write_text(
        fx.plugin_repository_settings("file:///usr/share/maven-repo"))
    return directory


# A step's "#N DONE 1.2s" may follow its last output on the same line (mvn -q ends with
# no newline).
STEP_TIME = re.compile(r"^#(\d+) (?:\[[^\]]*\] )?(RUN .*)$|#(\d+) DONE (\d+\.\d+)s$", re.M)


@dataclass
class Build:
    """One finished ``docker build``."""

    builder: str  # "legacy" | "buildkit"
    returncode: int
    output: str  # stdout + stderr
    seconds: float

    def step_seconds(self) -> dict[str, float]:
        """BuildKit's ``--progress=plain``: each RUN step's time, by its command."""
        names: dict[str, str] = {}
        times: dict[str, float] = {}
        for m in STEP_TIME.finditer(self.output):
            if m.group(2):
                names[m.group(1)] = m.group(2)
            elif m.group(3) in names:
                times[names[m.group(3)]] = float(m.group(4))
        return times


def build(daemon: DockerDaemon, context: Path, builder: str, build_arg: str = "0",
          tag: str | None = None) -> Build:
    """``docker build --no-cache`` of ``context`` with ``builder`` (blocking: run it in
    a thread while the reactor serves the origin)."""
    argv = ["build", "--no-cache", "--build-arg", f"BUILD={build_arg}"]
    if builder == "buildkit":
        argv += ["--progress=plain"]
    if tag:
        argv += ["--tag", tag]
    started = time.monotonic()
    done = daemon.docker(*argv, str(context), buildkit=builder == "buildkit", check=False)
    return Build(builder, done.returncode, done.stdout + done.stderr,
                 time.monotonic() - started)


def repeated_objects(requests) -> dict[tuple, int]:  # type: ignore[no-untyped-def]
    """Objects (a path in one representation) the origin was asked for more than once."""
    counts = Counter((r.method, r.path, r.headers.get("accept"),
                      r.headers.get("accept-encoding")) for r in requests)
    return {key: n for key, n in counts.items() if n > 1}


class Gateways:
    """One cachegate at a time on the bridge address, by role: "stock" (whose memory of
    untrusting clients must not leak into the trusted builds) and "trusted".  Each role
    keeps its state directory (CA, cache) across restarts."""

    def __init__(self, daemon, origin, forwarder: str, work) -> None:  # type: ignore[no-untyped-def]
        self.daemon, self.origin, self.forwarder, self.work = daemon, origin, forwarder, work
        self.role: str | None = None
        self.current: DockerGateway | None = None

    def get(self, role: str) -> DockerGateway:
        if self.role != role:
            self.stop()
            self.current = DockerGateway(self.work / role, self.daemon.address,
                                         self.origin.url, self.forwarder).wait_ready()
            self.role = role
        return self.current  # type: ignore[return-value]

    def stop(self) -> None:
        if self.current is not None:
            self.current.stop()
        self.current = self.role = None


def stand_in_for(origin, daemon, work):  # type: ignore[no-untyped-def]
    """A fixture's body: the stand-in "real upstream" for as long as the fixture lives."""
    import pytest_twisted
    made = StandIn(origin, daemon, work)
    yield made
    pytest_twisted.blockon(made.stop())
