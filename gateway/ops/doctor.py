"""`cachegate doctor`: the whole chain checked from the host, one verdict per check.

Ports (free to bind, or held by the running gateway), DNS (a catalogue name answered with
our address, another name forwarded), HTTPS (each catalogue name's certificate verifies
against our CA), the CA in the host's trust store, Docker's ``daemon.json`` pointing its
DNS at us and its ``registry-mirrors`` at the registry mirror (which must answer: dockerd
silently goes to Docker Hub when it does not), the images of ``trust.images`` still
trusting the CA, each upstream reachable, and each secret file (cluster token, S3 and
registry credentials) readable by its owner alone.  Every failed check carries the fix.
Checks are blocking and bounded by ``timeout``; the slow ones (upstreams) run in parallel.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import re
import shutil
import socket
import ssl
import stat
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlsplit

from dnslib import QTYPE, RCODE, DNSRecord

from gateway.ops import trust
from gateway.addresses import advertised_ipv4
from gateway.cache.rules import Upstream
from gateway.config import Config

START_FIX = "start it: `systemctl start cachegate` or scripts/start.sh"


@dataclass(frozen=True)
class Check:
    ok: bool | None  # None: not applicable here (skipped)
    title: str
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class Situation:
    """What the checks are judged against."""

    config: Config
    addresses: list[str]  # concrete listen addresses
    live: dict[str, Any] | None  # the running gateway's /healthz, None when not running
    ca_pem: bytes | None
    daemon_json: Path
    trust_bundle: Path | None
    forwarded_name: str
    timeout: float

    @property
    def docker_dns(self) -> str:
        if self.live:
            return str(self.live["docker_dns"])
        return advertised_ipv4(self.config.dns.advertise_ipv4, self.addresses)


def run_checks(s: Situation) -> list[Check]:
    checks = [*check_addresses(s), *check_ports(s), *check_dns(s), check_https(s),
              check_trust(s), check_clients_trust(s), check_docker(s),
              check_registry_mirror(s), check_trusted_images(s.config)]
    from gateway.ops.tier_checks import check_tiers
    return checks + [check_workers(s), check_integrity(s)] + check_upstreams(s) + \
        check_tiers(s.config, s.timeout) + check_secret_files(s.config)


def check_secret_files(config: Config) -> list[Check]:
    """Each configured secret readable by its owner alone, as ssh wants of a key: a build
    host has many users."""
    named = [("[cluster] token_file", config.cluster.token_file),
             ("[store.s3] credentials_file", config.s3.credentials_file)]
    named += [(f"[upstreams.{r.name}] credentials_file", r.credentials_file)
              for r in config.images.registries]
    checks = []
    for key, path in named:
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except OSError:  # unset (""), or missing: the check that reads it says so
            continue
        if mode & 0o077:
            checks.append(Check(False, f"secret {path}", f"{key}: open to other users "
                                f"(mode {mode:04o})", f"chmod 600 {path}"))
        else:
            checks.append(Check(True, f"secret {path}", f"{key}: its owner alone reads it"))
    return checks


def check_workers(s: Situation) -> Check:
    """With ``server.workers`` > 1: every worker process answering its supervisor."""
    title = "workers"
    workers = (s.live or {}).get("workers")
    if workers is None:
        return Check(None, title, "one process" if s.live else "the gateway is not running")
    down = [w for w in workers if w["state"] != "up"]
    restarts = sum(w["restarts"] for w in workers)
    if not down:
        return Check(True, title, f"{len(workers)} workers up ({restarts} restarts)")
    detail = "; ".join(f"worker {w['worker']} {w['state']}"
                       + (f" (last exit: {w['last_exit']})" if w["last_exit"] else "")
                       for w in down)
    return Check(False, title, detail, "its clients go to the other workers meanwhile; a "
                 "worker that keeps exiting is in the gateway's log (journalctl -u cachegate)")


def check_integrity(s: Situation) -> Check:
    """Bodies the running gateway refused: a digest mismatch (the upstream served bytes
    its own index or a lockfile disagrees with) or drift (new bytes for an immutable URL)."""
    title = "integrity"
    brief = (s.live or {}).get("integrity")
    if brief is None:
        return Check(None, title, "the gateway is not running")
    counts = brief.get("counts", {})
    refused = {k: counts.get(k, 0) for k in ("mismatch", "drift", "drift_accepted")}
    if not any(refused.values()):
        return Check(True, title, f"no digest mismatch or drift "
                                  f"({counts.get('verified', 0)} fills verified)")
    last = brief["recent"][-1] if brief.get("recent") else None
    detail = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in refused.items() if n)
    if last:
        detail += f"; last: {last['kind']} {last['url']}: {last['reason']}"
    return Check(False, title, detail,
                 "nothing bad was stored or served whole; see /api/integrity on the admin "
                 "API; if the new upstream bytes are legitimate, `cachegate cache clear "
                 "--prefix URL` (or cache.on_drift = \"accept\")")


# -- listening -------------------------------------------------------------------------

def check_addresses(s: Situation) -> list[Check]:
    if "auto" not in s.config.server.listen:
        return []
    if all(_is_loopback(a) for a in s.addresses):
        return [Check(False, "listen addresses", "no Docker bridge (docker0) found: only "
                      f"{', '.join(s.addresses)}, which containers cannot reach",
                      "start Docker (it creates docker0), then restart the gateway; or set "
                      "server.listen to an address containers reach")]
    return [Check(True, "listen addresses", ", ".join(s.addresses))]


def _wanted_ports(s: Situation) -> list[tuple[str, str, str, int]]:
    """(kind as /healthz names it, label, address, port) of every socket we listen on."""
    server, wanted = s.config.server, []
    for address in s.addresses:
        for kind, label, port in (("http", "HTTP", server.http_port),
                                  ("https", "HTTPS", server.https_port),
                                  ("proxy", "proxy", server.proxy_port),
                                  ("dns", "DNS", s.config.dns.port)):
            if port:
                wanted.append((kind, label, address, port))
    wanted.append(("admin", "admin API", server.admin[0], server.admin[1]))
    return wanted


def check_ports(s: Situation) -> list[Check]:
    checks = []
    for kind, label, address, port in _wanted_ports(s):
        title = f"port {label} {_host_port(address, port)}"
        ours = s.live is not None and port in s.live["listeners"].get(kind, []) and \
            (kind == "admin" or address in s.live["addresses"])
        if ours:
            checks.append(Check(True, title, "held by cachegate"))
            continue
        problem = _bind_problem(address, port, udp_too=kind == "dns")
        if problem is None:
            checks.append(Check(True, title, "free to bind (cachegate is not running)"))
        else:
            checks.append(Check(False, title, problem[0], problem[1]))
    return checks


def _bind_problem(address: str, port: int, udp_too: bool) -> tuple[str, str] | None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM) if udp_too else (socket.SOCK_STREAM,):
        with socket.socket(family, kind) as sock:
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Twisted does
            try:
                sock.bind((address, port))
            except OSError as e:
                return _bind_advice(e, address, port)
    return None


def _bind_advice(e: OSError, address: str, port: int) -> tuple[str, str]:
    if e.errno == errno.EADDRINUSE:
        return ("in use by another process",
                f"find it with `ss -lntup 'sport = :{port}'` and stop it, or move cachegate "
                "to another port in the config")
    if e.errno == errno.EACCES:
        return ("not allowed to bind (a privileged port)",
                "run as root, or grant CAP_NET_BIND_SERVICE (systemd/cachegate.service does)")
    if e.errno == errno.EADDRNOTAVAIL:
        return (f"{address} is not an address of this host",
                "fix server.listen (or start Docker if it is the docker0 address)")
    return (f"cannot bind: {e.strerror}", "see the error")


# -- DNS -------------------------------------------------------------------------------

def check_dns(s: Situation) -> list[Check]:
    port = s.config.dns.port
    if not port:
        return [Check(None, "DNS", "dns.port = 0: the resolver is off")]
    name = _sample_names(s.config.upstreams)[0]
    expected = set(s.addresses) | {s.docker_dns}
    checks = []
    for address in s.addresses:
        title = f"DNS {_host_port(address, port)} redirects {name}"
        answer, error = _ask(name, address, port, s.timeout)
        if error:
            checks.append(Check(False, title, error, START_FIX if s.live is None else
                                "see the gateway's log"))
            continue
        got = [str(rr.rdata) for rr in answer.rr if rr.rtype == QTYPE.A]
        good = bool(got) and set(got) <= expected
        checks.append(Check(good, title, f"A {', '.join(got) or 'none'}",
                            "" if good else f"expected one of {', '.join(sorted(expected))}"))
    checks.append(_check_forwarded(s, s.addresses[0], port))
    return checks


def _check_forwarded(s: Situation, address: str, port: int) -> Check:
    name = s.forwarded_name
    title = f"DNS {_host_port(address, port)} forwards {name}"
    answer, error = _ask(name, address, port, s.timeout)
    if error:
        return Check(False, title, error, START_FIX if s.live is None else
                     "check dns.forwarders and that those resolvers answer")
    rcode = RCODE.get(answer.header.rcode)
    if rcode in ("NOERROR", "NXDOMAIN"):
        return Check(True, title, f"{rcode}, {len(answer.rr)} answer(s)")
    forwarders = ", ".join(s.config.dns.forwarders)
    return Check(False, title, f"{rcode}: the upstream resolvers did not answer",
                 f"check dns.forwarders (now: {forwarders}) and that those resolvers answer")


def _ask(name: str, address: str, port: int, timeout: float) -> tuple[Any, str | None]:
    query = DNSRecord.question(name, "A")
    try:
        reply = DNSRecord.parse(query.send(address, port, timeout=timeout))
    except (OSError, socket.timeout) as e:
        return None, f"no answer ({e.__class__.__name__}: {e})"
    except Exception as e:  # noqa: BLE001 - garbage from whatever listens there
        return None, f"not a DNS answer: {e}"
    return reply, None


def _sample_names(upstreams: Iterable[Upstream]) -> list[str]:
    """One name per host pattern: the exact names, and a name under each ``*.suffix``."""
    return [h if not h.startswith("*.") else "cachegate-doctor" + h[1:]
            for u in upstreams for h in u.hosts]


# -- TLS -------------------------------------------------------------------------------

def check_https(s: Situation) -> Check:
    port = s.config.server.https_port
    if not port:
        return Check(None, "HTTPS", "https_port = 0: HTTPS is off")
    if s.ca_pem is None:
        return Check(False, "HTTPS", "cannot read the CA certificate", START_FIX)
    names = _sample_names(s.config.upstreams)
    address = s.addresses[0]
    failures = []
    for name in names:
        error = _handshake(address, port, name, ssl.create_default_context(
            cadata=s.ca_pem.decode()), s.timeout)
        if error:
            failures.append(f"{name}: {error}")
    title = f"HTTPS {_host_port(address, port)} certificates"
    if failures:
        return Check(False, title, f"{len(failures)} of {len(names)} names fail: "
                     + "; ".join(failures[:3]) + ("; …" if len(failures) > 3 else ""),
                     START_FIX if s.live is None else "see the gateway's log (TLS lines)")
    return Check(True, title, f"all {len(names)} catalogue names verify against the CA")


def _handshake(address: str, port: int, name: str, context: ssl.SSLContext,
               timeout: float) -> str | None:
    try:
        with socket.create_connection((address, port), timeout=timeout) as raw:
            with context.wrap_socket(raw, server_hostname=name):
                return None
    except ssl.SSLCertVerificationError as e:
        return e.verify_message or str(e)
    except (OSError, ssl.SSLError) as e:
        return f"{e.__class__.__name__}: {e}"


def check_trust(s: Situation) -> Check:
    title = "CA in the host trust store"
    if s.ca_pem is None:
        return Check(False, title, "cannot read the CA certificate", START_FIX)
    bundle = s.trust_bundle or Path(ssl.get_default_verify_paths().cafile or
                                    "/etc/ssl/certs/ca-certificates.crt")
    try:
        text = bundle.read_text(errors="replace")
    except OSError as e:
        return Check(False, title, f"cannot read {bundle}: {e.strerror}",
                     "install the ca-certificates package")
    ours = ssl.PEM_cert_to_DER_cert(s.ca_pem.decode())
    trusted = {ssl.PEM_cert_to_DER_cert(pem) for pem in re.findall(
        r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", text, re.S)}
    if ours in trusted:
        return Check(True, title, f"in {bundle}")
    return Check(False, title, f"not in {bundle}",
                 "cachegate ca export > /usr/local/share/ca-certificates/cachegate.crt && "
                 "update-ca-certificates")


# -- Docker ----------------------------------------------------------------------------

def check_clients_trust(s: Situation) -> Check:
    """Build clients that rejected our certificate (their builds were tunnelled uncached)."""
    title = "build clients trust the CA"
    if s.live is None:
        return Check(None, title, "gateway not running")
    lines = s.live.get("untrusting", [])
    if not lines:
        return Check(True, title, "no client rejected the CA's certificates")
    return Check(False, title, "; ".join(lines),
                 "run `cachegate trust image IMAGE` for those builds' base images")


def check_trusted_images(config: Config) -> Check:
    """The images of ``trust.images`` and those shadowed before: each still trusts the CA
    (a ``docker pull`` since puts the original back under its name)."""
    title = "build images trust the CA"
    try:
        if not config.trust.images and not trust.ImageRecords(config.server.state_dir).load():
            return Check(None, title, "none listed in trust.images or shadowed")
        if shutil.which("docker") is None:
            return Check(None, title, "the Docker CLI is not installed")
        states = trust.image_states(config, trust.Docker())
    except trust.TrustError as e:
        return Check(False, title, str(e), "see `cachegate trust images`")
    lacking = [f"{name} ({state})" for name, state, _ in states if state != trust.TRUSTED]
    if lacking:
        return Check(False, title, "lack the CA: " + ", ".join(lacking),
                     "`cachegate trust image` (no names: trust.images) or scripts/start.sh")
    return Check(True, title, ", ".join(name for name, _, _ in states))


def check_docker(s: Situation) -> Check:
    title = f"Docker DNS ({s.daemon_json})"
    want = s.docker_dns
    fix = (f'scripts/start.sh, or add "dns": ["{want}"] to {s.daemon_json} and restart '
           "Docker")
    try:
        config = json.loads(s.daemon_json.read_text())
    except FileNotFoundError:
        if shutil.which("docker") is None and shutil.which("dockerd") is None:
            return Check(None, title, "Docker is not installed")
        return Check(False, title, "no such file: Docker uses the host's resolvers", fix)
    except (OSError, ValueError) as e:
        return Check(False, title, f"cannot read it: {e}", "fix the file")
    servers = config.get("dns") if isinstance(config, dict) else None
    if not isinstance(servers, list) or not servers:
        return Check(False, title, "no \"dns\" key: Docker uses the host's resolvers", fix)
    ours = [a for a in servers if a in set(s.addresses) | {want}]
    if not ours:
        return Check(False, title, f"dns is {servers}, not the gateway", fix)
    if all(_is_loopback(a) for a in ours):
        return Check(False, title, f"dns is {servers}: BuildKit drops loopback nameservers "
                     "for RUN steps", "listen on the docker0 address (server.listen = "
                     "[\"auto\"]) and point Docker at it")
    if servers[0] not in ours:
        return Check(False, title, f"dns is {servers}: the gateway is not first", fix)
    return Check(True, title, f"dns is {servers}")


def check_registry_mirror(s: Situation) -> Check:
    """``registry-mirrors`` names the mirror first, and the mirror answers ``/v2/``."""
    from gateway.ops.hostsetup import mirror_url
    url = mirror_url(s.config)
    title = "Docker registry mirror"
    if not url:
        return Check(None, title, "images.listen is off")
    fix = (f'scripts/start.sh, or put "{url}" first in "registry-mirrors" in '
           f"{s.daemon_json} and restart Docker")
    try:
        config = json.loads(s.daemon_json.read_text())
    except (OSError, ValueError):
        config = None
    mirrors = config.get("registry-mirrors") if isinstance(config, dict) else None
    if config is None and shutil.which("dockerd") is None:
        return Check(None, title, "Docker is not installed")
    if not isinstance(mirrors, list) or not mirrors or str(mirrors[0]).rstrip("/") != url:
        return Check(False, title, f"registry-mirrors is {mirrors or 'not set'}: image pulls "
                     "bypass the cache", fix)
    problem = _mirror_problem(url, s.timeout)
    if problem:
        return Check(False, title, f"{url} {problem}: dockerd silently pulls from Docker "
                     "Hub instead", START_FIX)
    loaded = _running_mirrors(s.timeout)
    if loaded is not None and url not in [m.rstrip("/") for m in loaded]:
        return Check(False, title, f"{s.daemon_json} names {url}, but the running Docker "
                     f"daemon has not loaded it (its mirrors: {loaded or 'none'}): pulls "
                     "go to Docker Hub until it restarts", "restart Docker")
    running = "; the running dockerd uses it" if loaded is not None else ""
    return Check(True, title, f"registry-mirrors starts with {url}, which answers{running}")


def _running_mirrors(timeout: float) -> list[str] | None:
    """The registry mirrors the running dockerd has loaded (``docker info``), or None when
    no daemon answers here: the file alone can be ahead of a daemon not restarted."""
    docker = shutil.which("docker")
    if docker is None:
        return None
    try:
        done = subprocess.run([docker, "info", "--format", "{{json .RegistryConfig.Mirrors}}"],
                              capture_output=True, text=True, timeout=timeout + 5)
        mirrors = json.loads(done.stdout) if done.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None
    return None if done.returncode else [str(m) for m in mirrors or []]


def _mirror_problem(url: str, timeout: float) -> str | None:
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(f"{url}/v2/", timeout=timeout) as response:
            if response.headers.get("Docker-Distribution-API-Version") != "registry/2.0":
                return "answers, but not as a registry"
    except (OSError, urllib.error.URLError) as e:
        return f"does not answer ({getattr(e, 'reason', e)})"
    return None


# -- upstreams -------------------------------------------------------------------------

def check_upstreams(s: Situation) -> list[Check]:
    if s.config.cache.offline:
        return [Check(None, "upstreams", "cache.offline = true: never contacted")]
    upstreams = list(s.config.upstreams)
    with ThreadPoolExecutor(max_workers=min(16, len(upstreams) or 1)) as pool:
        return list(pool.map(lambda u: _check_upstream(u, s), upstreams))


def _check_upstream(upstream: Upstream, s: Situation) -> Check:
    exact = [h for h in upstream.hosts if not h.startswith("*.")]
    if not upstream.origin and not exact:
        return Check(None, f"upstream {upstream.name}", "only wildcard hosts: nothing to try")
    url = upstream.origin or f"{upstream.scheme}://{exact[0]}"
    parts = urlsplit(url)
    host, scheme = parts.hostname or "", parts.scheme
    port = parts.port or (443 if scheme == "https" else 80)
    title = f"upstream {upstream.name} ({scheme}://{_host_port(host, port)})"
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        return Check(False, title, f"cannot resolve {host}: {e.strerror}",
                     "check the host's DNS and network")
    server = s.config.server
    if port in (server.http_port, server.https_port, server.proxy_port) and \
            any(info[4][0] in s.addresses for info in found):
        return Check(False, title, f"{host} resolves to the gateway itself",
                     "the host's own resolver must not be the gateway (only Docker's); "
                     "or fix this upstream's origin")
    error = _reach(host, port, scheme == "https", s.timeout)
    if error:
        return Check(False, title, error, "check the network, proxy and firewall towards it"
                     + ("" if upstream.origin else ", or set an origin mirror"))
    return Check(True, title, "reachable" + (" (TLS verified)" if scheme == "https" else ""))


def _reach(host: str, port: int, tls: bool, timeout: float) -> str | None:
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            if tls:
                with ssl.create_default_context().wrap_socket(raw, server_hostname=host):
                    pass
    except ssl.SSLCertVerificationError as e:
        return f"TLS: {e.verify_message}"
    except (OSError, ssl.SSLError) as e:
        return f"{e.__class__.__name__}: {e}"
    return None


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
