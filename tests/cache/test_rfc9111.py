"""The pure side of issue 19: RFC 9111 cases the ``standard`` policy must get right.

Each behaviour has its twin: the valid form is reused (or forwarded), the invalid one not.
The same behaviours through a real socket are in test_rfc9111_http.py.
"""

import pytest

from gateway.cache.headers import replayable, shared_request_headers, with_date
from gateway.cache.keys import normalise_path
from gateway.cache.policy import (freshness, http_date, initial_age, invalidates, lifetime,
                                  standard_lifetime, store_refusal, vary_star)
from gateway.cache.rules import Policy, Rule, Upstream
from gateway.config import apply_upstream_tables
from gateway.ecosystems.catalogue import BUILTIN
from gateway.front.client_errors import LogBudget

STANDARD = Rule("", Policy.STANDARD)
IMMUTABLE = Rule("", Policy.IMMUTABLE)
DATE = "Tue, 01 Dec 2026 09:00:00 GMT"
NOW = http_date(DATE)

# --- 1. end-to-end request headers -------------------------------------------------

CLIENT = {
    "accept": "application/json", "user-agent": "curl/8", "x-api-version": "3",
    "x-request-id": "abc", "traceparent": "00-1-2-01", "connection": "keep-alive, x-hop",
    "x-hop": "private to this hop", "keep-alive": "timeout=5", "te": "trailers",
    "if-none-match": '"client"', "if-modified-since": DATE, "if-match": '"m"',
    "if-unmodified-since": DATE, "if-range": '"r"', "range": "bytes=0-1",
    "host": "artifacts.example", "content-length": "0", "cache-control": "max-age=0",
}

def test_end_to_end_fetch_forwards_every_end_to_end_header():
    sent = shared_request_headers(CLIENT, end_to_end=True)
    assert sent == {"accept": "application/json", "user-agent": "curl/8",
                    "x-api-version": "3", "x-request-id": "abc", "traceparent": "00-1-2-01",
                    "cache-control": "max-age=0"}

def test_narrow_fetch_forwards_the_representation_fields_only():
    assert shared_request_headers(CLIENT) == {"accept": "application/json",
                                              "user-agent": "curl/8"}

def test_user_added_entries_and_rules_forward_end_to_end_built_in_ones_do_not():
    upstreams = apply_upstream_tables(BUILTIN, {
        "artifacts": {"hosts": ["artifacts.example"]},
        "pypi": {"rules": [{"path": "^/internal/", "policy": "standard"}]},
    }, "<test>")
    by_name = {u.name: u for u in upstreams}
    artifacts, pypi = by_name["artifacts"], by_name["pypi"]
    assert artifacts.forwards_end_to_end(artifacts.rule_for("/any/path"))
    assert pypi.forwards_end_to_end(pypi.rule_for("/internal/x"))
    assert not pypi.forwards_end_to_end(pypi.rule_for("/simple/x/"))
    assert not pypi.forwards_end_to_end(pypi.rule_for("/unmatched"))
    assert not any(u.forwards_end_to_end(u.rule_for("/")) for u in BUILTIN)
    assert not Upstream("x", ("x.example",)).forwards_end_to_end(STANDARD)

# --- 2. Expires --------------------------------------------------------------------

VALID_DATES = {
    "Thu, 01 Dec 2094 16:00:00 GMT": 3942057600.0,
    "Thursday, 01-Dec-94 16:00:00 GMT": 786297600.0,  # rfc850: 2094 is > 50 y ahead
    "Thu Dec  1 16:00:00 2094": 3942057600.0,  # asctime
}
INVALID_EXPIRES = {
    "2-digit year": "Thu, 01 Dec 94 16:00:00 GMT",
    "UTC": "Thu, 01 Dec 2094 16:00:00 UTC",
    "AEST": "Thu, 01 Dec 2094 16:00:00 AEST",
    "no comma": "Thu 01 Dec 2094 16:00:00 GMT",
    "several spaces": "Thu, 01 Dec 2094  16:00:00  GMT",
    "dashes": "Thu, 01-Dec-2094 16:00:00 GMT",
    "periods": "Thu, 01 Dec 2094 16.00.00 GMT",
    "1-digit hour": "Thu, 01 Dec 2094 6:00:00 GMT",
    "several lines": "Thu, 01 Dec 2094 16:00:00 GMT, Thu, 01 Dec 2094 16:00:00 GMT",
    "lower case": "thu, 01 dec 2094 16:00:00 gmt",
    "hour 25": "Thu, 01 Dec 2094 25:00:00 GMT",
    "zero": "0",
    "empty": "",
}

