"""``Responder`` and the protocols with Twisted's fakes: time (``Clock``) for the memo of
packed replies and TTLs, and a responder that raises, for the last-resort guards."""

import ipaddress

from dnslib import QTYPE, RCODE, RR, DNSRecord
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher

from dns.access import AccessPolicy
from dns.answers import RedirectTarget
from dns.cache import AnswerCache
from dns.forwarder import UpstreamError
from dns.responder import Responder
from dns.rules import RedirectRules
from dns.server import DnsDatagramProtocol, DnsStreamProtocol
from dns.stats import DnsStats


class FakeForwarder:
    """Answers from a zone dict, storing into the cache like the real one; counts asks."""

    def __init__(self, cache, zone):
        self.cache, self.zone, self.asked = cache, zone, []

    def query(self, key, opt=None, cd=False):
        self.asked.append(key)
        name = b".".join(key[0]).decode()
        if name not in self.zone:
            return defer.fail(UpstreamError("no upstream"))
        reply = DNSRecord.question(name).reply()
        reply.add_answer(*RR.fromZone(self.zone[name]))
        self.cache.put(key, reply)
        return defer.succeed(reply)


def responder(clock, allow=("127.0.0.0/8",)):
    cache = AnswerCache(clock.seconds)
    forwarder = FakeForwarder(cache, {"example.com": "example.com 300 IN A 192.0.2.1"})
    return Responder(clock.seconds, RedirectRules(["deb.debian.org"]),
                     RedirectTarget("10.9.8.7"), AccessPolicy(
                         [ipaddress.ip_network(n) for n in allow]), cache, forwarder)


def wire(name):
    return bytes(DNSRecord.question(name).pack())


def settle(result):
    """The reply bytes whether ``answer`` returned them or a fired Deferred of them."""
    if isinstance(result, defer.Deferred):
        out = []
        result.addCallback(out.append)
        return DNSRecord.parse(out[0])
    return DNSRecord.parse(result)


def test_repeated_queries_are_answered_from_the_memo_until_the_ttl_ticks():
    clock = Clock()
    r = responder(clock)
    query = DNSRecord.question("example.com")
    data = bytes(query.pack())
    assert settle(r.answer(data, "127.0.0.1", udp=True)).rr[0].ttl == 300
    clock.advance(10.2)
    first = settle(r.answer(data, "127.0.0.1", udp=True))
    second = settle(r.answer(data, "127.0.0.1", udp=True))  # the memo's bytes
    assert first.rr[0].ttl == second.rr[0].ttl == 290
    clock.advance(0.8)  # 11.0 s after the answer: one more second gone
    assert settle(r.answer(data, "127.0.0.1", udp=True)).rr[0].ttl == 289
    assert (r.stats.forwarded, r.stats.cache_hits) == (1, 3)
    assert r.forwarder.asked == [((b"example", b"com"), QTYPE.A, 1)]


def test_a_memo_reply_carries_the_new_queries_id():
    r = responder(Clock())
    query = DNSRecord.question("deb.debian.org")
    settle(r.answer(bytes(query.pack()), "127.0.0.1", udp=True))
    query.header.id = (query.header.id + 1) % 65536
    reply = settle(r.answer(bytes(query.pack()), "127.0.0.1", udp=True))
    assert reply.header.id == query.header.id and str(reply.rr[0].rdata) == "10.9.8.7"
    assert r.stats == DnsStats(queries=2, redirected=2)


def test_an_expired_entry_is_asked_upstream_again():
    clock = Clock()
    r = responder(clock)
    data = wire("example.com")
    settle(r.answer(data, "127.0.0.1", udp=True))
    clock.advance(300)
    assert settle(r.answer(data, "127.0.0.1", udp=True)).rr[0].ttl == 300
    assert len(r.forwarder.asked) == 2


def test_a_failed_forward_is_servfail_and_counted():
    r = responder(Clock())
    reply = settle(r.answer(wire("down.example"), "127.0.0.1", True))
    assert reply.header.rcode == RCODE.SERVFAIL and r.stats.errors == 1


def test_refused_before_anything_else():
    r = responder(Clock(), allow=("10.0.0.0/8",))
    for name in ("deb.debian.org", "example.com"):
        reply = settle(r.answer(wire(name), "127.0.0.1", udp=True))
        assert reply.header.rcode == RCODE.REFUSED and reply.rr == []
    assert r.answer(b"\x01\x02", "127.0.0.1", udp=True) is None
    assert r.forwarder.asked == [] and r.stats.refused == 3


class Exploding:
    def __init__(self):
        self.stats = DnsStats()

    def answer(self, data, source, udp):
        raise ZeroDivisionError("a bug")


class FakeUdpTransport:
    def __init__(self):
        self.sent = []

    def write(self, data, addr):
        self.sent.append((data, addr))


def test_a_bug_never_raises_out_of_the_datagram_handler():
    failures = []
    observer = lambda event: failures.append(event) if "log_failure" in event else None  # noqa
    globalLogPublisher.addObserver(observer)
    try:
        protocol = DnsDatagramProtocol(responder := Exploding())
        protocol.transport = FakeUdpTransport()
        protocol.datagramReceived(wire("x.example"), ("127.0.0.1", 5353))
    finally:
        globalLogPublisher.removeObserver(observer)
    assert protocol.transport.sent == [] and responder.stats.errors == 1
    assert [f["log_failure"].type for f in failures] == [ZeroDivisionError]


def test_a_bug_on_tcp_aborts_only_that_connection():
    protocol = DnsStreamProtocol(responder := Exploding(), idle_timeout=10)
    protocol.callLater = Clock().callLater  # the idle timer, off the real reactor
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.stringReceived(wire("x.example"))
    assert transport.value() == b"" and transport.disconnecting and responder.stats.errors == 1
