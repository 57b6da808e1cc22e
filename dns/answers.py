"""Answer construction: pure functions from a client's query to the reply we send.

Bytes in, dnslib records in the middle, bytes out; no sockets and no clock, so every
answer shape is tested without a server (the model is dnslib's ``DNSHandler.get_reply``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from dnslib import AAAA, CLASS, EDNS0, QTYPE, RR, A, DNSError, DNSHeader, DNSRecord
from dnslib.bimap import BimapError
from dnslib.buffer import BufferError
from dnslib.label import DNSLabelError

from dns.rules import Labels, name_labels

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16  # an extended rcode (RFC 6891): carried half in the header, half in the OPT

MIN_UDP_PAYLOAD = 512  # RFC 1035: what a client without EDNS0 accepts
# What we send over UDP at most, whatever a client advertises: DNS flag day 2020's size,
# which fits every common path MTU without IP fragmentation. Bigger answers get TC set
# and the client asks again over TCP.
MAX_UDP_PAYLOAD = 1232
HEADER = struct.Struct("!HHHHHH")
_QR, _OPCODE_RD, _RA = 0x8000, 0x7900, 0x0080

# What dnslib raises on bytes it cannot decode, or on a name it cannot encode again.
WIRE_ERRORS = (DNSError, BufferError, DNSLabelError, BimapError, ValueError, IndexError,
               struct.error, UnicodeError)

Key = tuple[Labels, int, int]  # (lower-cased name labels, qtype, qclass)


class Dropped(Exception):
    """Not worth an answer: too short for a header, or a response rather than a query."""


class QueryError(Exception):
    """A query answered with an error rcode instead of a lookup."""

    def __init__(self, rcode: int, reason: str, query: DNSRecord | None = None) -> None:
        super().__init__(reason)
        self.rcode, self.query = rcode, query


@dataclass(frozen=True)
class RedirectTarget:
    """What redirected names resolve to: ``ipv6 == ""`` means AAAA gets NODATA."""

    ipv4: str
    ipv6: str = ""
    ttl: int = 30


def parse_query(data: bytes) -> DNSRecord:
    """A well-formed standard query with one question, else ``Dropped``/``QueryError``."""
    if len(data) < HEADER.size:
        raise Dropped("shorter than a DNS header")
    if data[2] & 0x80:
        raise Dropped("a response, not a query")
    try:
        query = DNSRecord.parse(data)
    except WIRE_ERRORS as e:
        raise QueryError(FORMERR, f"undecodable: {e}") from None
    if query.header.opcode != 0:
        raise QueryError(NOTIMP, f"opcode {query.header.opcode}")
    if len(query.questions) != 1:
        raise QueryError(FORMERR, f"{len(query.questions)} questions")
    opts = [rr for rr in query.ar if rr.rtype == QTYPE.OPT]
    if len(opts) > 1 or (opts and opts[0].rname.label):
        raise QueryError(FORMERR, "bad OPT record")
    if opts and opts[0].edns_ver != 0:
        raise QueryError(BADVERS, f"EDNS version {opts[0].edns_ver}", query)
    return query


def question_key(query: DNSRecord) -> Key:
    q = query.q
    return name_labels(q.qname.label), q.qtype, q.qclass


def client_opt(query: DNSRecord) -> RR | None:
    """The client's EDNS0 OPT record, if it sent one."""
    return next((rr for rr in query.ar if rr.rtype == QTYPE.OPT), None)


def udp_limit(query: DNSRecord) -> int:
    """The largest UDP reply for this client: its EDNS0 payload size, within our bounds."""
    opt = client_opt(query)
    if opt is None:
        return MIN_UDP_PAYLOAD
    return max(MIN_UDP_PAYLOAD, min(opt.edns_len, MAX_UDP_PAYLOAD))


def error_reply(data: bytes, rcode: int) -> bytes | None:
    """A header-only reply built from the raw header (for queries dnslib cannot decode);
    None when there is no whole header to answer."""
    if len(data) < HEADER.size:
        return None
    qid, flags = struct.unpack_from("!HH", data)
    return HEADER.pack(qid, _QR | (flags & _OPCODE_RD) | _RA | rcode, 0, 0, 0, 0)


def rcode_reply(query: DNSRecord, rcode: int) -> DNSRecord:
    """An empty reply with ``rcode`` (REFUSED, SERVFAIL, BADVERS…), question echoed."""
    return _reply(query, rcode=rcode)


def redirect_reply(query: DNSRecord, target: RedirectTarget) -> DNSRecord:
    """A redirected or local name: A → our IPv4, AAAA → our IPv6 if we have one, anything
    else an empty NOERROR answer (NODATA) — never the real records, which would let a
    client go around the cache."""
    reply = _reply(query, aa=1)
    q = query.q
    if q.qclass == CLASS.IN and q.qtype == QTYPE.A:
        reply.add_answer(RR(q.qname, QTYPE.A, ttl=target.ttl, rdata=A(target.ipv4)))
    elif q.qclass == CLASS.IN and q.qtype == QTYPE.AAAA and target.ipv6:
        reply.add_answer(RR(q.qname, QTYPE.AAAA, ttl=target.ttl, rdata=AAAA(target.ipv6)))
    return reply


def client_reply(query: DNSRecord, upstream: DNSRecord, cached: bool) -> DNSRecord:
    """An upstream answer re-addressed to this client: its ID, its spelling of the name,
    its flags, and an OPT of ours only if it sent one (the upstream's OPT is per hop)."""
    reply = _reply(query, rcode=upstream.header.rcode, aa=0 if cached else upstream.header.aa)
    opt = client_opt(query)
    reply.header.ad = upstream.header.ad and bool(query.header.ad or (opt and opt.edns_do))
    reply.rr = list(upstream.rr)
    reply.auth = list(upstream.auth)
    reply.ar = [rr for rr in upstream.ar if rr.rtype != QTYPE.OPT] + reply.ar
    return reply


def pack_reply(reply: DNSRecord, limit: int | None) -> bytes:
    """Wire bytes; over ``limit`` (UDP) the answer is replaced by a header + question
    (+ OPT) with TC set, so the client retries over TCP."""
    data = bytes(reply.pack())  # dnslib packs into a bytearray
    if limit is None or len(data) <= limit:
        return data
    header = DNSHeader(id=reply.header.id, bitmap=reply.header.bitmap, tc=1)
    opts = [rr for rr in reply.ar if rr.rtype == QTYPE.OPT]
    return bytes(DNSRecord(header, list(reply.questions), ar=opts).pack())


def _reply(query: DNSRecord, rcode: int = NOERROR, aa: int = 0) -> DNSRecord:
    """A reply skeleton: the query's ID, RD, CD and question, RA set, OPT if it sent one."""
    h = query.header
    header = DNSHeader(id=h.id, bitmap=0, qr=1, aa=aa, rd=h.rd, ra=1, cd=h.cd,
                       rcode=rcode & 0xF)
    reply = DNSRecord(header, list(query.questions))
    opt = client_opt(query)
    if opt is not None:
        reply.add_ar(EDNS0(udp_len=MAX_UDP_PAYLOAD, ext_rcode=rcode >> 4,
                           flags="do" if opt.edns_do else ""))
    return reply
