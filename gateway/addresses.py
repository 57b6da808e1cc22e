"""The addresses we listen on and the loop guard's idea of "ourselves"."""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct

LOOPBACK = "127.0.0.1"
DOCKER_BRIDGE = "docker0"
_SIOCGIFADDR = 0x8915  # linux/sockios.h: get an interface's IPv4 address


def interface_ipv4(name: str) -> str | None:
    """The IPv4 address of network interface ``name``, or None if it has none."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, struct.pack("256s", name[:15].encode()))
        except OSError:
            return None
    return socket.inet_ntoa(packed[20:24])


def listen_addresses(listen: tuple[str, ...], bridge: str = DOCKER_BRIDGE) -> list[str]:
    """Concrete addresses for ``server.listen``: "auto" is the Docker bridge address (when
    there is one) and 127.0.0.1."""
    out: list[str] = []
    for item in listen:
        if item == "auto":
            found = interface_ipv4(bridge)
            out.extend(a for a in (found, LOOPBACK) if a)
        else:
            out.append(item)
    return list(dict.fromkeys(out))


def own_address_guard(addresses: list[str], ports: list[int]):  # type: ignore[no-untyped-def]
    """A predicate ``(ip, port) -> bool``: is that one of our own listening sockets?

    A wildcard listen address stands for every address of this host; we approximate that
    by loopback plus every explicit address, which covers the loops that happen in
    practice (our DNS answering a repository name with our own address)."""
    wildcard = any(ipaddress.ip_address(a).is_unspecified for a in addresses)
    explicit = {ipaddress.ip_address(a) for a in addresses}

    def is_own(ip: str, port: int) -> bool:
        if port not in ports:
            return False
        address = ipaddress.ip_address(ip)
        return address in explicit or (wildcard and address.is_loopback)
    return is_own


def forwarding_guard(is_own):  # type: ignore[no-untyped-def]
    """``is_own`` widened for requests relayed to hosts outside the catalogue: also every
    loopback (and unspecified) address, whatever the port.  A container must not reach,
    through us, a service bound to the host's 127.0.0.1 (the admin API among them)."""
    def refused(ip: str, port: int) -> bool:
        address = ipaddress.ip_address(ip)
        return address.is_loopback or address.is_unspecified or is_own(ip, port)
    return refused


def advertised_ipv4(setting: str, addresses: list[str]) -> str:
    """The A answer for redirected names: the setting, or for "auto" the first non-loopback
    IPv4 we listen on (the Docker bridge address by default), else 127.0.0.1."""
    if setting != "auto":
        return setting
    for address in addresses:
        ip = ipaddress.ip_address(address)
        if ip.version == 4 and not ip.is_loopback and not ip.is_unspecified:
            return address
    return interface_ipv4(DOCKER_BRIDGE) or LOOPBACK
