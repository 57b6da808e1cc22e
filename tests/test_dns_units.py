"""The resolver's pure core, without sockets: redirect rules, answer construction,
truncation, the answer cache (on a fake clock), resolv.conf and forwarder parsing, access."""

import ipaddress
import struct

import pytest
from dnslib import CLASS, EDNS0, QTYPE, RCODE, RR, DNSRecord, EDNSOption
from twisted.internet.task import Clock

from dns.access import AccessPolicy, allowed
from dns.answers import (BADVERS, FORMERR, MAX_UDP_PAYLOAD, NOTIMP, Dropped, QueryError,
                         RedirectTarget, client_reply, error_reply, pack_reply, parse_query,
                         question_key, redirect_reply, udp_limit)
from dns.cache import NEGATIVE_TTL_CAP, AnswerCache, cache_ttl
from dns.resolvconf import forwarders, nameservers, parse_forwarder
from dns.rules import RedirectRules
from gateway.ecosystems.catalogue import BUILTIN
from gateway.config import DnsConfig

TARGET = RedirectTarget("10.9.8.7", "", 30)
SOA = "example. 3600 IN SOA ns.example. admin.example. 1 3600 600 86400 60"


def query(name, qtype="A", edns=None, qid=4242):
    q = DNSRecord.question(name, qtype)
    q.header.id = qid
    if edns is not None:
        q.add_ar(edns)
    return q


def wire(record):
    """What a client receives: the packed bytes parsed back."""
    return DNSRecord.parse(pack_reply(record, None))


# -- redirect rules ---------------------------------------------------------------------

RULES = RedirectRules(["deb.debian.org", "*.archive.ubuntu.com", "cachegate.internal"])


@pytest.mark.parametrize("name", ["deb.debian.org", "DEB.Debian.ORG.", "de.archive.ubuntu.com",
                                  "a.b.archive.ubuntu.com", "Cachegate.Internal"])
def test_rules_match_exact_names_and_names_below_a_wildcard(name):
    assert RULES.matches(name)


@pytest.mark.parametrize("name", ["archive.ubuntu.com", "evilarchive.ubuntu.com",
                                  "x.deb.debian.org", "debian.org", "deb.debian.org.evil",
                                  "example.com", ""])
def test_rules_do_not_match_other_names(name):
    assert not RULES.matches(name)


def test_a_label_containing_a_dot_is_not_two_labels():
    assert not RULES.matches((b"deb.debian", b"org"))
    assert RULES.matches((b"deb", b"debian", b"org"))


def test_rules_from_catalogue_cover_every_host_and_local_name():
    rules = RedirectRules.from_catalogue(BUILTIN, DnsConfig().local_names)
    for upstream in BUILTIN:
        for host in upstream.hosts:
            assert rules.matches(host.replace("*.", "mirror."))
    assert rules.matches("cachegate.internal")
    assert not rules.matches("github.com")


# -- answers ------------------------------------------------------------------------------

def test_a_query_for_a_redirected_name_gets_our_address_with_the_configured_ttl():
    reply = wire(redirect_reply(query("deb.debian.org"), TARGET))
    assert reply.header.id == 4242 and reply.header.qr and reply.header.rd and reply.header.ra
    assert reply.header.rcode == RCODE.NOERROR
    assert [(str(rr.rdata), rr.ttl, rr.rtype) for rr in reply.rr] == [("10.9.8.7", 30, QTYPE.A)]


def test_the_answer_echoes_the_clients_spelling_of_the_name():
    reply = wire(redirect_reply(query("DEB.Debian.ORG"), TARGET))
    assert str(reply.q.qname) == "DEB.Debian.ORG."
    assert str(reply.rr[0].rname) == "DEB.Debian.ORG."


def test_aaaa_is_nodata_without_an_ipv6_address_and_never_has_a_soa():
    reply = wire(redirect_reply(query("deb.debian.org", "AAAA"), TARGET))
    assert reply.header.rcode == RCODE.NOERROR
    assert reply.rr == [] and reply.auth == []


def test_aaaa_gets_our_ipv6_address_when_configured():
    target = RedirectTarget("10.9.8.7", "fd00::53", 30)
    reply = wire(redirect_reply(query("deb.debian.org", "AAAA"), target))
    assert [str(rr.rdata) for rr in reply.rr] == ["fd00::53"]


@pytest.mark.parametrize("qtype", ["MX", "TXT", "HTTPS", "SVCB", "CNAME", "ANY", "NS"])
def test_every_other_type_is_nodata_so_nothing_real_leaks(qtype):
    reply = wire(redirect_reply(query("pypi.org", qtype), TARGET))
    assert reply.header.rcode == RCODE.NOERROR and reply.rr == [] and reply.auth == []


