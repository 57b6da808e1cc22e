"""The resolver on loopback sockets, in front of a fake upstream that records every query:
what reaches the upstream, what is cached, truncation, failover, EDNS, access control,
malformed input (including a mutation fuzz) and TCP framing."""

import ipaddress
import random
import struct

import pytest
import pytest_twisted
from dnslib import EDNS0, QTYPE, RCODE, DNSRecord, EDNSOption
from twisted.internet import defer, error, reactor
from twisted.logger import globalLogPublisher

from dns.access import host_owns
from dns.answers import MAX_UDP_PAYLOAD
from dns.server import DnsListener
from tests.dns_helpers import (ADVERTISED, FakeUpstream, RunningResolver, UdpClient, dns_config,
                         tcp_connect)

ZONE = {
    "example.com": ["example.com 300 IN A 93.184.216.34",
                    "example.com 300 IN AAAA 2606:2800:220:1::248"],
    "big.example": [f'big.example 300 IN TXT "record {i:02d} {"x" * 40}"' for i in range(14)],
    # A catalogue name with real records: the gateway's fetcher must get these.
    "deb.debian.org": ["deb.debian.org 60 IN A 151.101.2.132",
                       "deb.debian.org 60 IN AAAA 2a04:4e42::644"],
}


@pytest.fixture
def upstream():
    fake = FakeUpstream(reactor, ZONE).start()
    yield fake
    pytest_twisted.blockon(fake.stop())


@pytest.fixture
def start_resolver():
    """``start_resolver(forwarders, timeout=2.0, **dns_config) -> RunningResolver``; stopped
    after.  Tests of silent upstreams shorten the timeout; the others keep it long enough
    that a loaded machine never turns one upstream query into two."""
    running = []

    def start(forwarders, timeout=2.0, owns=host_owns, **dns):
        resolver = RunningResolver(reactor, dns_config(forwarders, **dns), timeout=timeout,
                                   owns=owns)
        running.append(resolver)
        return resolver
    yield start
    for resolver in running:
        pytest_twisted.blockon(resolver.stop())


@pytest.fixture
def logged_failures():
    """Every ``log.failure`` (a bug surfacing) while the test runs."""
    failures = []

    def observe(event):
        if "log_failure" in event:
            failures.append(event["log_failure"])
    globalLogPublisher.addObserver(observe)
    yield failures
    globalLogPublisher.removeObserver(observe)


@pytest.fixture
def client_for():
    clients = []

    def make(resolver):
        client = UdpClient(reactor, resolver.port)
        clients.append(client)
        return client
    yield make
    for client in clients:
        pytest_twisted.blockon(defer.maybeDeferred(client.close))


def q(name, qtype="A", edns=None):
    query = DNSRecord.question(name, qtype)
    if edns is not None:
        query.add_ar(edns)
    return query


def addresses(reply):
    return [str(rr.rdata) for rr in reply.rr if rr.rtype in (QTYPE.A, QTYPE.AAAA)]


def opts(record):
    return [rr for rr in record.ar if rr.rtype == QTYPE.OPT]


@pytest_twisted.inlineCallbacks
def test_redirected_names_are_answered_by_us_and_never_reach_the_upstream(
        upstream, start_resolver, client_for):
    resolver = start_resolver([upstream.address])
    client = client_for(resolver)
    for name in ("deb.debian.org", "DE.archive.ubuntu.com", "registry.npmjs.org",
                 "cachegate.internal"):
        reply = yield client.ask(q(name))
        assert addresses(reply) == [ADVERTISED], name
        assert reply.rr[0].ttl == 30
    for qtype in ("AAAA", "HTTPS", "MX", "TXT"):
        reply = yield client.ask(q("pypi.org", qtype))
        assert reply.header.rcode == RCODE.NOERROR and reply.rr == [], qtype
    assert upstream.queries == []
    assert resolver.stats.redirected == 8 and resolver.stats.forwarded == 0


@pytest_twisted.inlineCallbacks
def test_a_repeated_redirect_is_answered_the_same_way_with_its_own_id(
        upstream, start_resolver, client_for):
    resolver = start_resolver([upstream.address])
    client = client_for(resolver)
    first = yield client.ask(q("pypi.org"))
    again = yield client.ask(q("pypi.org"))  # from the packed-reply memo
    assert again.header.id != first.header.id or again.header.id == first.header.id == 0
    assert addresses(again) == [ADVERTISED] and str(again.q.qname) == "pypi.org."
    assert resolver.stats.redirected == 2


