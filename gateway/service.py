"""Wiring: one ``make_service`` builds every listener of the process as a MultiService."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from functools import partial
from typing import Callable

from twisted.application import internet, service
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from dns.responder import ReplyMemo
from dns.rules import RedirectRules
from dns.service import dns_services
from gateway.ops.activity import Activity
from gateway.addresses import (advertised_ipv4, forwarding_guard, listen_addresses,
                               own_address_guard)
from gateway.ops.admin import AdminService
from gateway.cache.rules import Rule, Upstream, find_upstream
from gateway.config import Config
from gateway.cache.fetcher import Fetcher
from gateway.cache.flight import Flights
from gateway.front.cluster import ClusterResource, ClusterSite, read_token
from gateway.front.handler import Gateway, GatewayResource, GatewaySite
from gateway.front.accesslog import AccessLog
from gateway.ops.progress import watch_progress
from gateway.front.passthrough import PassthroughFactory
from gateway.front.registry import MirrorResource, MirrorSite, RegistryClient, RegistryMirror
from gateway.front.proxy import ProxyFactory, proxy_context
from gateway.cache.stats import Stats
from gateway.cache.store import Store
from gateway.cache.s3 import S3Tier
from gateway.cache.tiers import Tiers
from gateway.ops.upstream_edits import with_saved_edits
from tls.ca import permitted_domains
from tls.context import SNIContexts
from tls.leaf import LeafCache
from tls.store import load_or_create_ca

log = Logger()

# Idle keep-alive connections from clients are closed after this long; while a request
# is being answered the timer is off, so a slow download is never cut.
CLIENT_IDLE_TIMEOUT = 60
# How often hits' access times reach the store (LRU order): losing a few seconds of them
# in a crash only makes eviction slightly less exact.
ACCESS_FLUSH_SECONDS = 5


class GatewayService(service.MultiService):
    """The process: its listeners as children, and the shared state they serve from."""

    def __init__(self, config: Config, reactor,  # type: ignore[no-untyped-def]
                 access_log: AccessLog | None = None, worker: str = "") -> None:
        super().__init__()
        # Client ports bound elsewhere (worker processes: ``gateway/workers.py``), by kind.
        self.external_ports: dict[str, list[int]] | None = None
        self.after_upstreams: list[Callable[[], None]] = []  # told of run-time edits
        self.config = config
        self.addresses = listen_addresses(config.server.listen)
        self.advertise_ipv4 = advertised_ipv4(config.dns.advertise_ipv4, self.addresses)
        self.ca = load_or_create_ca(
            config.server.state_dir, permitted_domains(config.upstreams, config.dns.local_names),
            config.tls.key_type, config.tls.name_constraints, reactor.seconds())
        self.tls = SNIContexts(LeafCache(self.ca, reactor, config.tls.key_type), self.has_name)
        self.dns_listeners, self.forwarder, self.dns_stats = dns_services(
            config, reactor, self.addresses, self.advertise_ipv4)
        self.store = Store(config.server.state_dir / "cache", config.cache.size_limit,
                           reactor.seconds, worker)
        flusher = internet.TimerService(ACCESS_FLUSH_SECONDS, self.store.flush_access)
        flusher.clock = reactor
        flusher.setServiceParent(self)
        self.fetcher = Fetcher(reactor, resolve=self.forwarder.resolve_addresses,
                               is_own=self.own_socket,
                               connect_timeout=config.cache.connect_timeout,
                               idle_timeout=config.cache.idle_timeout)
        # Proxy clients' plain-HTTP requests for other hosts, as CONNECT tunnels: a client
        # not on this host never reaches its loopback (see foreign_fetcher).
        self.remote_fetcher = Fetcher(reactor, resolve=self.forwarder.resolve_addresses,
                                      is_own=forwarding_guard(self.own_socket),
                                      connect_timeout=config.cache.connect_timeout,
                                      idle_timeout=config.cache.idle_timeout)
        self.stats = Stats()
        flights = Flights(reactor, self.store, self.fetcher, config.cache.negative_ttl,
                          partial(watch_progress, reactor))
        flights.integrity.on_drift = config.cache.on_drift
        self.tiers = flights.tiers = cluster_tiers(config, reactor, self.fetcher)
        self.s3 = s3_tier(config, reactor, self.store, self.rule_for)
        if self.s3 is not None:  # read through after the parents, write behind every commit
            if self.tiers is None:
                self.tiers = flights.tiers = Tiers(reactor, self.fetcher, [], "")
            self.tiers.before_upstream.append(self.s3.lookup)
            self.s3.writes_to = self.tiers.s3_of
            flights.on_commit = self.s3.committed
        self.gateway = Gateway(reactor, config, self.store, flights, self.stats,
                               self.ca.cert_pem(), access_log,
                               self.foreign_fetcher if config.server.proxy_port else None)
        self.site = GatewaySite(GatewayResource(self.gateway), timeout=CLIENT_IDLE_TIMEOUT)
        self.cluster_site: ClusterSite | None = None
        if config.cluster.listen is not None:  # a parent: children's misses come here
            self.cluster_site = ClusterSite(
                ClusterResource(self.gateway, read_token(config.cluster.token_file),
                                instance_name(config), self.s3.identity if self.s3 else ""),
                timeout=CLIENT_IDLE_TIMEOUT)
        self.mirror: RegistryMirror | None = None
        if config.images.listen is not None:
            self.mirror = RegistryMirror(reactor, self.store,
                                         RegistryClient(reactor, self.fetcher),
                                         config.images.registries, config.images.tag_ttl,
                                         config.cache.offline, self.stats, access_log)
            self.mirror.sessions = self.gateway.sessions  # images in build records

    def own_socket(self, ip: str, port: int) -> bool:
        """Whether ``ip:port`` is one of our listening sockets (looked up on each call:
        ports configured as 0 are only known once bound)."""
        ports = [p for kind in ("http", "https", "proxy", "dns", "images")
                 for p in self.ports(kind)]
        ports.append(self.config.server.admin[1])
        return own_address_guard(self.addresses, ports)(ip, port)

    def foreign_fetcher(self, client: str) -> Fetcher:
        """What relays ``client``'s request for a host outside the catalogue."""
        return self.fetcher if ipaddress.ip_address(client).is_loopback else self.remote_fetcher

    def rule_for(self, url: str) -> Rule | None:
        """The catalogue's rule for a stored object's ``host/path`` (None: not ours)."""
        host, _, path = url.partition("/")
        upstream = find_upstream(self.config.upstreams, host)
        return upstream.rule_for("/" + path) if upstream is not None else None

    def startService(self) -> None:  # noqa: N802
        super().startService()
        if self.s3 is not None:
            self.s3.start()

    def tiers_state(self) -> dict:
        """The shared tiers' state: each parent's breaker and bytes, the S3 store's."""
        state: dict = {"parents": [], "bytes": {}, "fetches": {}}
        if self.tiers is not None:
            state.update(self.tiers.describe())
        state["s3"] = self.s3.describe() if self.s3 is not None else None
        if self.cluster_site is not None:
            state["children_refused"] = self.cluster_site.resource.refused
        return state

    def has_name(self, name: str) -> bool:
        """Whether we serve ``name`` (a certificate is minted for it, DNS redirects it)."""
        return name in self.config.dns.local_names or \
            find_upstream(self.config.upstreams, name) is not None

    def replace_upstreams(self, upstreams: tuple[Upstream, ...]) -> None:
        """Serve this catalogue from now on (run-time edits through the admin API).

        Everything that routes by name reads it: the request handler, ``has_name`` (TLS
        certificates, the proxy) and the DNS redirects, whose reply memo is emptied since
        it keeps redirected answers for good.  Requests already routed finish with the
        entry they started with."""
        self.config = replace(self.config, upstreams=upstreams)
        self.gateway.config = self.config
        rules = RedirectRules.from_catalogue(upstreams, self.config.dns.local_names)
        for listener in self.dns_listeners:
            listener.responder.rules = rules
            listener.responder.memo = ReplyMemo()
        for hook in self.after_upstreams:
            hook()

    def ports(self, kind: str) -> list[int]:
        """The bound ports of one kind of listener ("http", "https", "proxy", "dns",
        "admin"): useful when configured as 0 in tests."""
        if kind == "dns":
            return [listener.port for listener in self.dns_listeners]
        if self.external_ports is not None and kind != "admin":
            return self.external_ports.get(kind, [])
        if kind == "admin":
            return [child.port for child in self if isinstance(child, AdminService)]
        if kind == "images":
            return [child.port for child in self if isinstance(child, MirrorListener)
                    and child.port]
        if kind == "proxy":
            return [child._port.getHost().port for child in self
                    if type(child) is internet.TCPServer
                    and isinstance(child.args[1], ProxyFactory)]
        site = getattr(self, "passthrough", None) if kind == "https" else \
            self.cluster_site if kind == "cluster" else self.site
        return [child._port.getHost().port for child in self
                if type(child) is internet.TCPServer and child.args[1] is site]

    def http_ports(self) -> list[int]:
        return self.ports("http")

    def stopService(self):  # type: ignore[no-untyped-def]  # noqa: N802
        d = super().stopService()
        d.addBoth(lambda _: self.fetcher.close())
        d.addBoth(lambda _: self.remote_fetcher.close())
        if self.tiers is not None:
            d.addBoth(lambda _: self.tiers.close())
        if self.s3 is not None:
            d.addBoth(lambda _: self.s3.stop())
        d.addBoth(lambda _: self.store.close())
        return d


