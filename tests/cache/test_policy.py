"""RFC 9111 freshness and storability, and the catalogue's overrides of them."""

import math

import pytest

from gateway.cache.rules import Policy, Rule
from gateway.cache.policy import (bypass_reason, freshness, invalidates, lifetime,
                            request_forces_revalidation, standard_lifetime, store_refusal)

STANDARD = Rule("", Policy.STANDARD)
IMMUTABLE = Rule("", Policy.IMMUTABLE)
REVALIDATE = Rule("", Policy.REVALIDATE, ttl=300)
DATE = "Sat, 21 Nov 2026 12:00:00 GMT"


@pytest.mark.parametrize("headers,expected", [
    ({"cache-control": "public, max-age=600"}, 600),
    ({"cache-control": "max-age=600, s-maxage=60"}, 60),  # shared caches prefer s-maxage
    ({"cache-control": "max-age=600, no-cache"}, 0),
    ({"cache-control": "max-age=bogus"}, 0),
    ({"date": DATE, "expires": "Sat, 21 Nov 2026 13:00:00 GMT"}, 3600),
    ({"date": DATE, "expires": "0"}, 0),  # invalid Expires means already expired
    ({"date": DATE, "last-modified": "Sat, 11 Nov 2026 12:00:00 GMT"}, 86400),  # 10% of 10 days, capped
    ({"date": DATE, "last-modified": "Sat, 21 Nov 2026 11:00:00 GMT"}, 360),  # 10% of an hour
    ({}, 0),
])
def test_standard_lifetime(headers, expected):
    assert standard_lifetime(200, headers) == expected


def test_catalogue_rules_override_response_lifetime():
    headers = {"cache-control": "max-age=60"}
    assert lifetime(IMMUTABLE, 200, headers, 60) == math.inf
    assert lifetime(REVALIDATE, 200, headers, 60) == 300
    assert lifetime(STANDARD, 200, headers, 60) == 60


def test_negative_answers_live_briefly_whatever_the_rule():
    assert lifetime(IMMUTABLE, 404, {}, 60) == 60
    assert lifetime(STANDARD, 410, {"cache-control": "max-age=5"}, 60) == 5


@pytest.mark.parametrize("rule,status,headers,reason", [
    (IMMUTABLE, 200, {"cache-control": "no-store"}, "no-store"),
    (IMMUTABLE, 200, {"cache-control": "private, max-age=60"}, "private"),
    (REVALIDATE, 200, {"set-cookie": "session=1"}, "set-cookie"),
    (STANDARD, 200, {"vary": "*", "cache-control": "max-age=60"}, "vary-star"),
    (IMMUTABLE, 500, {}, "status"),
    (IMMUTABLE, 302, {}, "status"),
    (STANDARD, 200, {}, "no-freshness"),
    (STANDARD, 500, {"cache-control": "max-age=60"}, "status"),
    (IMMUTABLE, 200, {}, None),
    (IMMUTABLE, 404, {}, None),
    (STANDARD, 200, {"etag": '"x"'}, None),  # storable, revalidated on every use
    (STANDARD, 301, {"cache-control": "max-age=60"}, None),
])
def test_store_refusal(rule, status, headers, reason):
    assert store_refusal(rule, status, headers) == reason


@pytest.mark.parametrize("method,headers,rule,reason", [
    ("POST", {}, IMMUTABLE, "method"),
    ("GET", {"authorization": "Bearer x"}, IMMUTABLE, "authorization"),
    ("GET", {"cookie": "a=b"}, IMMUTABLE, "cookie"),
    ("GET", {}, Rule("", Policy.PASS), "rule"),
    ("GET", {}, IMMUTABLE, None),
    ("HEAD", {}, STANDARD, None),
])
def test_bypass_reason(method, headers, rule, reason):
    assert bypass_reason(method, headers, rule) == reason


def test_age_uses_age_header_and_resident_time():
    fresh = freshness(STANDARD, 200, {"cache-control": "max-age=100", "age": "30"},
                      request_time=1000.0, response_time=1002.0, negative_ttl=60)
    assert fresh.age(1002.0) == 32  # Age + response delay
    assert fresh.is_fresh(1069.0)
    assert not fresh.is_fresh(1070.0)


def test_must_revalidate_forbids_stale_if_error_only_under_standard():
    headers = {"cache-control": "max-age=10, must-revalidate"}
    assert not freshness(STANDARD, 200, headers, 0, 0, 60).stale_if_error
    assert freshness(REVALIDATE, 200, headers, 0, 0, 60).stale_if_error


def test_client_no_cache_and_unsafe_invalidation():
    assert request_forces_revalidation({"cache-control": "max-age=0"})
    assert request_forces_revalidation({"pragma": "no-cache"})
    assert not request_forces_revalidation({"cache-control": "max-age=60"})
    assert invalidates("POST", 201) and invalidates("DELETE", 302)
    assert not invalidates("POST", 500) and not invalidates("GET", 200)