@pytest_twisted.inlineCallbacks
def test_forwarded_answers_are_cached(upstream, start_resolver, client_for):
    resolver = start_resolver([upstream.address])
    client = client_for(resolver)
    first = yield client.ask(q("example.com"))
    assert addresses(first) == ["93.184.216.34"] and first.rr[0].ttl <= 300
    second = yield client.ask(q("EXAMPLE.com"))
    assert addresses(second) == ["93.184.216.34"] and str(second.q.qname) == "EXAMPLE.com."
    assert upstream.names() == ["example.com"]
    assert (resolver.stats.forwarded, resolver.stats.cache_hits) == (1, 1)


@pytest_twisted.inlineCallbacks
def test_negative_answers_are_cached_too(upstream, start_resolver, client_for):
    resolver = start_resolver([upstream.address])
    client = client_for(resolver)
    for _ in range(2):
        reply = yield client.ask(q("missing.example"))
        assert reply.header.rcode == RCODE.NXDOMAIN
        [soa] = reply.auth
        assert soa.rtype == QTYPE.SOA and 0 < soa.ttl <= 60
    for _ in range(2):
        reply = yield client.ask(q("example.com", "MX"))
        assert reply.header.rcode == RCODE.NOERROR and reply.rr == []
    assert upstream.names() == ["missing.example", "example.com"]


@pytest_twisted.inlineCallbacks
def test_upstream_queries_use_fresh_ids_and_source_ports(upstream, start_resolver, client_for):
    resolver = start_resolver([upstream.address])
    client = client_for(resolver)
    query_ids = []
    for name in ("one.example", "two.example", "three.example"):
        query = q(name)
        query.header.id = 1234
        yield client.ask(query)
        query_ids.append(query.header.id)
    upstream_ids = [query.header.id for _, query in upstream.queries]
    assert len(upstream_ids) == 3 and upstream_ids != query_ids
    assert len({port for _, port in upstream.sources}) == 3


@pytest_twisted.inlineCallbacks
def test_concurrent_identical_questions_share_one_upstream_query(
        upstream, start_resolver, client_for):
    resolver = start_resolver([upstream.address])
    clients = [client_for(resolver) for _ in range(5)]
    replies = yield defer.gatherResults([c.ask(q("example.com")) for c in clients])
    assert [addresses(r) for r in replies] == [["93.184.216.34"]] * 5
    assert upstream.names() == ["example.com"]


@pytest_twisted.inlineCallbacks
def test_a_truncated_upstream_answer_is_asked_again_over_tcp(
        upstream, start_resolver, client_for):
    upstream.truncate_udp = True
    resolver = start_resolver([upstream.address])
    client = client_for(resolver)
    reply = yield client.ask(q("big.example", "TXT", edns=EDNS0(udp_len=4096)))
    assert not reply.header.tc and len(reply.rr) == 14
    assert [transport for transport, _ in upstream.queries] == ["udp", "tcp"]


@pytest_twisted.inlineCallbacks
def test_an_answer_too_big_for_the_client_is_truncated_then_served_over_tcp(
        upstream, start_resolver, client_for):
    resolver = start_resolver([upstream.address])
    client = client_for(resolver)
    reply = yield client.ask(q("big.example", "TXT"))  # no EDNS: 512 bytes at most
    assert reply.header.tc and reply.rr == []
    connection = yield tcp_connect(reactor, resolver.port)
    query = q("big.example", "TXT")
    connection.sendString(query.pack())
    full = (yield connection.reply())
    connection.transport.loseConnection()
    assert full.header.id == query.header.id and not full.header.tc and len(full.rr) == 14
    assert upstream.names() == ["big.example"]  # the TCP answer came from the cache


@pytest_twisted.inlineCallbacks
def test_a_silent_upstream_is_skipped_for_the_next_one(start_resolver, client_for):
    silent = FakeUpstream(reactor, ZONE).start()
    silent.silent = True
    working = FakeUpstream(reactor, ZONE).start()
    try:
        resolver = start_resolver([silent.address, working.address], timeout=0.3)
        client = client_for(resolver)
        reply = yield client.ask(q("example.com"))
        assert addresses(reply) == ["93.184.216.34"]
        assert silent.names() == ["example.com"] and working.names() == ["example.com"]
        # The server that answered is asked first from now on.
        yield client.ask(q("two.example"))
        assert silent.names() == ["example.com"] and working.names()[-1] == "two.example"
    finally:
        yield silent.stop()
        yield working.stop()