def test_a_reply_carries_an_opt_only_when_the_query_did():
    plain = wire(redirect_reply(query("pypi.org"), TARGET))
    assert not [rr for rr in plain.ar if rr.rtype == QTYPE.OPT]
    edns = wire(redirect_reply(query("pypi.org", edns=EDNS0(udp_len=4096, flags="do")), TARGET))
    [opt] = [rr for rr in edns.ar if rr.rtype == QTYPE.OPT]
    assert opt.edns_len == MAX_UDP_PAYLOAD and opt.edns_do


def big_upstream_answer(name="big.example", count=30):
    reply = query(name, "TXT").reply()
    for i in range(count):
        reply.add_answer(*RR.fromZone(f'{name} 300 IN TXT "record {i:02d} {"x" * 20}"'))
    return reply


def test_an_oversized_udp_answer_is_truncated_with_tc_and_no_records():
    q = query("big.example", "TXT")
    data = pack_reply(client_reply(q, big_upstream_answer(), cached=False), udp_limit(q))
    reply = DNSRecord.parse(data)
    assert len(data) <= 512 and reply.header.tc
    assert reply.rr == [] and str(reply.q.qname) == "big.example."


def test_truncation_honours_the_clients_edns_payload_size_within_our_maximum():
    big = big_upstream_answer()  # about 1.3 kB
    small = big_upstream_answer(count=20)  # about 900 bytes
    q = query("big.example", "TXT", edns=EDNS0(udp_len=1200))
    fits = DNSRecord.parse(pack_reply(client_reply(q, small, False), udp_limit(q)))
    assert not fits.header.tc and len(fits.rr) == 20
    huge = query("big.example", "TXT", edns=EDNS0(udp_len=65000))
    assert udp_limit(huge) == MAX_UDP_PAYLOAD
    cut = DNSRecord.parse(pack_reply(client_reply(huge, big, False), udp_limit(huge)))
    assert cut.header.tc and cut.rr == []
    assert [rr.rtype for rr in cut.ar] == [QTYPE.OPT]  # EDNS still signalled
    tcp = DNSRecord.parse(pack_reply(client_reply(huge, big, False), None))
    assert not tcp.header.tc and len(tcp.rr) == 30


def test_a_tiny_edns_payload_size_still_gets_512_bytes():
    assert udp_limit(query("x.example", edns=EDNS0(udp_len=100))) == 512
    assert udp_limit(query("x.example")) == 512


def test_client_reply_readdresses_an_upstream_answer():
    upstream = query("example.com", qid=1).reply()
    upstream.add_answer(*RR.fromZone("example.com 300 IN A 93.184.216.34"))
    upstream.add_ar(EDNS0(udp_len=4096, opts=[EDNSOption(10, b"servercookie")]))
    q = query("Example.COM", qid=777)
    reply = wire(client_reply(q, upstream, cached=True))
    assert reply.header.id == 777 and not reply.header.aa
    assert str(reply.q.qname) == "Example.COM."
    assert [str(rr.rdata) for rr in reply.rr] == ["93.184.216.34"]
    assert not [rr for rr in reply.ar if rr.rtype == QTYPE.OPT]  # the client sent none


def test_parse_query_sorts_out_what_is_not_a_plain_query():
    with pytest.raises(Dropped):
        parse_query(b"\x12\x34\x01")
    response = query("example.com").reply().pack()
    with pytest.raises(Dropped):
        parse_query(response)
    two = DNSRecord.question("a.example")
    two.add_question(*DNSRecord.question("b.example").questions)
    with pytest.raises(QueryError) as e:
        parse_query(two.pack())
    assert e.value.rcode == FORMERR
    notify = query("example.com")
    notify.header.opcode = 4
    with pytest.raises(QueryError) as e:
        parse_query(notify.pack())
    assert e.value.rcode == NOTIMP
    with pytest.raises(QueryError) as e:
        parse_query(query("example.com", edns=EDNS0(version=1)).pack())
    assert e.value.rcode == BADVERS


def test_question_key_is_case_insensitive():
    assert question_key(query("Example.COM")) == question_key(query("example.com."))
    assert question_key(query("example.com")) == ((b"example", b"com"), QTYPE.A, CLASS.IN)


def test_error_reply_needs_a_whole_header_and_echoes_its_id():
    assert error_reply(b"\x12\x34\x01\x00", FORMERR) is None
    header = struct.pack("!HHHHHH", 0xBEEF, 0x0100, 1, 0, 0, 0)
    reply = DNSRecord.parse(error_reply(header + b"\xff\xfe", FORMERR))
    assert reply.header.id == 0xBEEF and reply.header.qr and reply.header.rd
    assert reply.header.rcode == RCODE.FORMERR and reply.questions == []


# -- the answer cache ---------------------------------------------------------------------

