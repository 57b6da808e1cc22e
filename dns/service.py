"""Wiring: the resolver's listeners and shared state built from the config, in one call."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Callable

from twisted.application.service import IService
from twisted.logger import Logger

from dns.access import AccessPolicy, host_owns
from dns.answers import RedirectTarget
from dns.cache import AnswerCache
from dns.forwarder import DEFAULT_TIMEOUT, Forwarder
from dns.resolvconf import forwarders
from dns.responder import Responder
from dns.rules import RedirectRules
from dns.server import DnsListener
from dns.stats import DnsStats
from gateway.config import Config

log = Logger()

RESOLV_CONF = Path("/etc/resolv.conf")


def dns_services(config: Config, reactor: Any, addresses: list[str], advertise_ipv4: str,
                 resolv_conf: Path = RESOLV_CONF, timeout: float = DEFAULT_TIMEOUT,
                 owns: Callable[[str], bool] = host_owns
                 ) -> tuple[list[IService], Forwarder, DnsStats]:
    """The DNS half of the process.

    ``addresses`` are the concrete listen addresses (``server.listen`` with "auto"
    resolved); ``advertise_ipv4`` is the A answer for redirected names (``dns.advertise_ipv4``
    with "auto" resolved).  With ``dns.advertise_ipv4 = "auto"`` a listener bound to a
    specific IPv4 address answers with its own address instead (so each network gets an
    address it can reach), and ``advertise_ipv4`` serves wildcard and IPv6 listeners.
    Returns:

    - one ``DnsListener`` service (UDP + TCP on ``config.dns.port``) per address, to add to
      the process's MultiService (each has ``.port``: the bound number, useful with port 0);
    - the ``Forwarder``: pass ``forwarder.resolve_addresses`` to the gateway's fetcher as
      its resolver, so upstream names never go through our own redirects;
    - the ``DnsStats`` counters, for the admin API.

    Forwarders are ``config.dns.forwarders``, "system" read from ``resolv_conf``, minus
    ``addresses`` on our port.  Queries from ``dns.allow`` and from addresses this host
    ``owns`` are answered, others REFUSED.  Nothing is bound until the services start.
    """
    dns = config.dns
    system = _read(resolv_conf) if "system" in dns.forwarders else ""
    servers = forwarders(dns.forwarders, system, addresses, dns.port)
    if not servers:
        log.error("no upstream DNS servers: every name outside the catalogue gets SERVFAIL")
    cache = AnswerCache(reactor.seconds)
    forwarder = Forwarder(reactor, servers, cache, timeout)
    stats = DnsStats()
    rules = RedirectRules.from_catalogue(config.upstreams, dns.local_names)
    access = AccessPolicy(dns.allow, owns, reactor.seconds)
    listeners: list[IService] = []
    for address in addresses:
        ipv4 = _advertised(dns.advertise_ipv4, address, advertise_ipv4)
        target = RedirectTarget(ipv4, dns.advertise_ipv6, dns.ttl)
        responder = Responder(reactor.seconds, rules, target, access, cache, forwarder, stats)
        listeners.append(DnsListener(reactor, responder, address, dns.port))
    return listeners, forwarder, stats


def _advertised(setting: str, address: str, fallback: str) -> str:
    """For "auto", a listener on a specific IPv4 address answers with that address (the
    one its clients reached us at); a wildcard or IPv6 listener answers ``fallback``."""
    if setting == "auto":
        ip = ipaddress.ip_address(address)
        if ip.version == 4 and not ip.is_unspecified:
            return address
    return fallback


def _read(path: Path) -> str:
    """The resolv.conf text; missing or unreadable counts as empty (logged)."""
    try:
        return path.read_text()
    except OSError as e:
        log.warn("cannot read {path}: {why}", path=str(path), why=e.strerror)
        return ""