@pytest_twisted.inlineCallbacks
def test_servfail_when_every_upstream_fails(start_resolver, client_for):
    silent = [FakeUpstream(reactor, ZONE).start() for _ in range(2)]
    for fake in silent:
        fake.silent = True
    try:
        resolver = start_resolver([fake.address for fake in silent], timeout=0.3)
        client = client_for(resolver)
        reply = yield client.ask(q("example.com"))
        assert reply.header.rcode == RCODE.SERVFAIL and reply.rr == []
        assert [fake.names() for fake in silent] == [["example.com"]] * 2
        assert resolver.stats.errors == 1
        # A failure is not cached: the next query asks again.
        yield client.ask(q("example.com"))
        assert sum(len(fake.queries) for fake in silent) == 4
    finally:
        for fake in silent:
            yield fake.stop()


@pytest_twisted.inlineCallbacks
def test_no_upstream_at_all_means_servfail_not_a_hang(start_resolver, client_for):
    resolver = start_resolver([])
    reply = yield client_for(resolver).ask(q("example.com"))
    assert reply.header.rcode == RCODE.SERVFAIL


@pytest_twisted.inlineCallbacks
def test_edns_is_passed_through_to_the_upstream(upstream, start_resolver, client_for):
    resolver = start_resolver([upstream.address])
    client = client_for(resolver)
    option = EDNSOption(65001, b"cachegate-test")
    reply = yield client.ask(q("example.com", edns=EDNS0(udp_len=3000, flags="do",
                                                         opts=[option])))
    [(_, sent)] = upstream.queries
    [opt] = opts(sent)
    assert (opt.edns_len, opt.edns_do, opt.rdata) == (3000, 1, [option])
    [back] = opts(reply)
    assert back.edns_len == MAX_UDP_PAYLOAD and back.edns_do
    plain = yield client.ask(q("example.com", "AAAA"))
    assert opts(upstream.queries[-1][1]) == [] and opts(plain) == []


@pytest_twisted.inlineCallbacks
def test_queries_from_outside_the_allowed_networks_are_refused(
        upstream, start_resolver, client_for):
    # Our loopback client is this host, always answered (test_dns_own_addresses); here
    # the resolver sees it as a stranger would be seen.
    resolver = start_resolver([upstream.address], owns=lambda ip: False,
                              allow=(ipaddress.ip_network("10.0.0.0/8"),))
    client = client_for(resolver)
    for name in ("example.com", "deb.debian.org"):
        reply = yield client.ask(q(name))
        assert reply.header.rcode == RCODE.REFUSED and reply.rr == []
    connection = yield tcp_connect(reactor, resolver.port)
    connection.sendString(q("example.com").pack())
    reply = (yield connection.reply())
    connection.transport.loseConnection()
    assert reply.header.rcode == RCODE.REFUSED
    assert upstream.queries == [] and resolver.stats.refused == 3


def header(qid=0xBEEF, flags=0x0100, qd=1, an=0, ns=0, ar=0):
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


@pytest_twisted.inlineCallbacks
def test_malformed_packets_get_formerr_or_nothing_and_the_server_keeps_answering(
        upstream, start_resolver, client_for, logged_failures):
    resolver = start_resolver([upstream.address])
    client = client_for(resolver)
    cases = [
        (b"", None), (b"\xff" * 5, None),  # no whole header: dropped
        (header(), RCODE.FORMERR),  # one question announced, none there
        (header() + b"\x07example\x03co", RCODE.FORMERR),  # question cut short
        (header() + b"\xc0\x0c\x00\x01\x00\x01", RCODE.FORMERR),  # pointer loop
        (header(qd=0) + b"garbage", RCODE.FORMERR),  # no question
        (header(ar=1) + q("x.example").pack()[12:] + b"\x00\x00\x29", RCODE.FORMERR),
        (header(flags=0x8100), None),  # a response, not a query: dropped
        (header(flags=0x2100) + q("x.example").pack()[12:], RCODE.NOTIMP),  # UPDATE
    ]
    for data, expected in cases:
        client.send(data)
        probe = q("pypi.org")
        client.send(probe.pack())
        first = DNSRecord.parse((yield client.reply()))
        if expected is None:  # nothing came back before the probe's answer
            assert first.header.id == probe.header.id, data
        else:
            assert (first.header.id, first.header.rcode) == (0xBEEF, expected), data
            answered = DNSRecord.parse((yield client.reply()))
            assert addresses(answered) == [ADVERTISED]
    assert upstream.queries == [] and logged_failures == []


@pytest_twisted.inlineCallbacks
def test_an_unknown_edns_version_gets_badvers(upstream, start_resolver, client_for):
    resolver = start_resolver([upstream.address])
    reply = yield client_for(resolver).ask(q("example.com", edns=EDNS0(version=1)))
    [opt] = opts(reply)
    assert (opt.edns_rcode << 4) | reply.header.rcode == 16  # BADVERS
    assert upstream.queries == []


