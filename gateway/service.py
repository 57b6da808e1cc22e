"""Wiring: one ``make_service`` builds every listener of the process as a MultiService."""

from __future__ import annotations

from twisted.application import internet, service
from twisted.logger import Logger

from gateway.addresses import listen_addresses, own_address_guard
from gateway.config import Config
from gateway.fetcher import Fetcher
from gateway.flight import Flights
from gateway.handler import Gateway, GatewayResource, GatewaySite
from gateway.stats import Stats
from gateway.store import Store

log = Logger()

# Idle keep-alive connections from clients are closed after this long; while a request
# is being answered the timer is off, so a slow download is never cut.
CLIENT_IDLE_TIMEOUT = 60


class GatewayService(service.MultiService):
    """The process: its listeners as children, and the shared state they serve from."""

    def __init__(self, config: Config, reactor) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.config = config
        self.addresses = listen_addresses(config.server.listen)
        ports = [p for p in (config.server.http_port, config.server.https_port,
                             config.server.proxy_port) if p]
        self.store = Store(config.server.state_dir / "cache", config.cache.size_limit)
        self.fetcher = Fetcher(reactor, is_own=own_address_guard(self.addresses, ports),
                               connect_timeout=config.cache.connect_timeout,
                               idle_timeout=config.cache.idle_timeout)
        self.stats = Stats()
        flights = Flights(reactor, self.store, self.fetcher, config.cache.negative_ttl)
        self.gateway = Gateway(reactor, config, self.store, flights, self.stats)
        self.site = GatewaySite(GatewayResource(self.gateway), timeout=CLIENT_IDLE_TIMEOUT)

    def http_ports(self) -> list[int]:
        """The bound HTTP ports (useful when configured as 0)."""
        return [child._port.getHost().port for child in self
                if isinstance(child, internet.TCPServer) and child.args[1] is self.site]

    def stopService(self):  # type: ignore[no-untyped-def]  # noqa: N802
        d = super().stopService()
        d.addBoth(lambda _: self.fetcher.close())
        d.addBoth(lambda _: self.store.close())
        return d


def make_service(config: Config, reactor) -> GatewayService:  # type: ignore[no-untyped-def]
    """Every listener of the gateway, ready for ``startService``."""
    top = GatewayService(config, reactor)
    for address in top.addresses:
        http_server = internet.TCPServer(config.server.http_port, top.site, interface=address,
                                         reactor=reactor)
        http_server.setServiceParent(top)
    return top
