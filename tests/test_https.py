"""The HTTPS front door of a whole gateway, with real clients trusting only its CA: the
same cache as port 80, certificates per SNI name, Host and SNI must agree.

The helpers here (a fixture tree whose links name ``https://`` hosts, its origin, a gateway
with HTTPS and optionally the proxy port) are shared with tests/test_proxy.py."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import ssl
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from gateway.config import Config
from tests.clients import need
from tests.gateways import RunningGateway, gateway_config
from tests.fixtures import FILES_HOST, PYPI_HOST, Fixtures, build_fixtures
from tests.origin import Origin

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
# Trust settings that would add to (or, for requests' REQUESTS_CA_BUNDLE, override) the CA
# a test names: clients here trust our CA only.
TRUST_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR",
                   "NODE_EXTRA_CA_CERTS", "PIP_CERT", "NPM_CONFIG_CAFILE")
SIMPLE_A = "/simple/cachegate-fixture-a/"


def free_port() -> int:
    """A port number free on loopback now (0 means "off" for HTTPS and the proxy)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without the machine's proxy and trust settings."""
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in PROXY_VARIABLES and k.upper() not in TRUST_VARIABLES}
    return {**env, **extra}


def run(argv: list[str], timeout: float = 60, **kwargs: Any):  # type: ignore[no-untyped-def]
    """A real client in a thread, so the gateway and origin in this reactor serve it."""
    kwargs.setdefault("env", clean_env())
    return deferToThread(subprocess.run, argv, capture_output=True, text=True,
                         timeout=timeout, **kwargs)


def ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, f"{done.args}\n{done.stdout}\n{done.stderr}"
    return done


def need_binary(name: str, package: str) -> None:
    need(shutil.which(name) is not None, f"{name} not installed (package {package})")


@pytest.fixture(scope="module")
def https_served(tmp_path_factory):  # type: ignore[no-untyped-def]
    """(origin, fixtures): a tree whose index pages link ``https://files.pythonhosted.org``
    and ``https://registry.npmjs.org``, as the real registries do, on its own origin."""
    root = tmp_path_factory.mktemp("https-tree")
    tree = build_fixtures(root, files_base="https://files.pythonhosted.org",
                          npm_base="https://registry.npmjs.org")
    server = Origin(root, reactor)
    server.listen()
    yield server, tree
    pytest_twisted.blockon(server.stop_serving())


@pytest.fixture
def https_origin(https_served) -> Origin:  # type: ignore[no-untyped-def]
    server, _ = https_served
    server.reset()
    return server


@pytest.fixture
def https_tree(https_served) -> Fixtures:  # type: ignore[no-untyped-def]
    return https_served[1]


class TlsGateway(RunningGateway):
    """A gateway with HTTPS (and the proxy port when asked), its CA in ``cafile``."""

    def __init__(self, config: Config, cafile: Path) -> None:
        super().__init__(config)
        self.https_port = self.service.ports("https")[0]
        proxies = self.service.ports("proxy")
        self.proxy_port = proxies[0] if proxies else None
        self.cafile = cafile
        cafile.write_bytes(self.service.ca.cert_pem())

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"


@pytest.fixture
def start_tls_gateway(tmp_path):  # type: ignore[no-untyped-def]
    """``start_tls_gateway(origin_url, proxy=False, allow=None, forwarders=None)``:
    HTTPS on a free port; ``allow`` replaces ``dns.allow``; stopped after the test."""
    running: list[TlsGateway] = []

    def start(origin_url: str, proxy: bool = False, allow: tuple[str, ...] | None = None,
              forwarders: tuple[str, ...] | None = None) -> TlsGateway:
        n = len(running)
        config = gateway_config(tmp_path / f"state{n}", origin_url, https_port=free_port())
        dns = config.dns
        if allow is not None:
            dns = replace(dns, allow=tuple(ipaddress.ip_network(a) for a in allow))
        if forwarders is not None:
            dns = replace(dns, forwarders=forwarders)
        config = replace(config, dns=dns, server=replace(
            config.server, proxy_port=free_port() if proxy else 0))
        gw = TlsGateway(config, tmp_path / f"ca{n}.pem")
        running.append(gw)
        return gw

    yield start
    for gw in running:
        if gw.service.running:
            gw.stop()