def mutate(packet: bytes, rng: random.Random) -> bytes:
    data = bytearray(packet)
    for _ in range(rng.randint(1, 4)):
        choice = rng.random()
        if choice < 0.5 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif choice < 0.7:
            del data[rng.randrange(len(data) + 1):]
        elif choice < 0.85:
            at = rng.randrange(len(data) + 1)
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        else:
            at = rng.randrange(max(1, len(data)))
            data[at:at + 2] = b"\xc0" + bytes([rng.randrange(256)])  # a stray pointer
    return bytes(data)


@pytest_twisted.inlineCallbacks
def test_fuzz_mutated_packets_never_stop_the_server(upstream, start_resolver, client_for,
                                                    logged_failures):
    """20 000 mutations of valid queries (flipped bytes, cuts, insertions, pointers), in
    batches; after every batch a valid query must still be answered."""
    resolver = start_resolver([upstream.address])
    client = client_for(resolver)
    rng = random.Random(53)
    seeds = [q("deb.debian.org").pack(), q("example.com", "AAAA").pack(),
             q("big.example", "TXT", edns=EDNS0(udp_len=1232, flags="do")).pack(),
             q("x.y.z.archive.ubuntu.com", "HTTPS").pack()]
    batches, batch = 400, 50
    for _ in range(batches):
        for _ in range(batch):
            client.send(mutate(rng.choice(seeds), rng))
        probe = q("pypi.org")
        reply = yield client.ask(probe, timeout=5)
        assert reply is not None and addresses(reply) == [ADVERTISED]
    stats = resolver.stats
    assert stats.queries == batches * (batch + 1)
    # The fuzz reached every path: malformed, redirected, forwarded; and no bug surfaced.
    assert stats.errors > 5000 and stats.redirected > batches + 200 and stats.forwarded > 200
    assert logged_failures == []


@pytest_twisted.inlineCallbacks
def test_several_queries_on_one_tcp_connection(upstream, start_resolver):
    resolver = start_resolver([upstream.address])
    connection = yield tcp_connect(reactor, resolver.port)
    queries = [q("example.com"), q("deb.debian.org"), q("missing.example")]
    for query in queries:
        connection.sendString(query.pack())
    replies = {}
    for _ in queries:
        reply = (yield connection.reply())
        replies[reply.header.id] = reply
    connection.transport.loseConnection()
    assert addresses(replies[queries[0].header.id]) == ["93.184.216.34"]
    assert addresses(replies[queries[1].header.id]) == [ADVERTISED]
    assert replies[queries[2].header.id].header.rcode == RCODE.NXDOMAIN


@pytest_twisted.inlineCallbacks
def test_an_idle_tcp_connection_is_closed(upstream):
    resolver = RunningResolver(reactor, dns_config([upstream.address]))
    listener = DnsListener(reactor, resolver.responder, "127.0.0.1", 0, idle_timeout=0.2)
    listener.startService()
    try:
        connection = yield tcp_connect(reactor, listener.port)
        connection.sendString(q("pypi.org").pack())
        assert addresses((yield connection.reply())) == [ADVERTISED]
        yield connection.closed.addTimeout(2, reactor)  # closed by the server
    finally:
        yield listener.stopService()
        yield resolver.stop()


@pytest_twisted.inlineCallbacks
def test_ipv6_listen_address_and_ipv6_upstream_over_udp_and_tcp():
    upstream = FakeUpstream(reactor, ZONE, host="::1").start()
    upstream.truncate_udp = True
    resolver = RunningResolver(reactor, dns_config([upstream.address]), host="::1")
    client = UdpClient(reactor, resolver.port, host="::1")
    try:
        reply = yield client.ask(q("example.com"))
        assert addresses(reply) == ["93.184.216.34"]
        assert [transport for transport, _ in upstream.queries] == ["udp", "tcp"]
        reply = yield client.ask(q("deb.debian.org"))
        assert addresses(reply) == [ADVERTISED]
    finally:
        yield client.close()
        yield resolver.stop()
        yield upstream.stop()


@pytest_twisted.inlineCallbacks
def test_the_fetcher_resolves_catalogue_names_through_the_forwarder(upstream, start_resolver):
    resolver = start_resolver([upstream.address])
    found = yield resolver.forwarder.resolve_addresses("deb.debian.org")
    assert found == ["151.101.2.132", "2a04:4e42::644"]  # the real ones, not ADVERTISED
    again = yield resolver.forwarder.resolve_addresses("deb.debian.org")
    assert again == found and len(upstream.queries) == 2  # A and AAAA, then cached
    assert (yield resolver.forwarder.resolve_addresses("192.0.2.7")) == ["192.0.2.7"]
    with pytest.raises(error.DNSLookupError):
        yield resolver.forwarder.resolve_addresses("missing.example")
