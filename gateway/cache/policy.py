"""Cache policy: what may be stored, for how long, and what a request may be served.

Pure functions over header lists.  The rule of the catalogue decides the lifetime
(``immutable``: forever, ``revalidate``: its TTL); ``standard`` reads the response's own
caching headers as a shared cache (RFC 9111).  Whatever the rule, a response marked
``private`` or ``no-store``, or one that sets a cookie, is never stored, and a request
carrying credentials never touches the cache.
"""

from __future__ import annotations

import calendar
import math
import re
from dataclasses import dataclass

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
# Methods served from the cache; any other bypasses it.
CACHEABLE_METHODS = frozenset({"GET", "HEAD"})
# RFC 9110 9.2.1: the methods known to be safe.  Every other one (POST, PUT, M-SEARCH, any
# extension method) invalidates what is stored for its target (RFC 9111 4.4).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# RFC 9110 5.6.7: the three HTTP-date formats, exactly (case, spacing and all).  A value a
# lenient parser would guess at (2-digit year with a short day name, "UTC", no comma, two
# spaces, dashes, periods, a 1-digit hour) is not a date: an ``Expires`` holding one means
# "already expired" (RFC 9111 5.3), which guessing would turn into "fresh for years".
_DAY = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH = "(" + "|".join(_MONTHS) + ")"
_TIME = r"(\d\d):(\d\d):(\d\d)"
_IMF_FIXDATE = re.compile(_DAY + r", (\d\d) " + _MONTH + r" (\d{4}) " + _TIME + " GMT")
_RFC850 = re.compile(r"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), "
                     r"(\d\d)-" + _MONTH + r"-(\d\d) " + _TIME + " GMT")
_ASCTIME = re.compile(_DAY + " " + _MONTH + r" ([ \d]\d) " + _TIME + r" (\d{4})")


def cache_control(headers: Headers) -> dict[str, str | None]:
    """``Cache-Control`` as {directive: argument or None}, names lower-cased."""
    out: dict[str, str | None] = {}
    for part in headers.get("cache-control", "").split(","):
        name, sep, arg = part.strip().partition("=")
        if name:
            out[name.lower()] = arg.strip().strip('"') if sep else None
    return out


def http_date(value: str | None, now: float | None = None) -> float | None:
    """An HTTP-date (RFC 9110 5.6.7) as a POSIX timestamp, or None when absent or not
    exactly one of its three formats.  A two-digit rfc850 year more than 50 years after
    ``now`` is taken as the most recent past year with those digits."""
    if not value:
        return None
    value = value.strip(" \t")
    if m := _IMF_FIXDATE.fullmatch(value):
        day, month, year, hh, mm, ss = m.groups()
    elif m := _ASCTIME.fullmatch(value):
        month, day, hh, mm, ss, year = m.groups()
    elif m := _RFC850.fullmatch(value):
        day, month, yy, hh, mm, ss = m.groups()
        year = str(_full_year(int(yy), now))
    else:
        return None
    fields = (int(year), _MONTHS.index(month) + 1, int(day.strip()), int(hh), int(mm), int(ss))
    if not (1 <= fields[2] <= 31 and fields[3] < 24 and fields[4] < 60 and fields[5] < 61):
        return None
    return float(calendar.timegm(fields + (0, 0, 0)))


