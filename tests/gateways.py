"""The gateway in the test process: its config pointed at the fixture origin, running on
loopback ports."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest_twisted
from twisted.internet import reactor

from gateway.ecosystems.catalogue import BUILTIN
from gateway.config import CacheConfig, Config, DnsConfig, ImagesConfig, ServerConfig
from gateway.service import make_service


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
                            https_port=https_port, proxy_port=0, admin=("127.0.0.1", 0)),
        dns=DnsConfig(port=0, forwarders=("127.0.0.1:9",)),
        cache=replace(CacheConfig(), **cache),
        images=ImagesConfig(listen=None),  # the registry mirror: tests/registry_gateways.py
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


class Started(list):
    """The gateways a fixture started: ``add`` each, ``stop_all`` at its teardown."""

    def add(self, gw: RunningGateway) -> RunningGateway:
        self.append(gw)
        return gw

    def stop_all(self) -> None:
        for gw in self:
            if gw.service.running:
                gw.stop()