def curl_head(done: subprocess.CompletedProcess) -> tuple[int, dict[str, str]]:
    """Status and headers of the last response curl printed with ``-D -`` (a proxy's
    ``200 Connection established`` comes first)."""
    blocks = [b for b in done.stdout.replace("\r\n", "\n").split("\n\n") if b.startswith("HTTP/")]
    lines = blocks[-1].splitlines()
    pairs = [line.split(": ", 1) for line in lines[1:] if ": " in line]
    headers = {name.lower(): value for name, value in pairs}
    return int(lines[0].split()[1]), headers


def curl_https(gw: TlsGateway, host: str, path: str, *extra: str):  # type: ignore[no-untyped-def]
    """``curl`` to ``https://host:PORT/path`` with ``host`` resolved to the gateway."""
    port = gw.https_port
    return run(["curl", "-sS", "-D", "-", "-o", os.devnull, "--max-time", "20",
                "--cacert", str(gw.cafile), "--resolve", f"{host}:{port}:127.0.0.1",
                *extra, f"https://{host}:{port}{path}"])


def tls_handshake(port: int, cafile: Path, name: str | None) -> str:
    """A Python ``ssl`` handshake trusting only ``cafile``: the certificate's subject
    alternative names, or the SSL error text."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile)
    ctx.check_hostname = name is not None
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname=name) as tls:
                return str(tls.getpeercert()["subjectAltName"])
    except (ssl.SSLError, ConnectionResetError) as e:
        return f"refused: {e}"


# --- the tests ----------------------------------------------------------------------

@pytest_twisted.inlineCallbacks
def test_curl_over_https_second_request_is_a_hit(start_tls_gateway, https_origin):
    need_binary("curl", "curl")
    gw = start_tls_gateway(https_origin.url)
    first = ok((yield curl_https(gw, PYPI_HOST, SIMPLE_A)))
    second = ok((yield curl_https(gw, PYPI_HOST, SIMPLE_A)))
    assert curl_head(first)[0] == 200 and curl_head(first)[1]["x-cache"] == "MISS"
    assert curl_head(second)[0] == 200 and curl_head(second)[1]["x-cache"] == "HIT"
    assert https_origin.count("/pypi" + SIMPLE_A) == 1  # the hit asked nothing


@pytest_twisted.inlineCallbacks
def test_host_that_disagrees_with_sni_is_421(start_tls_gateway, https_origin):
    need_binary("curl", "curl")
    gw = start_tls_gateway(https_origin.url)
    done = ok((yield curl_https(gw, PYPI_HOST, SIMPLE_A, "-H", f"Host: {FILES_HOST}")))
    assert curl_head(done)[0] == 421
    assert https_origin.requests == []


@pytest_twisted.inlineCallbacks
def test_python_ssl_gets_a_leaf_for_a_catalogue_name_only(start_tls_gateway, https_origin):
    gw = start_tls_gateway(https_origin.url)
    good = yield deferToThread(tls_handshake, gw.https_port, gw.cafile, FILES_HOST)
    outside = yield deferToThread(tls_handshake, gw.https_port, gw.cafile, "example.com")
    no_sni = yield deferToThread(tls_handshake, gw.https_port, gw.cafile, None)
    assert good == f"(('DNS', '{FILES_HOST}'),)"
    assert outside.startswith("refused") and no_sni.startswith("refused")
    assert gw.service.tls.refused == 2


@pytest_twisted.inlineCallbacks
def test_ca_certificate_on_the_local_name(start_tls_gateway, https_origin, tmp_path):
    need_binary("curl", "curl")
    gw = start_tls_gateway(https_origin.url)
    body = tmp_path / "ca.crt"
    port = gw.https_port
    done = ok((yield run(["curl", "-sS", "--fail", "--max-time", "20", "--cacert",
                         str(gw.cafile), "--resolve", f"cachegate.internal:{port}:127.0.0.1",
                         "-o", str(body), f"https://cachegate.internal:{port}/ca.crt"])))
    assert body.read_bytes() == gw.cafile.read_bytes(), done.stderr