@pytest.mark.parametrize("value", sorted(VALID_DATES))
def test_the_three_http_date_formats_parse(value):
    assert http_date(value, NOW) == VALID_DATES[value]

@pytest.mark.parametrize("case", sorted(INVALID_EXPIRES))
def test_an_invalid_expires_is_already_stale(case):
    headers = {"date": DATE, "expires": INVALID_EXPIRES[case]}
    assert http_date(INVALID_EXPIRES[case], NOW) is None
    assert standard_lifetime(200, headers, NOW) == 0
    assert store_refusal(STANDARD, 200, headers) == "no-freshness"

def test_a_valid_expires_is_fresh_until_then():
    headers = {"date": DATE, "expires": "Thu, 01 Dec 2094 16:00:00 GMT"}
    assert standard_lifetime(200, headers, NOW) == 3942057600.0 - NOW
    assert store_refusal(STANDARD, 200, headers) is None

def test_expires_counts_from_the_date_of_a_skewed_origin_clock():
    # The origin's clock is an hour behind ours: Expires - Date is still 10 minutes.
    skewed = {"date": "Tue, 01 Dec 2026 08:00:00 GMT",
              "expires": "Tue, 01 Dec 2026 08:10:00 GMT"}
    fresh = freshness(STANDARD, 200, skewed, NOW, NOW, 60)
    assert fresh.lifetime == 600
    # ...and the apparent age (our clock - Date) counts too: RFC 9111 4.2.3.
    assert not fresh.is_fresh(NOW)
    ahead = {"date": "Tue, 01 Dec 2026 10:00:00 GMT",
             "expires": "Tue, 01 Dec 2026 10:10:00 GMT"}  # an hour ahead: no apparent age
    fresh = freshness(STANDARD, 200, ahead, NOW, NOW, 60)
    assert fresh.is_fresh(NOW + 599) and not fresh.is_fresh(NOW + 600)

def test_expires_without_date_counts_from_the_time_received():
    headers = {"expires": "Tue, 01 Dec 2026 09:10:00 GMT"}
    assert standard_lifetime(200, headers, NOW) == 600
    assert standard_lifetime(200, headers) == 0  # nothing to count from

# --- 3. Age --------------------------------------------------------------------------

def test_upstream_age_counts_towards_the_current_age():
    headers = {"date": DATE, "cache-control": "max-age=3600", "age": "3590"}
    fresh = freshness(STANDARD, 200, headers, NOW, NOW, 60)
    assert fresh.is_fresh(NOW + 9) and not fresh.is_fresh(NOW + 10)
    without = freshness(STANDARD, 200, {"date": DATE, "cache-control": "max-age=3600"},
                        NOW, NOW, 60)
    assert without.is_fresh(NOW + 3599)

def test_current_age_is_upstream_age_plus_transit_plus_resident_time():
    headers = {"date": DATE, "age": "100", "cache-control": "max-age=3600"}
    assert initial_age(headers, NOW - 2, NOW) == 102
    fresh = freshness(STANDARD, 200, headers, NOW - 2, NOW, 60)
    assert fresh.age(NOW + 30) == 132
    # a Date further back than Age says wins (apparent age)
    assert initial_age({"date": "Tue, 01 Dec 2026 08:50:00 GMT", "age": "5"}, NOW, NOW) == 600
    assert initial_age({"age": "junk"}, NOW, NOW) == 0
    assert initial_age({"age": "-5"}, NOW, NOW) == 0

def test_a_response_without_date_is_dated_when_received():
    assert with_date([("ETag", '"x"')], NOW) == [("ETag", '"x"'), ("Date", DATE)]
    assert with_date([("date", "x")], NOW) == [("date", "x")]