def answer(name="example.com", zone=("example.com 300 IN A 93.184.216.34",), rcode=0,
           auth=()):
    reply = query(name).reply()
    reply.header.rcode = rcode
    for line in zone:
        reply.add_answer(*RR.fromZone(line))
    for line in auth:
        reply.add_auth(*RR.fromZone(line))
    return reply


KEY = ((b"example", b"com"), QTYPE.A, CLASS.IN)


def ttls(hit):
    return [rr.ttl for rr in hit.record.rr + hit.record.auth]


def test_ttls_count_down_and_the_entry_expires():
    clock = Clock()
    cache = AnswerCache(clock.seconds)
    assert cache.put(KEY, answer())
    assert ttls(cache.get(KEY)) == [300]
    clock.advance(100.2)
    assert ttls(cache.get(KEY)) == [200]
    clock.advance(199.5)
    assert ttls(cache.get(KEY)) == [1]
    clock.advance(0.5)
    assert cache.get(KEY) is None and len(cache) == 0


def test_a_cached_answer_uses_its_smallest_ttl_for_every_record():
    clock = Clock()
    cache = AnswerCache(clock.seconds)
    cache.put(KEY, answer(zone=("example.com 300 IN CNAME edge.example.net",
                                "edge.example.net 20 IN A 192.0.2.1")))
    clock.advance(5)
    assert ttls(cache.get(KEY)) == [15, 15]
    clock.advance(15)
    assert cache.get(KEY) is None


def test_valid_until_is_when_the_ttls_next_change():
    clock = Clock()
    cache = AnswerCache(clock.seconds)
    cache.put(KEY, answer())
    clock.advance(10.25)
    hit = cache.get(KEY)
    assert ttls(hit) == [290] and hit.valid_until == 11.0


def test_nxdomain_is_cached_for_the_soa_minimum():
    clock = Clock()
    cache = AnswerCache(clock.seconds)
    assert cache.put(KEY, answer(zone=(), rcode=RCODE.NXDOMAIN, auth=(SOA,)))
    clock.advance(59)
    hit = cache.get(KEY)
    assert hit.record.header.rcode == RCODE.NXDOMAIN and ttls(hit) == [1]
    clock.advance(1)
    assert cache.get(KEY) is None


def test_nodata_is_cached_and_negative_ttls_are_capped():
    long_soa = "example. 86400 IN SOA ns.example. admin.example. 1 3600 600 86400 86400"
    assert cache_ttl(answer(zone=(), auth=(long_soa,))) == NEGATIVE_TTL_CAP
    assert cache_ttl(answer(zone=(), auth=(SOA,))) == 60


def test_what_is_never_cached():
    assert cache_ttl(answer(zone=(), rcode=RCODE.NXDOMAIN)) == 0  # no SOA (RFC 2308)
    assert cache_ttl(answer(rcode=RCODE.SERVFAIL)) == 0
    truncated = answer()
    truncated.header.tc = 1
    assert cache_ttl(truncated) == 0
    assert cache_ttl(answer(zone=("example.com 0 IN A 192.0.2.1",))) == 0
    cache = AnswerCache(Clock().seconds)
    assert not cache.put(KEY, answer(rcode=RCODE.SERVFAIL)) and len(cache) == 0


def test_the_cache_is_bounded_and_evicts_the_least_recently_used():
    cache = AnswerCache(Clock().seconds, max_entries=2)
    keys = [((name.encode(), b"com"), QTYPE.A, CLASS.IN) for name in ("a", "b", "c")]
    cache.put(keys[0], answer())
    cache.put(keys[1], answer())
    assert cache.get(keys[0]) is not None  # a is now the most recently used
    cache.put(keys[2], answer())
    assert len(cache) == 2
    assert cache.get(keys[1]) is None
    assert cache.get(keys[0]) is not None and cache.get(keys[2]) is not None


def test_the_upstreams_opt_is_not_cached():
    cache = AnswerCache(Clock().seconds)
    upstream = answer()
    upstream.add_ar(EDNS0(udp_len=4096))
    cache.put(KEY, upstream)
    assert [rr.rtype for rr in cache.get(KEY).record.ar] == []


# -- resolv.conf and forwarders -----------------------------------------------------------

RESOLV_CONF = """\
# generated by NetworkManager
search example.com
nameserver 192.0.2.53   # the router
nameserver 2001:db8::53
nameserver not-an-address
;nameserver 198.51.100.1
options edns0 trust-ad
nameserver 127.0.0.1
"""


def test_nameservers_are_read_in_order_and_bad_lines_skipped():
    assert nameservers(RESOLV_CONF) == ["192.0.2.53", "2001:db8::53", "127.0.0.1"]
    assert nameservers("") == []


