"""Who may ask: queries from outside the allowed networks get REFUSED, so the gateway
never becomes an open resolver (the model is Twisted's ``DNSServerFactory.allowQuery``).
Queries from this host's own addresses are always answered, whatever ``dns.allow`` says:
they come from this machine (scripts/start.sh's probe, the operator's ``dig``), and a
build host's primary address is often a public one that no default ``allow`` names."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Callable, Iterable

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MEMO_ENTRIES = 4096  # distinct client addresses remembered before the memo starts over
# Seconds a "this host owns that address" verdict is trusted: addresses come and go (a
# DHCP renewal, a new Docker bridge), a refused stranger must not cost a syscall a query.
OWN_TTL = 60.0
NONLOCAL_BIND = {socket.AF_INET: Path("/proc/sys/net/ipv4/ip_nonlocal_bind"),
                 socket.AF_INET6: Path("/proc/sys/net/ipv6/ip_nonlocal_bind")}


def _address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``ip`` parsed (zone dropped); an IPv4-mapped IPv6 address (a dual-stack socket's
    view of an IPv4 client) as that IPv4 address; None for garbage."""
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def allowed(ip: str, networks: Iterable[IPNetwork]) -> bool:
    """Is ``ip`` in one of ``networks``?"""
    address = _address(ip)
    return address is not None and any(address in network for network in networks)


def host_owns(ip: str) -> bool:
    """Is ``ip`` one of this host's own addresses?  Asked of the kernel: a socket binds
    to a local address only (the test ``dig -b`` relies on).  Rejected alternative: a
    list of interface addresses read at start, stale after the next DHCP renewal or a
    new bridge.  Where the host allows binding to any address (``ip_nonlocal_bind``) the
    answer would be yes for everyone, so it is no: only ``dns.allow`` decides there."""
    address = _address(ip)
    if address is None:
        return False
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    if _nonlocal_bind(family):
        return False
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((str(address), 0))
        except OSError:
            return False
    return True


def _nonlocal_bind(family: int) -> bool:
    try:
        return NONLOCAL_BIND[family].read_text().strip() != "0"
    except OSError:
        return False


class AccessPolicy:
    """``allowed``, or else ``owns`` (``host_owns`` when wired for real; none in pure
    tests), with both answers remembered per address: it runs on every query.  ``clock``
    (``reactor.seconds``) ages the ``owns`` verdicts after OWN_TTL."""

    def __init__(self, networks: Iterable[IPNetwork],
                 owns: Callable[[str], bool] | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.networks = tuple(networks)
        self._owns, self._clock = owns, clock or (lambda: 0.0)
        self._memo: dict[str, bool] = {}
        self._owned: dict[str, tuple[bool, float]] = {}  # ip -> (verdict, until)

    def allows(self, ip: str) -> bool:
        verdict = self._memo.get(ip)
        if verdict is None:
            if len(self._memo) >= MEMO_ENTRIES:
                self._memo.clear()
            verdict = self._memo[ip] = allowed(ip, self.networks)
        return verdict or self._host_owns(ip)

    def _host_owns(self, ip: str) -> bool:
        if self._owns is None:
            return False
        now = self._clock()
        known = self._owned.get(ip)
        if known is not None and now < known[1]:
            return known[0]
        if len(self._owned) >= MEMO_ENTRIES:
            self._owned.clear()
        verdict = self._owns(ip)
        self._owned[ip] = (verdict, now + OWN_TTL)
        return verdict