def make_service(config: Config, reactor,  # type: ignore[no-untyped-def]
                 access_log: AccessLog | None = None, clients: bool = True) -> GatewayService:
    """Every listener of the gateway, ready for ``startService``: DNS (UDP+TCP), HTTP,
    HTTPS and the explicit proxy (``gateway/proxy.py``) on each listen address, and the
    admin API (``gateway/admin.py``) on ``server.admin``.  A port configured as 0 is off
    (HTTP, DNS and admin: tests may pass 0 to mean "any free port").  Without ``clients``
    the HTTP(S), proxy and mirror ports are left to worker processes (``workers.py``)."""
    static_upstreams = config.upstreams
    config = with_saved_edits(config)  # run-time edits of the catalogue (admin API)
    activity = Activity(access_log or AccessLog(), reactor.seconds)  # for the status page
    top = GatewayService(config, reactor, activity)  # type: ignore[arg-type]
    factories = client_factories(top, reactor)
    if clients:
        for kind, address, port in client_ports(config, top.addresses):
            if kind == "images":
                MirrorListener(factories[kind], (address, port), reactor).setServiceParent(top)
            else:
                internet.TCPServer(port, factories[kind], interface=address,
                                   reactor=reactor).setServiceParent(top)
    for listener in top.dns_listeners:
        listener.setServiceParent(top)
    AdminService(top, static_upstreams, activity, reactor).setServiceParent(top)
    return top


