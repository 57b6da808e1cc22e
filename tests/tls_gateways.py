"""A gateway with HTTPS (and the proxy port when asked) in this process, the fixture tree
whose links name ``https://`` hosts and its origin, and the real-client helpers the HTTPS,
proxy and passthrough tests share.  The fixtures reach every test module through
``pytest_plugins`` in conftest.py."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
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
from tests.gateways import RunningGateway, Started, gateway_config
from tests.fixtures import Fixtures, build_fixtures
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
    started = Started()

    def start(origin_url: str, proxy: bool = False, allow: tuple[str, ...] | None = None,
              forwarders: tuple[str, ...] | None = None) -> TlsGateway:
        n = len(started)
        config = gateway_config(tmp_path / f"state{n}", origin_url, https_port=free_port())
        dns = config.dns
        if allow is not None:
            dns = replace(dns, allow=tuple(ipaddress.ip_network(a) for a in allow))
        if forwarders is not None:
            dns = replace(dns, forwarders=forwarders)
        config = replace(config, dns=dns, server=replace(
            config.server, proxy_port=free_port() if proxy else 0))
        return started.add(TlsGateway(config, tmp_path / f"ca{n}.pem"))

    yield start
    started.stop_all()


def curl_head(done: subprocess.CompletedProcess) -> tuple[int, dict[str, str]]:
    """Status and headers of the last response curl printed with ``-D -`` (a proxy's
    ``200 Connection established`` comes first)."""
    blocks = [b for b in done.stdout.replace("\r\n", "\n").split("\n\n") if b.startswith("HTTP/")]
    lines = blocks[-1].splitlines()
    pairs = [line.split(": ", 1) for line in lines[1:] if ": " in line]
    headers = {name.lower(): value for name, value in pairs}
    return int(lines[0].split()[1]), headers
