"""Which request headers go upstream and which response headers are stored and replayed."""

from __future__ import annotations

from email.utils import formatdate

# RFC 9110 7.6.1 hop-by-hop fields, plus the proxy ones clients still send.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
    "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
})
# What a shared fetch for a built-in ecosystem sends upstream: only fields that may shape
# the representation.  Everything else a client sent (tracing ids, build metadata) stays
# with it: the public registries need nothing more, and learn nothing more about builds.
SHARED_REQUEST_FIELDS = ("accept", "accept-encoding", "accept-language", "user-agent")
# What a shared fetch never forwards even when it forwards every end-to-end field: the
# cache's own conditionals and ranges (it fetches whole objects and revalidates with its
# own validators), framing, and credentials (such requests bypass the cache anyway).
CACHE_MANAGED_FIELDS = frozenset({
    "host", "content-length", "if-match", "if-none-match", "if-modified-since",
    "if-unmodified-since", "if-range", "range", "expect", "authorization", "cookie",
})
# A parent's answers name the S3 store it writes behind to (``S3Tier.identity``).
S3_HEADER = "x-cachegate-s3"
# Computed per response by us, never replayed from the store.
NOT_REPLAYED = HOP_BY_HOP | {"content-length", "age", "set-cookie", "x-cache", "warning",
                            S3_HEADER}
# RFC 9111 4.3.4: a 304 updates the stored headers, except the ones describing the body.
NOT_UPDATED_BY_304 = frozenset({"content-length", "content-encoding", "content-range",
                                "transfer-encoding"})


def connection_fields(headers: dict[str, str]) -> frozenset[str]:
    """Hop-by-hop fields: the standard ones and any named in ``Connection``."""
    named = {v.strip().lower() for v in headers.get("connection", "").split(",") if v.strip()}
    return HOP_BY_HOP | named


def shared_request_headers(client: dict[str, str], end_to_end: bool = False) -> dict[str, str]:
    """The client's headers a cacheable fetch sends upstream: the narrow list, or with
    ``end_to_end`` (user-added entries and rules) every end-to-end field but those the
    cache manages itself.  Other clients joining the fetch get its response: ``Vary``
    is what decides whether their own headers would have changed it."""
    if not end_to_end:
        return {name: client[name] for name in SHARED_REQUEST_FIELDS if name in client}
    drop = connection_fields(client) | CACHE_MANAGED_FIELDS
    return {name: value for name, value in client.items() if name not in drop}


def passthrough_request_headers(client: dict[str, str]) -> dict[str, str]:
    """Everything end-to-end (credentials included) for a request we only relay."""
    drop = connection_fields(client) | {"host", "content-length"}
    return {name: value for name, value in client.items() if name not in drop}


def replayable(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Response headers worth storing and sending to clients."""
    named = {v.strip().lower() for name, value in pairs if name.lower() == "connection"
             for v in value.split(",")}
    drop = NOT_REPLAYED | named
    return [(name, value) for name, value in pairs if name.lower() not in drop]


def merge_304(stored: list[tuple[str, str]], fresh: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The stored headers updated with those of a 304 (RFC 9111 4.3.4)."""
    updates = [(n, v) for n, v in replayable(fresh) if n.lower() not in NOT_UPDATED_BY_304]
    replaced = {n.lower() for n, _ in updates}
    return [(n, v) for n, v in stored if n.lower() not in replaced] + updates


def with_date(pairs: list[tuple[str, str]], received: float) -> list[tuple[str, str]]:
    """``pairs`` with a ``Date`` of ``received`` when the upstream sent none (RFC 9110
    6.6.1: a recipient caching or forwarding such a response adds the time it got it)."""
    if any(name.lower() == "date" for name, _ in pairs):
        return pairs
    return pairs + [("Date", formatdate(received, usegmt=True))]


def as_dict(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """Header pairs as {lower-case name: values joined with ", "}."""
    out: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower()
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out
