"""Shared fixtures: a gateway in this process on loopback port 0, in front of the fixture
origin (``tests/origin.py``), the only fake in the suite."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.logger import LogLevel, formatEventAsClassicLogText, globalLogPublisher

from gateway.catalogue import BUILTIN
from gateway.config import CacheConfig, Config, DnsConfig, ServerConfig
from gateway.service import make_service

def _log_to_current_stderr(event: dict) -> None:
    """Twisted log lines go to whatever sys.stderr is now, so pytest shows them with the
    failing test they belong to."""
    if event.get("log_level", LogLevel.info) >= LogLevel.info:
        sys.stderr.write(formatEventAsClassicLogText(event) or "")
        if event.get("log_failure"):
            sys.stderr.write(event["log_failure"].getTraceback())


globalLogPublisher.addObserver(_log_to_current_stderr)


def gateway_config(state_dir: Path, origin_url: str, rules: dict | None = None,
                   https_port: int = 0, http_port: int = 0, **cache: object) -> Config:
    """Every catalogue entry pointed at ``origin_url/<entry name>``; HTTP on a free port;
    ``rules`` ({entry name: (Rule, ...)}) tried before an entry's own."""
    rules = rules or {}
    upstreams = tuple(replace(u, origin=f"{origin_url}/{u.name}",
                              rules=rules.get(u.name, ()) + u.rules) for u in BUILTIN)
    return Config(
        source="<test>",
        server=ServerConfig(state_dir=state_dir, listen=("127.0.0.1",), http_port=http_port,
                            https_port=https_port, proxy_port=0),
        dns=DnsConfig(port=0, forwarders=("127.0.0.1:9",)),
        cache=replace(CacheConfig(), **cache),
        upstreams=upstreams)


class RunningGateway:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.service = make_service(config, reactor)
        self.service.startService()
        self.port = self.service.http_ports()[0]

    @property
    def store(self):  # type: ignore[no-untyped-def]
        return self.service.store

    def stop(self) -> None:
        pytest_twisted.blockon(self.service.stopService())


@pytest.fixture
def start_gateway(tmp_path):  # type: ignore[no-untyped-def]
    """``start_gateway(origin_url, **cache_settings) -> RunningGateway``; stopped after."""
    running: list[RunningGateway] = []

    def start(origin_url: str, state_dir: Path | None = None, rules: dict | None = None,
              https_port: int = 0, http_port: int = 0, **cache: object) -> RunningGateway:
        gw = RunningGateway(gateway_config(state_dir or tmp_path / "state", origin_url, rules,
                                           https_port, http_port, **cache))
        running.append(gw)
        return gw

    yield start
    for gw in running:
        if gw.service.running:
            gw.stop()


@pytest.fixture(scope="session")
def fixture_tree(tmp_path_factory):  # type: ignore[no-untyped-def]
    """The fixture tree, built once per session (it signs an apt repo, builds wheels…)."""
    from tests.fixtures import build_fixtures
    return build_fixtures(tmp_path_factory.mktemp("fixtures"))


@pytest.fixture
def fixtures(fixture_tree):  # type: ignore[no-untyped-def]
    return fixture_tree


@pytest.fixture
def origin(fixture_tree, tmp_path):  # type: ignore[no-untyped-def]
    """The recording fixture origin on a loopback port, serving a private copy of the tree
    (tests add and change objects in it)."""
    import shutil

    from tests.origin import Origin
    root = tmp_path / "origin"
    shutil.copytree(fixture_tree.root, root, symlinks=True)
    server = Origin(root, reactor)
    server.listen()
    yield server
    pytest_twisted.blockon(server.stop_serving())