def client_factories(top: GatewayService, reactor) -> dict:  # type: ignore[no-untyped-def]
    """What serves each kind of client port (``client_ports``)."""
    context = proxy_context(top, reactor)
    # HTTPS: the ClientHello is read first, so a client rejecting our CA gets a tunnel.
    top.passthrough = PassthroughFactory(top, reactor, context.is_own)
    factories = {"http": top.site, "https": top.passthrough}
    if top.config.server.proxy_port:
        factories["proxy"] = ProxyFactory(reactor, context)
    if top.mirror is not None:
        factories["images"] = MirrorSite(MirrorResource(top.mirror), timeout=CLIENT_IDLE_TIMEOUT)
    if top.cluster_site is not None:
        factories["cluster"] = top.cluster_site
    return factories


def client_ports(config: Config, addresses: list[str]) -> list[tuple[str, str, int]]:
    """(kind, address, port) of every port clients connect to."""
    server = config.server
    ports = []
    for address in addresses:
        ports.append(("http", address, server.http_port))
        if server.https_port:
            ports.append(("https", address, server.https_port))
        if server.proxy_port:
            ports.append(("proxy", address, server.proxy_port))
    if config.images.listen is not None:
        ports.append(("images", *config.images.listen))
    if config.cluster.listen is not None:
        ports.append(("cluster", *config.cluster.listen))
    return ports


def s3_tier(config: Config, reactor, store: Store,  # type: ignore[no-untyped-def]
            rule_for) -> S3Tier | None:
    """The shared object store (``[store.s3]``), when one is configured."""
    s3 = config.s3
    if not s3.endpoint:
        return None
    return S3Tier(reactor, store, s3.endpoint, s3.bucket, s3.prefix, s3.region,
                  s3.credentials_file, s3.queue, s3.timeout, s3.breaker_seconds, rule_for)


def cluster_tiers(config: Config, reactor, upstream: Fetcher) -> Tiers | None:  # type: ignore[no-untyped-def]
    """The parents a miss goes to before the upstream (``[cluster] parents``)."""
    cluster = config.cluster
    if not cluster.parents:
        return None
    return Tiers.from_urls(reactor, upstream, cluster.parents, read_token(cluster.token_file),
                           cluster.connect_timeout, config.cache.idle_timeout,
                           cluster.breaker_seconds, instance_name(config))


def instance_name(config: Config) -> str:
    """This gateway's name among the fleet, the same in each of its worker processes: its
    host and state directory (``tiers.INSTANCE_HEADER``)."""
    import hashlib
    import socket
    try:
        machine = open("/etc/machine-id").read().strip()
    except OSError:
        machine = ""
    seed = f"{socket.gethostname()}\n{machine}\n{config.server.state_dir.resolve()}"
    return hashlib.sha256(seed.encode()).hexdigest()[:16]


class MirrorListener(service.Service):
    """The registry mirror's port (``[images] listen``).  A port already taken is an
    error in the log, not a failed start: the gateway's other listeners are what builds
    need first, and dockerd goes to the registry itself while the mirror is away
    (``cachegate doctor`` reports it)."""

    def __init__(self, site: MirrorSite, address: tuple[str, int], reactor) -> None:  # type: ignore[no-untyped-def]
        self.site = site
        self.address = address
        self.reactor = reactor
        self.listening = None
        self.port = 0

    def startService(self) -> None:  # noqa: N802
        super().startService()
        host, port = self.address
        try:
            self.listening = self.reactor.listenTCP(port, self.site, interface=host)
        except CannotListenError as e:
            log.error("registry mirror not started: cannot listen on {host}:{port}: {error}",
                      host=host, port=port, error=e.socketError)
            return
        self.port = self.listening.getHost().port

    def stopService(self):  # type: ignore[no-untyped-def]  # noqa: N802
        super().stopService()
        listening, self.listening, self.port = self.listening, None, 0
        return listening.stopListening() if listening is not None else None