# --- 4. negative responses ----------------------------------------------------------

@pytest.mark.parametrize("headers", [
    {"cache-control": "max-age=0"}, {"cache-control": "no-cache"},
    {"date": DATE, "expires": "Tue, 01 Dec 2026 08:00:00 GMT"}, {"expires": "0"},
])
@pytest.mark.parametrize("status", [404, 410])
def test_a_negative_with_its_own_zero_freshness_is_not_reused(status, headers):
    for rule in (STANDARD, IMMUTABLE):
        assert lifetime(rule, status, headers, 60, NOW) == 0
        assert store_refusal(rule, status, headers) == "no-freshness"
    assert store_refusal(STANDARD, status, {"cache-control": "no-store"}) == "no-store"

def test_a_negative_without_freshness_lives_negative_ttl():
    for rule in (STANDARD, IMMUTABLE):
        assert lifetime(rule, 404, {}, 60, NOW) == 60
        assert store_refusal(rule, 404, {}) is None

def test_a_negative_with_a_lifetime_follows_it_capped_under_catalogue_rules():
    headers = {"cache-control": "max-age=300"}
    assert lifetime(STANDARD, 410, headers, 60, NOW) == 300
    assert lifetime(IMMUTABLE, 410, headers, 60, NOW) == 60
    assert lifetime(IMMUTABLE, 404, {"cache-control": "max-age=5"}, 60, NOW) == 5

# --- 5. Vary: * ------------------------------------------------------------------------

@pytest.mark.parametrize("vary", ["*", "*, *", ", *", "*, foo", "foo, *", "accept, *",
                                  " * ", "accept-encoding, *"])
def test_vary_star_in_any_form_is_never_stored(vary):
    headers = {"vary": vary, "cache-control": "max-age=600"}
    assert vary_star(vary)
    for rule in (STANDARD, IMMUTABLE):
        assert store_refusal(rule, 200, headers) == "vary-star"

@pytest.mark.parametrize("vary", ["accept", "accept, accept-encoding", "x-star*", ""])
def test_vary_without_star_is_stored(vary):
    assert not vary_star(vary)
    assert store_refusal(STANDARD, 200, {"vary": vary, "cache-control": "max-age=600"}) is None

# --- 6. Connection ---------------------------------------------------------------------

def test_fields_named_in_connection_are_not_replayed():
    pairs = [("Connection", "X-Hop, x-other"), ("X-Hop", "1"), ("X-Other", "2"),
             ("X-Kept", "3"), ("Keep-Alive", "timeout=5"), ("ETag", '"e"')]
    assert replayable(pairs) == [("X-Kept", "3"), ("ETag", '"e"')]

# --- 7. invalidation -------------------------------------------------------------------

@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "M-SEARCH", "FOO",
                                    "PROPFIND", "get"])
def test_a_method_not_known_to_be_safe_invalidates(method):
    assert invalidates(method, 200) and invalidates(method, 303)
    assert not invalidates(method, 404) and not invalidates(method, 500)

@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "TRACE"])
def test_a_safe_method_does_not_invalidate(method):
    assert not invalidates(method, 200)

# --- 9. request targets a URI cannot carry ---------------------------------------------

@pytest.mark.parametrize("target", ["/a\xc9b", "/a b", "/a\x01b", "/a%01b", "/a%7fb",
                                    "/a%0d%0ab", "/a\tb", "/\x7f", "/a?q=\xff"])
def test_targets_a_uri_cannot_carry_are_refused(target):
    assert normalise_path(target) is None

@pytest.mark.parametrize("target", ["/a%C3%A9b", "/a?q=%FF", "/simple/x/", "/@s%2fp",
                                    "/a~b!$&'()*+,;=:@"])
def test_targets_a_uri_can_carry_are_kept(target):
    assert normalise_path(target) == target

def test_client_error_lines_are_rate_limited():
    now = [0.0]
    budget = LogBudget(lambda: now[0], lines=3, seconds=10)
    assert [budget.take() for _ in range(5)] == [0, 0, 0, None, None]
    now[0] = 10.0
    assert budget.take() == 2, "the next line logged says how many were not"
    assert budget.take() == 0
