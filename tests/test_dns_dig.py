"""A real client: ``dig`` (BIND's bind9-dnsutils) against the resolver running in this
process, over UDP and TCP, with and without EDNS.

dig runs as a child process through the reactor, so the server keeps answering meanwhile."""

import os
import re

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.utils import getProcessOutputAndValue

from tests.dns_helpers import ADVERTISED, FakeUpstream, RunningResolver, dns_config, need_dig

ZONE = {
    "example.com": ["example.com 300 IN A 93.184.216.34"],
    "big.example": [f'big.example 300 IN TXT "record {i:02d} {"x" * 40}"' for i in range(14)],
}


@pytest.fixture
def resolver():
    need_dig()
    upstream = FakeUpstream(reactor, ZONE).start()
    running = RunningResolver(reactor, dns_config([upstream.address]))
    running.upstream = upstream
    yield running
    pytest_twisted.blockon(running.stop())
    pytest_twisted.blockon(upstream.stop())


class Dig:
    def __init__(self, output: str) -> None:
        self.output = output
        status = re.search(r"status: (\w+)", output)
        self.status = status.group(1) if status else None
        self.edns = "OPT PSEUDOSECTION" in output
        self.truncated_retry = "Truncated, retrying in TCP mode" in output
        section = re.search(r";; ANSWER SECTION:\n(.*?)\n\n", output, re.S)
        self.answers = [line.split() for line in section.group(1).splitlines()] \
            if section else []

    def rdata(self, rtype: str) -> list[str]:
        return [" ".join(a[4:]) for a in self.answers if a[3] == rtype]


@defer.inlineCallbacks
def dig(resolver, name, rtype="A", *options):
    args = ["@127.0.0.1", "-p", str(resolver.port), "+time=3", "+tries=1", *options,
            name, rtype]
    out, err, code = yield getProcessOutputAndValue(need_dig(), args, env=dict(os.environ),
                                                    reactor=reactor)
    assert code == 0, (out + err).decode()
    assert b"WARNING" not in out.upper() + err.upper(), (out + err).decode()
    return Dig(out.decode())


TRANSPORTS = [pytest.param([], id="udp-edns"), pytest.param(["+noedns"], id="udp-noedns"),
              pytest.param(["+tcp"], id="tcp-edns"), pytest.param(["+tcp", "+noedns"],
                                                                   id="tcp-noedns")]


@pytest.mark.parametrize("options", TRANSPORTS)
@pytest_twisted.inlineCallbacks
def test_dig_gets_our_address_for_a_catalogue_name(resolver, options):
    answer = yield dig(resolver, "Deb.Debian.org", "A", *options)
    assert answer.status == "NOERROR" and answer.rdata("A") == [ADVERTISED]
    assert answer.edns == ("+noedns" not in options)
    nodata = yield dig(resolver, "pypi.org", "AAAA", *options)
    assert nodata.status == "NOERROR" and nodata.answers == []
    assert resolver.upstream.queries == []


@pytest.mark.parametrize("options", TRANSPORTS)
@pytest_twisted.inlineCallbacks
def test_dig_gets_forwarded_answers(resolver, options):
    answer = yield dig(resolver, "example.com", "A", *options)
    assert answer.status == "NOERROR" and answer.rdata("A") == ["93.184.216.34"]
    missing = yield dig(resolver, "missing.example", "A", *options)
    assert missing.status == "NXDOMAIN"
    again = yield dig(resolver, "example.com", "A", *options)
    assert again.rdata("A") == ["93.184.216.34"]
    assert resolver.upstream.names() == ["example.com", "missing.example"]


@pytest_twisted.inlineCallbacks
def test_dig_falls_back_to_tcp_when_our_udp_answer_is_truncated(resolver):
    answer = yield dig(resolver, "big.example", "TXT", "+noedns")
    assert answer.truncated_retry and answer.status == "NOERROR"
    assert len(answer.rdata("TXT")) == 14
    assert resolver.stats.forwarded == 1 and resolver.stats.cache_hits == 1
