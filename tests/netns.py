"""Network namespaces standing in for build containers, for the end-to-end tests and
scripts/bench/build_sim.py.

Each "container" is a network namespace joined to the host by a veth pair, as Docker
joins a container to its bridge::

    host side  cgw<pid>h<i>  10.201.N.1/24   <- cachegate listens here (DNS, :80, :443)
    namespace  eth0          10.201.N.2/32   one route: 10.201.N.1, nothing else

``/etc/netns/<name>/resolv.conf`` (which ``ip netns exec`` mounts over
``/etc/resolv.conf``) names only 10.201.N.1.  There is no default route and nothing is
forwarded, so a client that bypassed cachegate (a real address from some other resolver,
the origin on the host's 127.0.0.1) fails instead of silently succeeding.

Names carry the creating process's pid, so concurrent runs never collide and ``sweep()``
can tell a crashed run's leftovers (pid gone) from a live run's.  Subnets are chosen
among those no host interface uses, under a lock file.  Root only: ``unavailable()``
says why not.
"""

from __future__ import annotations

import ctypes
import fcntl
import ipaddress
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from gateway.ops.hostsetup import process_alive
from tests import fixtures as fx

PREFIX = "cgw"  # every namespace and host-side interface we create starts so
NETWORK = ipaddress.ip_network("10.201.0.0/16")  # a private range; routed nowhere else
NETNS_ETC = Path("/etc/netns")
LOCK = Path("/run/lock/cachegate-netns.lock")
_NAME = re.compile(rf"^{PREFIX}(\d+)[nh](\d+)$")
_serial = itertools.count()  # numbers this process's namespaces: names are never reused


def _ip(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *argv], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(argv)}: {done.stderr.strip()}")
    return done


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "ip not installed (Debian package iproute2)"
    probe = f"{PREFIX}{os.getpid()}probe"
    done = _ip("netns", "add", probe, check=False)
    if done.returncode != 0:
        return f"cannot create a network namespace: {done.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


