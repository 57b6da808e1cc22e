"""Where forwarded queries go: ``dns.forwarders`` from the config, "system" meaning the
host's ``/etc/resolv.conf`` minus our own listening addresses (else we would forward
to ourselves in a loop)."""

from __future__ import annotations

import ipaddress
from typing import Iterable

from twisted.logger import Logger

log = Logger()

DNS_PORT = 53
Server = tuple[str, int]  # (ip, port)


def nameservers(text: str) -> list[str]:
    """The ``nameserver`` addresses of a resolv.conf, in order; bad lines are skipped."""
    out = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                ipaddress.ip_address(fields[1])
            except ValueError:
                log.warn("resolv.conf: ignoring nameserver {value!r}", value=fields[1])
                continue
            out.append(fields[1])
    return out


def parse_forwarder(value: str) -> Server:
    """``"IP"``, ``"IP:PORT"`` or ``"[IPv6]:PORT"`` → (ip, port); ValueError otherwise."""
    try:
        return str(ipaddress.ip_address(value)), DNS_PORT
    except ValueError:
        pass
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected IP, IP:PORT or [IPv6]:PORT, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"an IPv6 address with a port needs brackets: {value!r}")
    return str(ipaddress.ip_address(host)), int(port)


def forwarders(configured: Iterable[str], resolv_conf_text: str, own: Iterable[str],
               own_port: int) -> list[Server]:
    """The upstream servers, in order, without duplicates and without ourselves.

    ``own`` are our listen addresses and ``own_port`` our DNS port: a server at one of them
    (or at a loopback address while we listen on a wildcard one) would be us."""
    servers: list[Server] = []
    for item in configured:
        if item == "system":
            servers.extend((ip, DNS_PORT) for ip in nameservers(resolv_conf_text))
        else:
            servers.append(parse_forwarder(item))
    is_own = _own_guard(own, own_port)
    kept = []
    for server in dict.fromkeys(servers):
        if is_own(server):
            log.warn("not forwarding to {ip} port {port}: that is this resolver",
                     ip=server[0], port=server[1])
        else:
            kept.append(server)
    return kept


def _own_guard(own: Iterable[str], own_port: int):  # type: ignore[no-untyped-def]
    addresses = {ipaddress.ip_address(a) for a in own}
    wildcard = any(a.is_unspecified for a in addresses)

    def is_own(server: Server) -> bool:
        address = ipaddress.ip_address(server[0])
        if server[1] != own_port:
            return False
        return address in addresses or (wildcard and address.is_loopback)
    return is_own
