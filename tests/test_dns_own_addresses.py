"""Queries from this host's own addresses are answered whatever ``dns.allow`` says
(issue 13: a build host whose primary address is a public one got REFUSED for
scripts/start.sh's probe); strangers outside ``dns.allow`` are still REFUSED.

The real cases run on real sockets: the resolver on loopback asked from loopback and from
the host's primary address, and (root only) a network namespace whose address is not
the host's asking the resolver on the host side."""

from __future__ import annotations

import ipaddress
import socket

import pytest
import pytest_twisted
from dnslib import QTYPE, RCODE, DNSRecord
from twisted.internet import reactor, threads
from twisted.internet.task import Clock

from dns.access import OWN_TTL, AccessPolicy, host_owns
from tests import netns
from tests.clients import need, run
from tests.dns_helpers import ADVERTISED, RunningResolver, dns_config, need_dig

TEN = (ipaddress.ip_network("10.0.0.0/8"),)
ELSEWHERE = (ipaddress.ip_network("192.168.0.0/16"),)  # none of this host's addresses


def primary_address() -> str | None:
    """The source address of this host's default route (connecting a UDP socket sends
    nothing), or None without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("203.0.113.1", 53))
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if ipaddress.ip_address(address).is_loopback else address


def ask(source: str, server: str, port: int, name: str = "deb.debian.org") -> DNSRecord:
    """One UDP query from ``source`` (bound, as ``dig -b`` does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.bind((source, 0))
        s.sendto(DNSRecord.question(name, "A").pack(), (server, port))
        return DNSRecord.parse(s.recv(4096))


# -- the policy, pure ---------------------------------------------------------------------

def test_owned_addresses_are_allowed_outside_the_networks_and_asked_once_per_ttl():
    asked: list[str] = []
    owned = {"192.0.2.2"}

    def owns(ip: str) -> bool:
        asked.append(ip)
        return ip in owned
    clock = Clock()
    policy = AccessPolicy(TEN, owns, clock.seconds)
    assert policy.allows("10.1.2.3") and asked == []  # in the networks: never asked
    assert policy.allows("192.0.2.2") and not policy.allows("198.51.100.7")
    assert policy.allows("192.0.2.2") and not policy.allows("198.51.100.7")
    assert asked == ["192.0.2.2", "198.51.100.7"]
    owned.clear()  # the host gave the address up
    clock.advance(OWN_TTL)
    assert not policy.allows("192.0.2.2") and asked[-1] == "192.0.2.2"


def test_without_an_owns_check_only_the_networks_count():
    assert not AccessPolicy(TEN).allows("127.0.0.1")


def test_host_owns_asks_the_kernel():
    assert host_owns("127.0.0.1") and host_owns("127.0.0.53")  # all of 127/8 is local
    assert host_owns("::ffff:127.0.0.1")
    assert not host_owns("198.51.100.7") and not host_owns("garbage")
    primary = primary_address()
    if primary:
        assert host_owns(primary)


# -- real sockets ---------------------------------------------------------------------------

@pytest.fixture
def resolver_on():
    running: list[RunningResolver] = []

    def start(host: str, allow) -> RunningResolver:  # type: ignore[no-untyped-def]
        running.append(RunningResolver(reactor, dns_config(["127.0.0.1:9"], allow=allow),
                                       host=host))
        return running[-1]
    yield start
    for resolver in running:
        pytest_twisted.blockon(resolver.stop())


@pytest_twisted.inlineCallbacks
def test_loopback_is_answered_when_dns_allow_leaves_it_out(resolver_on):
    resolver = resolver_on("127.0.0.1", TEN)
    for source in ("127.0.0.1", "127.0.0.2"):
        reply = yield threads.deferToThread(ask, source, "127.0.0.1", resolver.port)
        assert reply.header.rcode == RCODE.NOERROR, (source, reply)
        assert [str(rr.rdata) for rr in reply.rr] == [ADVERTISED]
    assert resolver.stats.refused == 0


@pytest_twisted.inlineCallbacks
def test_the_hosts_primary_address_is_answered_outside_dns_allow(resolver_on):
    """Issue 13's host: its primary address (192.0.2.2 there) in no allowed network."""
    primary = primary_address()
    if primary is None:
        pytest.skip("this host has no default route: no primary address to ask from")
    resolver = resolver_on(primary, ELSEWHERE if not primary.startswith("192.168.") else TEN)
    reply = yield threads.deferToThread(ask, primary, primary, resolver.port)
    assert reply.header.rcode == RCODE.NOERROR and reply.rr, reply
    assert [QTYPE[rr.rtype] for rr in reply.rr] == ["A"]


@pytest_twisted.inlineCallbacks
def test_a_stranger_outside_dns_allow_is_still_refused(resolver_on):
    """A network namespace is another machine as far as addresses go: its 10.201.N.2 is
    not the host's.  The host side of the same link (10.201.N.1) is."""
    need(netns.unavailable() is None, f"a stranger's address: {netns.unavailable()}")
    dig = need_dig()
    with netns.containers(1) as (container,):
        resolver = resolver_on(container.host_ip, ELSEWHERE)
        query = [dig, "+tries=1", "+time=3", "-p", str(resolver.port), f"@{container.host_ip}",
                 "deb.debian.org", "A"]
        stranger = yield run(container.argv(query))
        assert "status: REFUSED" in stranger.stdout, stranger.stdout
        host = yield run([*query[:1], "-b", container.host_ip, *query[1:]])
        assert "status: NOERROR" in host.stdout and ADVERTISED in host.stdout, host.stdout
    assert resolver.stats.refused == 1