@dataclass(frozen=True)
class Container:
    """One namespace: its name, the host-side interface and the two addresses."""

    name: str
    host_if: str
    host_ip: str  # cachegate's address as this container sees it
    ip: str

    def argv(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    @property
    def resolv_conf(self) -> Path:
        return NETNS_ETC / self.name / "resolv.conf"


def _subnets_in_use() -> set[int]:
    """Third octets of 10.201.N.0/24 subnets that any host interface already has."""
    text = _ip("-4", "-o", "addr", "show").stdout
    return {int(m.group(1)) for m in re.finditer(r"inet 10\.201\.(\d+)\.", text)}


def _free_subnets(count: int) -> list[int]:
    used = _subnets_in_use()
    free = [n for n in range(1, 255) if n not in used]
    if len(free) < count:
        raise RuntimeError(f"fewer than {count} free /24 subnets in {NETWORK}")
    return free[:count]


@contextmanager
def _locked() -> Iterator[None]:
    """Serialise subnet choice and creation between concurrent runs on one host."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def create(count: int) -> list[Container]:
    """``count`` fresh namespaces, each wired to the host as the module docstring says.
    On any failure the ones made so far are removed before the error propagates."""
    made: list[Container] = []
    try:
        with _locked():
            for n in _free_subnets(count):
                made.append(_create_one(next(_serial), n))
    except BaseException:
        destroy(made)
        raise
    return made


def _create_one(index: int, n: int) -> Container:
    pid = os.getpid()
    c = Container(f"{PREFIX}{pid}n{index}", f"{PREFIX}{pid}h{index}",
                  f"10.201.{n}.1", f"10.201.{n}.2")
    c.resolv_conf.parent.mkdir(parents=True, exist_ok=True)
    c.resolv_conf.write_text(f"nameserver {c.host_ip}\n")
    _ip("netns", "add", c.name)
    _no_ipv6(c.name)
    _ip("link", "add", c.host_if, "type", "veth", "peer", "name", "eth0", "netns", c.name)
    _ip("addr", "add", f"{c.host_ip}/24", "dev", c.host_if)
    _ip("link", "set", c.host_if, "up")
    inside = ["-n", c.name]
    _ip(*inside, "link", "set", "lo", "up")
    _ip(*inside, "addr", "add", f"{c.ip}/32", "dev", "eth0")
    _ip(*inside, "link", "set", "eth0", "up")
    _ip(*inside, "route", "add", f"{c.host_ip}/32", "dev", "eth0", "scope", "link")
    return c


def _no_ipv6(name: str) -> None:
    """IPv6 off in the namespace, as Docker leaves a container on a network without
    IPv6: no link-local route to the host side either.  Done before the veth arrives so
    it never gets an fe80:: address; a kernel without IPv6 needs nothing."""
    for scope in ("all", "default"):
        subprocess.run(["ip", "netns", "exec", name, "sh", "-c",
                        f"echo 1 > /proc/sys/net/ipv6/conf/{scope}/disable_ipv6"],
                       capture_output=True, check=False)


def destroy(containers: list[Container]) -> None:
    """Remove namespaces (killing what still runs in them), their veths and /etc/netns
    directories.  Never raises: cleanup must not hide the failure that led here."""
    for c in containers:
        _remove(c.name, c.host_if)


def _remove(name: str, host_if: str) -> None:
    for pid in _ip("netns", "pids", name, check=False).stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    _ip("link", "del", host_if, check=False)
    _ip("netns", "del", name, check=False)
    shutil.rmtree(NETNS_ETC / name, ignore_errors=True)


def sweep() -> list[str]:
    """Remove what a crashed run left behind: our namespaces, host-side veths and
    /etc/netns directories whose creating pid no longer runs.  Returns the namespaces'
    names."""
    names = set(_ip("netns", "list", check=False).stdout.split())
    names |= {p.name for p in NETNS_ETC.iterdir()} if NETNS_ETC.is_dir() else set()
    names |= set(re.findall(rf"^\d+: ({PREFIX}\d+h\d+)[@:]",
                            _ip("-o", "link", "show", check=False).stdout, re.M))
    found = {m.groups() for m in map(_NAME.match, names) if m}
    stale = sorted((pid, index) for pid, index in found if not process_alive(int(pid)))
    for pid, index in stale:
        _remove(f"{PREFIX}{pid}n{index}", f"{PREFIX}{pid}h{index}")
    return [f"{PREFIX}{pid}n{index}" for pid, index in stale]


@contextmanager
def containers(count: int) -> Iterator[list[Container]]:
    """``count`` namespaces for the duration of a ``with`` block (after a sweep)."""
    sweep()
    made = create(count)
    try:
        yield made
    finally:
        destroy(made)


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn``: the child gets SIGKILL when the thread that started it ends, so a
    crashed test run leaves no gateway bound to the namespaces' addresses.  Start such
    children from the main thread (a worker thread's end would kill them)."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


# --- cachegate on the host side ---------------------------------------------------------

UPSTREAMS = ("debian", "ubuntu", "alpine", "pypi", "npm", "maven", "go", "crates", "rubygems")
# What ``short_ttl=`` turns into one-second revalidation: each ecosystem's indexes, so a
# test can make them stale and see stale-if-error serve them during an outage.
INDEX_PATTERNS = {
    "debian": r"/dists/[^/]+/(InRelease|Release|Release\.gpg)$",
    "alpine": r"/APKINDEX\.tar\.gz$",
    "pypi": r"^/simple/",
    "npm": r"^/(@[^/]+(/|%2[fF]))?[^/@][^/]*/?$",
    "maven": r"/maven-metadata\.xml(\.[a-z0-9]+)?$",
}
_SERVED = re.compile(r"\] (?P<client>\S+) (?P<method>[A-Z]+) (?P<host>[^/\s]+)(?P<path>/\S*) "
                     r"(?P<status>\d{3}) (?P<label>[A-Z]+) (?P<sent>\d+)B (?P<ms>\d+)ms")


@dataclass(frozen=True)
class Served:
    """One request line of the gateway's log."""

    client: str
    method: str
    host: str
    path: str
    status: int
    label: str  # HIT MISS REVALIDATED STALE PASS ...
    sent: int  # body bytes
    ms: int  # from the request's arrival to its last byte


def gateway_toml(state_dir: Path, addresses: list[str], origin_url: str, forwarder: str,
                 admin_port: int, short_ttl: int | None = None) -> str:
    """cachegate's config for the containers' host side: the real ports on each address,
    the fixture origin behind every entry, ``forwarder`` as the only upstream DNS."""
    quoted = ", ".join(f'"{a}"' for a in addresses)
    lines = ["[server]", f'state_dir = "{state_dir}"', f"listen = [{quoted}]",
             "http_port = 80", "https_port = 443", f'admin = "127.0.0.1:{admin_port}"', "",
             "[dns]", "port = 53", f'forwarders = ["{forwarder}"]', 'advertise_ipv4 = "auto"',
             f'allow = ["{NETWORK}"]', ""]
    for name in UPSTREAMS:
        lines += [f"[upstreams.{name}]", f'origin = "{origin_url}/{name}"']
        if short_ttl is not None and name in INDEX_PATTERNS:
            lines.append(f"rules = [{{path = '{INDEX_PATTERNS[name]}', policy = \"revalidate\", "
                         f"ttl = {short_ttl}}}]")
        lines.append("")
    return "\n".join(lines)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HostGateway:
    """``cachegate serve`` on the host side of ``containers`` (a child that dies with the
    thread that started it), logging to ``workdir/gateway.log``."""

    def __init__(self, workdir: Path, containers: list[Container], origin_url: str,
                 forwarder: str, short_ttl: int | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.state_dir = self.workdir / "state"
        self.addresses = [c.host_ip for c in containers]
        self.config = self.workdir / "cachegate.toml"
        self.config.write_text(gateway_toml(self.state_dir, self.addresses, origin_url,
                                            forwarder, _free_port(), short_ttl))
        self.log_path = self.workdir / "gateway.log"
        self._log = open(self.log_path, "wb")
        root = Path(__file__).resolve().parents[1]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.ops.cli", "--config", str(self.config), "serve"],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=root, preexec_fn=die_with_parent,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})  # the log is read as it grows

    @property
    def ca_cert(self) -> Path:
        return self.state_dir / "ca" / "ca.crt"

    def wait_ready(self, timeout: float = 30.0) -> "HostGateway":
        """Block until every address accepts on :80 and :443 (DNS is bound before them)."""
        deadline = time.monotonic() + timeout
        pending = [(a, p) for a in self.addresses for p in (80, 443)]
        while pending:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cachegate exited with {self.proc.returncode}:\n"
                                   + self.log_tail())
            if time.monotonic() > deadline:
                raise TimeoutError(f"cachegate not listening on {pending}:\n" + self.log_tail())
            with socket.socket() as s:
                s.settimeout(1)
                if s.connect_ex(pending[0]) == 0:
                    pending.pop(0)
                    continue
            time.sleep(0.05)
        return self

    def log_tail(self, lines: int = 40) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def served(self, since: int = 0) -> list[Served]:
        """The request lines logged after byte offset ``since`` (see ``log_size``); a
        worker's line for a sibling's hop is not a client's request."""
        with open(self.log_path, "rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
        out = []
        for line in text.splitlines():
            m = _SERVED.search(line)
            if m and m["client"] != "hop":
                out.append(Served(m["client"], m["method"], m["host"], m["path"],
                                  int(m["status"]), m["label"], int(m["sent"]), int(m["ms"])))
        return out

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it lingers; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


# --- trusting the CA as a base image would -------------------------------------------

SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
TRUSTSTORE_PASSWORD = "changeit"


@dataclass(frozen=True)
class Trust:
    """The CA three ways: alone (``NODE_EXTRA_CA_CERTS``), appended to the system bundle
    as ``update-ca-certificates`` would leave it (``SSL_CERT_FILE``, ``PIP_CERT``), and as
    a PKCS#12 truststore for Java made with ``keytool``."""

    ca: Path
    bundle: Path
    truststore: Path

    @classmethod
    def of(cls, ca: Path, directory: Path) -> "Trust":
        directory.mkdir(parents=True, exist_ok=True)
        system = SYSTEM_BUNDLE.read_bytes() if SYSTEM_BUNDLE.exists() else b""
        bundle = directory / "ca-certificates.crt"
        bundle.write_bytes(system + b"\n" + ca.read_bytes())
        truststore = directory / "cacerts.p12"
        truststore.unlink(missing_ok=True)
        subprocess.run(["keytool", "-importcert", "-noprompt", "-alias", "cachegate",
                        "-file", str(ca), "-keystore", str(truststore), "-storetype", "PKCS12",
                        "-storepass", TRUSTSTORE_PASSWORD], check=True, capture_output=True)
        return cls(ca, bundle, truststore)


# --- unconfigured clients, as a Dockerfile's RUN would start them ---------------------

CLIENTS = ("apt", "pip", "npm", "mvn", "alpine")
DEBIAN_URL = "http://deb.debian.org/debian"  # a stock image's sources.list
# The names each client asks for left to its defaults (Maven's super POM names
# https://repo.maven.apache.org/maven2; pip's index links files.pythonhosted.org).
DEFAULT_HOSTS = {
    "apt": {"deb.debian.org"}, "pip": {"pypi.org", "files.pythonhosted.org"},
    "npm": {"registry.npmjs.org"}, "mvn": {"repo.maven.apache.org"},
    "alpine": {"dl-cdn.alpinelinux.org"},
}
APK_AGENT = "apk-tools/2.14.0, compiled for x86_64."
PIP_PROJECT = "cachegate-fixture-a"  # depends on cachegate-fixture-b
NPM_PACKAGE = "@cachegate/fixture"  # depends on cachegate-fixture


@dataclass(frozen=True)
class Step:
    """One command of a build: ``argv`` to run inside the container, ``env`` its whole
    environment, ``cwd`` its working directory."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path | None = None


def base_env(home: Path, **extra: str) -> dict[str, str]:
    """A container's environment: an empty home, no proxy variable, nothing inherited
    from this machine's configuration."""
    home.mkdir(parents=True, exist_ok=True)
    return {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(home), "LANG": "C.UTF-8", **extra}


def build_steps(client: str, tree: fx.Fixtures, trust: Trust, work: Path) -> list[Step]:
    """The commands ``client`` runs in a fresh container whose state lives in ``work``:
    the default repository URLs, no proxy, no index or registry option; only the CA
    trusted.  ``tree`` is what the origin serves."""
    work.mkdir(parents=True, exist_ok=True)
    return _RECIPES[client](tree, trust, work)


def _apt(tree: fx.Fixtures, trust: Trust, work: Path) -> list[Step]:
    options = fx.apt_options(work / "apt", DEBIAN_URL, tree.apt_keyring)  # proxy DIRECT
    env = base_env(work / "home", APT_CONFIG=str(work / "apt" / "apt.conf"),
                   DEBIAN_FRONTEND="noninteractive")
    return [Step(["apt-get", *options, "update"], env),
            Step(["apt-get", *options, "install", "--download-only", "-y",
                  fx.DEBIAN_PACKAGES[0]], env)]


def _pip(tree: fx.Fixtures, trust: Trust, work: Path) -> list[Step]:
    # PIP_CONFIG_FILE=/dev/null: this machine's /etc/pip.conf and ~/.config/pip name
    # local wheel directories a build image would not have.
    env = base_env(work / "home", PIP_CERT=str(trust.bundle), SSL_CERT_FILE=str(trust.bundle),
                   PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    return [Step([sys.executable, "-m", "pip", "install", "--target", str(work / "site"),
                  PIP_PROJECT], env)]


def _npm(tree: fx.Fixtures, trust: Trust, work: Path) -> list[Step]:
    project = work / "app"
    project.mkdir(parents=True, exist_ok=True)
    (project / "package.json").write_text(
        '{"name": "cachegate-e2e", "version": "1.0.0", "private": true}\n')
    # npm_config_cafile: this image's global /usr/etc/npmrc sets cafile to the system
    # bundle, which replaces Node's roots and NODE_EXTRA_CA_CERTS with it; an image with
    # the CA installed has it in that bundle, so point cafile at ours.
    env = base_env(work / "home", NODE_EXTRA_CA_CERTS=str(trust.ca),
                   npm_config_cafile=str(trust.bundle))
    # No audit (a POST, never cached) and no update check: a build would only see
    # warnings from them; here they would make the origin counts depend on timing.
    return [Step(["npm", "install", "--no-audit", "--no-fund", "--no-update-notifier",
                  NPM_PACKAGE], env, project)]


def _mvn(tree: fx.Fixtures, trust: Trust, work: Path) -> list[Step]:
    found = fx.maven_plugin_repo()
    if found is None:
        raise FileNotFoundError("no maven-dependency-plugin in /usr/share/maven-repo")
    plugins, version = found
    # Only the plugin repository is set (Debian's, as file://): artifacts come from the
    # super POM's Central. An empty global settings file keeps the host's out.
    (work / "settings.xml").write_text(fx.plugin_repository_settings(plugins.as_uri()))
    (work / "global-settings.xml").write_text("<settings/>\n")
    opts = (f"-XX:TieredStopAtLevel=1 -Xshare:auto -Duser.home={work / 'home'} "
            f"-Djavax.net.ssl.trustStore={trust.truststore} -Djavax.net.ssl.trustStoreType=PKCS12 "
            f"-Djavax.net.ssl.trustStorePassword={TRUSTSTORE_PASSWORD}")
    env = base_env(work / "home", MAVEN_OPTS=opts)
    if java_home := os.environ.get("JAVA_HOME"):
        env["JAVA_HOME"] = java_home
    return [Step(["mvn", "-B", "-q", "-s", str(work / "settings.xml"),
                  "-gs", str(work / "global-settings.xml"),
                  f"-Dmaven.repo.local={work / 'repository'}",
                  f"{fx.MAVEN_PLUGIN}:{version}:get", f"-Dartifact={fx.MAVEN_ARTIFACT}"], env)]


def _alpine(tree: fx.Fixtures, trust: Trust, work: Path) -> list[Step]:
    """What ``apk update && apk add`` fetches, with curl: the index, then each package."""
    argv = ["curl", "-fsS", "--retry", "0", "-A", APK_AGENT]
    for obj in _alpine_objects(tree):
        argv += ["-o", str(work / obj.path.rsplit("/", 1)[1]), f"https://{obj.host}{obj.path}"]
    return [Step(argv, base_env(work / "home", SSL_CERT_FILE=str(trust.bundle),
                                CURL_CA_BUNDLE=str(trust.bundle)))]


def _alpine_objects(tree: fx.Fixtures) -> list[fx.FixtureObject]:
    return sorted(tree.of("alpine"), key=lambda o: not o.path.endswith("APKINDEX.tar.gz"))


_RECIPES = {"apt": _apt, "pip": _pip, "npm": _npm, "mvn": _mvn, "alpine": _alpine}


def expected_files(client: str, tree: fx.Fixtures, work: Path) -> dict[Path, str]:
    """Files a successful build leaves in ``work`` and the sha256 each must have (an
    empty digest: the file must exist; the client verified it against its index)."""
    if client == "apt":
        debs = [o for o in tree.of("debian") if o.path.endswith(".deb")]
        return {work / "apt/cache/archives" / o.path.rsplit("/", 1)[1]: o.sha256 for o in debs}
    if client == "pip":
        return {work / "site" / p.replace("-", "_") / "__init__.py": ""
                for p in fx.PYPI_PROJECTS}
    if client == "npm":
        return {work / "app/node_modules" / name / "package.json": "" for name in fx.NPM_PACKAGES}
    if client == "mvn":
        jars = [o for o in tree.of("maven")
                if o.path.endswith(("/fixture-1.0.jar", "/fixture-dep-1.0.jar"))]
        return {work / "repository" / o.path.removeprefix("/maven2/"): o.sha256 for o in jars}
    return {work / o.path.rsplit("/", 1)[1]: o.sha256 for o in _alpine_objects(tree)}


_KEY_FILES = {  # the packages each build installs (suffixes of fixture paths)
    "apt": ("/hello-cachegate_1.0_all.deb", "/cachegate-data_1.0_all.deb"),
    "pip": ("/cachegate_fixture_a-1.0-py3-none-any.whl",
            "/cachegate_fixture_b-1.0-py3-none-any.whl"),
    "npm": ("/fixture/-/fixture-1.0.0.tgz", "/cachegate-fixture-1.1.0.tgz"),
    "mvn": ("/fixture-1.0.jar", "/fixture-dep-1.0.jar"),
    "alpine": ("/APKINDEX.tar.gz", "/cachegate-hello-1.0-r0.apk", "/cachegate-data-1.0-r0.apk"),
}


def key_origin_paths(client: str, tree: fx.Fixtures) -> list[str]:
    """Origin paths a cold build of ``client`` must have caused: its packages."""
    return [tree.find(suffix).origin_path for suffix in _KEY_FILES[client]]