@pytest.mark.parametrize("value,expected", [
    ("192.0.2.1", ("192.0.2.1", 53)), ("192.0.2.1:5353", ("192.0.2.1", 5353)),
    ("2001:db8::1", ("2001:db8::1", 53)), ("[2001:db8::1]:5353", ("2001:db8::1", 5353))])
def test_forwarder_strings(value, expected):
    assert parse_forwarder(value) == expected


@pytest.mark.parametrize("value", ["dns.example", "192.0.2.1:0", "2001:db8::1:99999",
                                   "192.0.2.1:", "[2001:db8::1]"])
def test_bad_forwarder_strings(value):
    with pytest.raises(ValueError):
        parse_forwarder(value)


def test_system_forwarders_drop_our_own_addresses():
    servers = forwarders(["system"], RESOLV_CONF, ["127.0.0.1", "172.17.0.1"], 53)
    assert servers == [("192.0.2.53", 53), ("2001:db8::53", 53)]
    # On another port 127.0.0.1:53 is not us (e.g. a local dnsmasq) and is kept.
    assert ("127.0.0.1", 53) in forwarders(["system"], RESOLV_CONF, ["127.0.0.1"], 5353)


def test_a_wildcard_listen_address_makes_every_loopback_server_ours():
    assert forwarders(["127.0.0.53", "192.0.2.1"], "", ["0.0.0.0"], 53) == [("192.0.2.1", 53)]


def test_explicit_forwarders_come_in_order_without_duplicates():
    servers = forwarders(["192.0.2.1:5353", "system", "192.0.2.53"], RESOLV_CONF,
                         ["127.0.0.1"], 53)
    assert servers == [("192.0.2.1", 5353), ("192.0.2.53", 53), ("2001:db8::53", 53)]


# -- access control -----------------------------------------------------------------------

DEFAULT_ALLOW = DnsConfig().allow


@pytest.mark.parametrize("ip", ["127.0.0.1", "10.1.2.3", "172.17.0.2", "192.168.1.9", "::1",
                                "::ffff:172.17.0.5"])
def test_allowed_sources(ip):
    assert allowed(ip, DEFAULT_ALLOW)


@pytest.mark.parametrize("ip", ["8.8.8.8", "172.32.0.1", "2001:db8::1", "::ffff:8.8.8.8",
                                "garbage"])
def test_refused_sources(ip):
    assert not allowed(ip, DEFAULT_ALLOW)


def test_access_policy_remembers_its_verdicts():
    policy = AccessPolicy([ipaddress.ip_network("10.0.0.0/8")])
    assert policy.allows("10.0.0.1") and not policy.allows("127.0.0.1")
    assert policy.allows("10.0.0.1") and not policy.allows("127.0.0.1")


# -- wiring -------------------------------------------------------------------------------

def test_dns_services_wires_one_listener_per_address_and_the_system_forwarders(tmp_path):
    from dataclasses import replace

    from dns.service import dns_services
    from gateway.config import Config

    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text("nameserver 172.17.0.1\nnameserver 192.0.2.53\n")
    config = Config(dns=replace(DnsConfig(), forwarders=("system", "198.51.100.7:5353")))
    services, forwarder, stats = dns_services(config, Clock(), ["127.0.0.1", "172.17.0.1"],
                                              "172.17.0.1", resolv_conf=resolv_conf)
    assert [(s.address, s.port) for s in services] == [("127.0.0.1", 53), ("172.17.0.1", 53)]
    assert forwarder.servers == [("192.0.2.53", 53), ("198.51.100.7", 5353)]
    assert stats.queries == 0 and not any(s.running for s in services)


def test_auto_advertises_each_listeners_own_ipv4_address(tmp_path):
    from dataclasses import replace

    from dns.service import dns_services
    from gateway.config import Config

    def answers(setting, resolved):
        config = Config(dns=replace(DnsConfig(), forwarders=(), advertise_ipv4=setting))
        services, _, _ = dns_services(config, Clock(), ["172.17.0.1", "127.0.0.1", "0.0.0.0",
                                                        "::1"], resolved)
        return [s.responder.target.ipv4 for s in services]
    assert answers("auto", "172.17.0.1") == ["172.17.0.1", "127.0.0.1", "172.17.0.1",
                                             "172.17.0.1"]
    assert answers("192.0.2.9", "192.0.2.9") == ["192.0.2.9"] * 4


def test_service_names_under_redirected_names_are_ours_too():
    """apt asks for _http._tcp.deb.debian.org SRV records: never forwarded."""
    from dns.rules import RedirectRules
    rules = RedirectRules(["deb.debian.org", "*.archive.ubuntu.com"])
    assert rules.matches("_http._tcp.deb.debian.org")
    assert rules.matches("_https._tcp.de.archive.ubuntu.com.")
    assert not rules.matches("_http._tcp.example.com")
    assert not rules.matches("_http._tcp")
