"""Cache policy: what may be stored, for how long, and what a request may be served.

Pure functions over header lists.  The rule of the catalogue decides the lifetime
(``immutable``: forever, ``revalidate``: its TTL); ``standard`` reads the response's own
caching headers as a shared cache (RFC 9111).  Whatever the rule, a response marked
``private`` or ``no-store``, or one that sets a cookie, is never stored, and a request
carrying credentials never touches the cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from gateway.cache.rules import Policy, Rule

Headers = dict[str, str]  # lower-cased names; repeated fields joined with ", "

# RFC 9110 15.1: statuses a cache may store without explicit freshness (heuristically
# cacheable).  Partial content (206) is left out: we always fetch whole objects.
HEURISTIC_STATUSES = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
NEGATIVE_STATUSES = frozenset({404, 410})
# RFC 9111 4.2.2 suggests 10% of the time since Last-Modified; capped at a day so a
# years-old file is still revalidated daily.
HEURISTIC_FRACTION = 0.1
HEURISTIC_CAP = 86400.0
SAFE_METHODS = frozenset({"GET", "HEAD"})
UNSAFE_METHODS = frozenset({"POST", "PUT", "DELETE", "PATCH"})


def cache_control(headers: Headers) -> dict[str, str | None]:
    """``Cache-Control`` as {directive: argument or None}, names lower-cased."""
    out: dict[str, str | None] = {}
    for part in headers.get("cache-control", "").split(","):
        name, sep, arg = part.strip().partition("=")
        if name:
            out[name.lower()] = arg.strip().strip('"') if sep else None
    return out


def http_date(value: str | None) -> float | None:
    """An HTTP date as a POSIX timestamp, or None when absent or malformed."""
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(int(value))) if value is not None else None
    except ValueError:
        return None


def bypass_reason(method: str, headers: Headers, rule: Rule) -> str | None:
    """Why a request must go straight through, unstored (None: it may use the cache)."""
    if method not in SAFE_METHODS:
        return "method"
    if "authorization" in headers:
        return "authorization"
    if "cookie" in headers:
        return "cookie"
    if rule.policy is Policy.PASS:
        return "rule"
    return None


def store_refusal(rule: Rule, status: int, headers: Headers) -> str | None:
    """Why a response must not be stored (None: it may be)."""
    cc = cache_control(headers)
    if "no-store" in cc:
        return "no-store"
    if "private" in cc:
        return "private"
    if "set-cookie" in headers:
        return "set-cookie"
    if headers.get("vary", "").strip() == "*":
        return "vary-star"
    if rule.policy is Policy.STANDARD:
        if status not in HEURISTIC_STATUSES:
            return "status"
        if standard_lifetime(status, headers) == 0 and not has_validator(headers):
            return "no-freshness"
        return None
    if status != 200 and status not in NEGATIVE_STATUSES:
        return "status"
    return None


def has_validator(headers: Headers) -> bool:
    return "etag" in headers or "last-modified" in headers


def lifetime(rule: Rule, status: int, headers: Headers, negative_ttl: float) -> float:
    """Seconds a stored response stays fresh (``math.inf`` for immutable objects)."""
    if status in NEGATIVE_STATUSES:
        return min(negative_ttl, standard_lifetime(status, headers) or negative_ttl)
    if rule.policy is Policy.IMMUTABLE:
        return math.inf
    if rule.policy is Policy.REVALIDATE:
        return float(rule.ttl)
    return standard_lifetime(status, headers)


def standard_lifetime(status: int, headers: Headers) -> float:
    """RFC 9111 4.2.1 freshness lifetime for a shared cache (0: revalidate every time)."""
    cc = cache_control(headers)
    if "no-cache" in cc:
        return 0.0
    for directive in ("s-maxage", "max-age"):
        if directive in cc:
            return _seconds(cc[directive]) or 0.0
    expires = http_date(headers.get("expires")) if "expires" in headers else None
    if "expires" in headers:
        date = http_date(headers.get("date"))
        return max(0.0, expires - date) if expires is not None and date is not None else 0.0
    last_modified = http_date(headers.get("last-modified"))
    date = http_date(headers.get("date"))
    if status in HEURISTIC_STATUSES and last_modified is not None and date is not None:
        return min(HEURISTIC_CAP, max(0.0, (date - last_modified) * HEURISTIC_FRACTION))
    return 0.0


@dataclass(frozen=True)
class Freshness:
    """What is known of a stored response to judge its freshness later."""

    lifetime: float
    response_time: float  # when we received it (or last revalidated it)
    age_at_response: float  # RFC 9111 4.2.3 corrected initial age
    stale_if_error: bool  # False when the response forbids serving it stale

    def age(self, now: float) -> float:
        return self.age_at_response + max(0.0, now - self.response_time)

    def is_fresh(self, now: float) -> bool:
        return self.age(now) < self.lifetime


def freshness(rule: Rule, status: int, headers: Headers, request_time: float,
              response_time: float, negative_ttl: float) -> Freshness:
    """Freshness of a response received at ``response_time`` for a request sent at
    ``request_time`` (RFC 9111 4.2.3 age calculation)."""
    date = http_date(headers.get("date"))
    apparent = max(0.0, response_time - date) if date is not None else 0.0
    corrected = (_seconds(headers.get("age")) or 0.0) + (response_time - request_time)
    cc = cache_control(headers)
    forbid_stale = rule.policy is Policy.STANDARD and (
        "must-revalidate" in cc or "proxy-revalidate" in cc or "s-maxage" in cc)
    return Freshness(lifetime(rule, status, headers, negative_ttl), response_time,
                     max(apparent, corrected), not forbid_stale)


def request_forces_revalidation(headers: Headers) -> bool:
    """A client asking ``no-cache`` / ``max-age=0`` gets a revalidated answer."""
    cc = cache_control(headers)
    return "no-cache" in cc or cc.get("max-age", "x") == "0" or \
        headers.get("pragma", "").lower() == "no-cache"


def invalidates(method: str, status: int) -> bool:
    """RFC 9111 4.4: a successful unsafe request invalidates the stored target URI."""
    return method in UNSAFE_METHODS and 200 <= status < 400
