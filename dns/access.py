"""Who may ask: queries from outside the allowed networks get REFUSED, so the gateway
never becomes an open resolver (the model is Twisted's ``DNSServerFactory.allowQuery``)."""

from __future__ import annotations

import ipaddress
from typing import Iterable

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MEMO_ENTRIES = 4096  # distinct client addresses remembered before the memo starts over


def allowed(ip: str, networks: Iterable[IPNetwork]) -> bool:
    """Is ``ip`` in one of ``networks``?  An IPv4-mapped IPv6 address (a dual-stack
    socket's view of an IPv4 client) counts as that IPv4 address."""
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


class AccessPolicy:
    """``allowed`` with its answers remembered per address (it runs on every query)."""

    def __init__(self, networks: Iterable[IPNetwork]) -> None:
        self.networks = tuple(networks)
        self._memo: dict[str, bool] = {}

    def allows(self, ip: str) -> bool:
        verdict = self._memo.get(ip)
        if verdict is None:
            if len(self._memo) >= MEMO_ENTRIES:
                self._memo.clear()
            verdict = self._memo[ip] = allowed(ip, self.networks)
        return verdict
