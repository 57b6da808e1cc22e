"""Conditional requests from clients (RFC 9110 13): 304 when their copy is current."""

from __future__ import annotations

from gateway.cache.policy import Headers, http_date


def _opaque(tag: str) -> str:
    return tag[2:] if tag.startswith("W/") else tag


def etag_matches(if_none_match: str, etag: str | None) -> bool:
    """Weak comparison of an ``If-None-Match`` list against the stored ``ETag``."""
    if etag is None:
        return False
    if if_none_match.strip() == "*":
        return True
    wanted = {_opaque(t.strip()) for t in if_none_match.split(",")}
    return _opaque(etag) in wanted


def not_modified(request: Headers, response: Headers) -> bool:
    """True when a GET/HEAD with these request headers should be answered 304.

    ``If-None-Match`` wins over ``If-Modified-Since`` (RFC 9110 13.2.2).
    """
    if "if-none-match" in request:
        return etag_matches(request["if-none-match"], response.get("etag"))
    if "if-modified-since" not in request:
        return False
    since = http_date(request["if-modified-since"])
    modified = http_date(response.get("last-modified"))
    return since is not None and modified is not None and modified <= since