def _full_year(yy: int, now: float | None) -> int:
    this_year = 1970 + int((now or 0.0) // 31556952) if now else 2000
    year = this_year - this_year % 100 + yy
    return year - 100 if year > this_year + 50 else year


def _seconds(value: str | None) -> float | None:
    """A delta-seconds value (RFC 9111 1.2.2: digits only), or None."""
    if value is None or not value.isascii() or not value.isdigit():
        return None
    return float(int(value))


def bypass_reason(method: str, headers: Headers, rule: Rule) -> str | None:
    """Why a request must go straight through, unstored (None: it may use the cache)."""
    if method not in CACHEABLE_METHODS:
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
    if vary_star(headers.get("vary")):
        return "vary-star"
    if rule.policy is Policy.STANDARD:
        if status not in HEURISTIC_STATUSES:
            return "status"
    elif status != 200 and status not in NEGATIVE_STATUSES:
        return "status"
    # A negative without freshness information lives ``negative_ttl`` (our heuristic).
    own_lifetime = has_freshness(headers) or (
        rule.policy is Policy.STANDARD and status not in NEGATIVE_STATUSES)
    if own_lifetime and standard_lifetime(status, headers) == 0 and not has_validator(headers):
        return "no-freshness"
    return None


def vary_star(value: str | None) -> bool:
    """``Vary`` names ``*`` (in any member of the list, on any of its lines): the response
    is never reused for a later request (RFC 9110 12.5.5)."""
    return value is not None and any(part.strip() == "*" for part in value.split(","))


def has_freshness(headers: Headers) -> bool:
    """The response says itself how long it stays fresh (or that it does not)."""
    cc = cache_control(headers)
    return "expires" in headers or any(
        d in cc for d in ("max-age", "s-maxage", "no-cache", "no-store"))


def has_validator(headers: Headers) -> bool:
    return "etag" in headers or "last-modified" in headers


def lifetime(rule: Rule, status: int, headers: Headers, negative_ttl: float,
             received: float | None = None) -> float:
    """Seconds a stored response stays fresh (``math.inf`` for immutable objects).

    A 404/410 that carries its own freshness information follows it (under a catalogue
    rule capped at ``negative_ttl``: a package published a minute later must appear);
    ``negative_ttl`` is for those that carry none."""
    if status in NEGATIVE_STATUSES:
        if not has_freshness(headers):
            return negative_ttl
        own = standard_lifetime(status, headers, received)
        return own if rule.policy is Policy.STANDARD else min(negative_ttl, own)
    if rule.policy is Policy.IMMUTABLE:
        return math.inf
    if rule.policy is Policy.REVALIDATE:
        return float(rule.ttl)
    return standard_lifetime(status, headers, received)


def standard_lifetime(status: int, headers: Headers, received: float | None = None) -> float:
    """RFC 9111 4.2.1 freshness lifetime for a shared cache (0: revalidate every time).

    ``Expires`` counts from the response's ``Date`` (so a skewed origin clock cancels
    out), or from ``received`` when it has none; an ``Expires`` that is not an HTTP-date
    (or several of them) means already expired."""
    cc = cache_control(headers)
    if "no-cache" in cc:
        return 0.0
    for directive in ("s-maxage", "max-age"):
        if directive in cc:
            return _seconds(cc[directive]) or 0.0
    date = http_date(headers.get("date"), received)
    if "expires" in headers:
        expires = http_date(headers["expires"], received)
        base = date if date is not None else received
        return max(0.0, expires - base) if expires is not None and base is not None else 0.0
    last_modified = http_date(headers.get("last-modified"), received)
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
    return Freshness(lifetime(rule, status, headers, negative_ttl, response_time),
                     response_time, initial_age(headers, request_time, response_time),
                     not _forbids_stale(rule, headers))


def initial_age(headers: Headers, request_time: float, response_time: float) -> float:
    """RFC 9111 4.2.3 ``corrected_initial_age``: the upstream's ``Age`` plus the transit
    time, or the age the ``Date`` implies when that is larger."""
    date = http_date(headers.get("date"), response_time)
    apparent = max(0.0, response_time - date) if date is not None else 0.0
    corrected = (age_value(headers.get("age")) or 0.0) + max(0.0, response_time - request_time)
    return max(apparent, corrected)


def age_value(value: str | None) -> float | None:
    """An ``Age`` field: the first of its values, when it is a number of seconds."""
    return _seconds(value.split(",")[0].strip()) if value else None


def _forbids_stale(rule: Rule, headers: Headers) -> bool:
    cc = cache_control(headers)
    return rule.policy is Policy.STANDARD and (
        "must-revalidate" in cc or "proxy-revalidate" in cc or "s-maxage" in cc)


def request_forces_revalidation(headers: Headers) -> bool:
    """A client asking ``no-cache`` / ``max-age=0`` gets a revalidated answer."""
    cc = cache_control(headers)
    return "no-cache" in cc or cc.get("max-age", "x") == "0" or \
        headers.get("pragma", "").lower() == "no-cache"


def invalidates(method: str, status: int) -> bool:
    """RFC 9111 4.4: a non-error response to a method not known to be safe invalidates
    what is stored for the target URI."""
    return method not in SAFE_METHODS and 200 <= status < 400
