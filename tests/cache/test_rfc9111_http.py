"""Issue 19 through real sockets: the gateway in this process in front of a scripted origin
(``tests/raw_origin.py``) that writes each response byte for byte and records each request.

``artifacts.example`` is an entry added as a user adds one (``[upstreams.artifacts]`` with
hosts and origin, no rules: ``standard``); ``repo1.maven.org`` is the built-in Maven entry.
Every behaviour has its twin: a hit is zero origin requests, a refusal to reuse is one more.
The pure side is in test_rfc9111.py.
"""

from __future__ import annotations

import socket
from dataclasses import replace
from typing import Callable

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task, threads
from twisted.logger import LogLevel, globalLogPublisher

from gateway.cache.rules import Policy, Rule
from gateway.config import apply_upstream_tables
from tests.gateways import RunningGateway, Started, gateway_config
from tests.http_client import fetch, raw_get
from tests.raw_origin import RawOrigin, RawRequest, http_date, response

USER_HOST = "artifacts.example"
MAVEN_HOST = "repo1.maven.org"


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


def now() -> float:
    return reactor.seconds()


@pytest.fixture
def raw():  # type: ignore[no-untyped-def]
    server = RawOrigin(reactor).listen()
    yield server
    pytest_twisted.blockon(defer.maybeDeferred(server.stop))


@pytest.fixture
def gateway(tmp_path, raw):  # type: ignore[no-untyped-def]
    """``gateway(rules=None, **cache)``: built-in entries at ``raw.url/<name>``, plus the
    user's ``artifacts`` entry at ``raw.url/artifacts``."""
    started = Started()

    def start(rules: dict | None = None, **cache: object) -> RunningGateway:
        config = gateway_config(tmp_path / f"state{len(started)}", raw.url, rules, **cache)
        upstreams = apply_upstream_tables(config.upstreams, {"artifacts": {
            "hosts": [USER_HOST], "origin": f"{raw.url}/artifacts"}}, "<test>")
        return started.add(RunningGateway(replace(config, upstreams=upstreams)))

    yield start
    started.stop_all()


@pytest.fixture
def log_events():  # type: ignore[no-untyped-def]
    events: list[dict] = []
    observer = events.append
    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


def dated(*headers: tuple[str, str]) -> list[tuple[str, str]]:
    return [("Date", http_date(now())), *headers]


def fixed(status: int, headers: list[tuple[str, str]],
          body: bytes = b"body\n") -> Callable[[RawRequest], bytes]:
    """An answer: this response every time, ``Date`` now unless ``headers`` has one."""
    def answer(request: RawRequest) -> bytes:
        has_date = any(n.lower() == "date" for n, _ in headers)
        return response(status, headers if has_date else dated(*headers), body)
    return answer


# --- 1. end-to-end request headers ------------------------------------------------

def needs_api_version(request: RawRequest) -> bytes:
    if request.headers.get("x-api-version") != "3":
        return response(400, dated(), b"X-Api-Version: 3 required\n")
    return response(200, dated(("Cache-Control", "max-age=600")), b"the artifact\n")


CUSTOM = "X-Api-Version: 3\r\nX-Request-Id: req-1\r\ntraceparent: 00-ab-cd-01\r\n"


@pytest_twisted.inlineCallbacks
def test_a_user_entry_forwards_every_end_to_end_request_header(gateway, raw):
    raw.answer("/artifacts/lib/a.jar", needs_api_version)
    gw = gateway()
    extra = CUSTOM + "Range: bytes=0-2\r\nIf-Match: \"m\"\r\nConnection: x-hop\r\nX-Hop: 1\r\n"
    head, body, _ = yield raw_get(gw.port, USER_HOST, "/lib/a.jar", extra=extra)
    assert head.startswith("HTTP/1.1 206") and body == b"the"
    sent = raw.requests[-1].headers
    assert sent["x-api-version"] == "3" and sent["x-request-id"] == "req-1"
    assert sent["traceparent"] == "00-ab-cd-01"
    for managed in ("range", "if-match", "x-hop"):  # the cache's own, and hop-by-hop
        assert managed not in sent, managed
    again = yield fetch(gw.port, USER_HOST, "/lib/a.jar")
    assert again.headers["x-cache"] == "HIT" and raw.count("/artifacts/lib/a.jar") == 1


@pytest_twisted.inlineCallbacks
def test_a_built_in_entry_forwards_the_narrow_list_only(gateway, raw):
    path = "/maven2/org/ex/a/1.0/a-1.0.jar"
    raw.answer("/maven" + path, needs_api_version)
    gw = gateway()
    head, _, _ = yield raw_get(gw.port, MAVEN_HOST, path, extra=CUSTOM + "Accept: */*\r\n")
    assert head.startswith("HTTP/1.1 400"), "the origin never saw the custom header"
    assert set(raw.requests[-1].headers) <= {"host", "accept", "accept-encoding",
                                             "accept-language", "user-agent", "connection"}
    assert raw.requests[-1].headers["accept"] == "*/*"


@pytest_twisted.inlineCallbacks
def test_a_user_rule_on_a_built_in_entry_forwards_end_to_end(gateway, raw):
    path = "/maven2/internal/a.jar"
    raw.answer("/maven" + path, needs_api_version)
    gw = gateway(rules={"maven": (Rule("^/maven2/internal/", Policy.STANDARD,
                                       end_to_end_headers=True),)})
    head, body, _ = yield raw_get(gw.port, MAVEN_HOST, path, extra=CUSTOM)
    assert head.startswith("HTTP/1.1 200") and body == b"the artifact\n"


# --- 2. Expires ----------------------------------------------------------------------

INVALID_EXPIRES = {
    "2-digit-year": [("Expires", "Thu, 01 Dec 94 16:00:00 GMT")],
    "utc": [("Expires", "Thu, 01 Dec 2094 16:00:00 UTC")],
    "aest": [("Expires", "Thu, 01 Dec 2094 16:00:00 AEST")],
    "no-comma": [("Expires", "Thu 01 Dec 2094 16:00:00 GMT")],
    "spaces": [("Expires", "Thu, 01 Dec 2094  16:00:00  GMT")],
    "dashes": [("Expires", "Thu, 01-Dec-2094 16:00:00 GMT")],
    "periods": [("Expires", "Thu, 01 Dec 2094 16.00.00 GMT")],
    "1-digit-hour": [("Expires", "Thu, 01 Dec 2094 6:00:00 GMT")],
    "two-lines": [("Expires", "Thu, 01 Dec 2094 16:00:00 GMT"),
                  ("Expires", "Thu, 01 Dec 2094 16:00:00 GMT")],
}


@pytest_twisted.inlineCallbacks
def test_a_valid_expires_is_reused_and_invalid_ones_are_not(gateway, raw):
    cases = {"valid": [("Expires", "Thu, 01 Dec 2094 16:00:00 GMT")], **INVALID_EXPIRES}
    for name, headers in cases.items():
        raw.answer(f"/artifacts/expires/{name}", fixed(200, headers))
    gw = gateway()
    for name in cases:
        for _ in range(2):
            reply = yield fetch(gw.port, USER_HOST, f"/expires/{name}")
            assert reply.status == 200 and reply.body == b"body\n"
    counts = {name: raw.count(f"/artifacts/expires/{name}") for name in cases}
    assert counts == {"valid": 1, **{name: 2 for name in INVALID_EXPIRES}}


@pytest_twisted.inlineCallbacks
def test_expires_counts_from_the_origins_date_not_our_clock(gateway, raw):
    ahead = now() + 3600  # the origin's clock is an hour ahead of ours
    raw.answer("/artifacts/skew/fresh", lambda r: response(200, [
        ("Date", http_date(ahead)), ("Expires", http_date(ahead + 600))], b"x"))
    # Expires is 50 minutes ahead of *our* clock, but 10 minutes before the response's
    # own Date: stale from the start (RFC 9111 4.2.1: Expires - Date).
    raw.answer("/artifacts/skew/stale", lambda r: response(200, [
        ("Date", http_date(ahead)), ("Expires", http_date(ahead - 600))], b"x"))
    gw = gateway()
    for name in ("fresh", "stale"):
        for _ in range(2):
            yield fetch(gw.port, USER_HOST, f"/skew/{name}")
    assert raw.count("/artifacts/skew/fresh") == 1
    assert raw.count("/artifacts/skew/stale") == 2


# --- 3. Age --------------------------------------------------------------------------

@pytest_twisted.inlineCallbacks
def test_upstream_age_counts_towards_freshness(gateway, raw):
    raw.answer("/artifacts/age/3590", fixed(200, [("Cache-Control", "max-age=3600"),
                                                  ("Age", "3590")]))
    raw.answer("/artifacts/age/3600", fixed(200, [("Cache-Control", "max-age=3600"),
                                                  ("Age", "3600")]))
    gw = gateway()
    for name in ("3590", "3600"):
        for _ in range(2):
            yield fetch(gw.port, USER_HOST, f"/age/{name}")
    assert raw.count("/artifacts/age/3590") == 1, "10 s of freshness left: reused"
    assert raw.count("/artifacts/age/3600") == 2, "as old as max-age: stale on arrival"


@pytest_twisted.inlineCallbacks
def test_age_sent_is_upstream_age_plus_transit_plus_time_in_the_cache(gateway, raw):
    raw.answer("/artifacts/age/100", fixed(200, [("Cache-Control", "max-age=3600"),
                                                 ("Age", "100")]))
    raw.answer("/artifacts/age/none", fixed(200, [("Cache-Control", "max-age=3600")]))
    gw = gateway()
    miss = yield fetch(gw.port, USER_HOST, "/age/100")
    fresh_miss = yield fetch(gw.port, USER_HOST, "/age/none")
    assert miss.headers["x-cache"] == "MISS" and int(miss.headers["age"]) >= 100
    assert "age" not in fresh_miss.headers, "a response straight from the origin has no Age"
    yield sleep(1.2)
    hit = yield fetch(gw.port, USER_HOST, "/age/100")
    fresh_hit = yield fetch(gw.port, USER_HOST, "/age/none")
    assert hit.headers["x-cache"] == "HIT" and int(hit.headers["age"]) >= 101
    assert fresh_hit.headers["x-cache"] == "HIT" and 1 <= int(fresh_hit.headers["age"]) < 100


@pytest_twisted.inlineCallbacks
def test_a_relayed_response_keeps_the_upstreams_age(gateway, raw):
    raw.answer("/artifacts/age/private", fixed(200, [("Cache-Control", "max-age=3600"),
                                                     ("Age", "77")]))
    gw = gateway()
    for _ in range(2):
        reply = yield fetch(gw.port, USER_HOST, "/age/private", {"Authorization": "Bearer t"})
        assert reply.headers["x-cache"] == "PASS" and reply.headers["age"] == "77"
    assert raw.count("/artifacts/age/private") == 2


def revalidated_by(age_in_304: str | None):  # type: ignore[no-untyped-def]
    """200 that is stale on arrival (Age 500 > max-age 400); a 304 for its ETag, dated
    now, with ``age_in_304`` as its Age."""
    def answer(request: RawRequest) -> bytes:
        if request.headers.get("if-none-match") == '"v1"':
            extra = [("Age", age_in_304)] if age_in_304 else []
            return response(304, dated(("ETag", '"v1"'), ("Cache-Control", "max-age=400"),
                                       *extra))
        return response(200, [("Date", http_date(now())), ("ETag", '"v1"'),
                              ("Cache-Control", "max-age=400"), ("Age", "500")], b"v1 body")
    return answer


@pytest_twisted.inlineCallbacks
def test_a_304_replaces_the_stored_age_and_date(gateway, raw):
    raw.answer("/artifacts/reval/fresh-304", revalidated_by(None))
    raw.answer("/artifacts/reval/old-304", revalidated_by("500"))
    gw = gateway()
    for name in ("fresh-304", "old-304"):
        first = yield fetch(gw.port, USER_HOST, f"/reval/{name}")
        assert first.headers["x-cache"] == "MISS" and int(first.headers["age"]) >= 500
        second = yield fetch(gw.port, USER_HOST, f"/reval/{name}")
        assert second.headers["x-cache"] == "REVALIDATED" and second.body == b"v1 body"
        yield fetch(gw.port, USER_HOST, f"/reval/{name}")
    assert int(second.headers["age"]) >= 500  # old-304's: its Age counts
    assert raw.count("/artifacts/reval/fresh-304") == 2, "after the 304 it is fresh: a hit"
    assert raw.count("/artifacts/reval/old-304") == 3, "the 304 said it is old: revalidated"


# --- 4. negative responses -------------------------------------------------------------

NEGATIVES = {
    "max-age-0": [("Cache-Control", "max-age=0")],
    "no-cache": [("Cache-Control", "no-cache")],
    "no-store": [("Cache-Control", "no-store")],
    "expired": [("Expires", "Thu, 01 Dec 1994 16:00:00 GMT")],
}


@pytest.mark.parametrize("host,prefix,origin_prefix", [
    (USER_HOST, "/neg", "/artifacts/neg"),
    (MAVEN_HOST, "/maven2/org/ex/neg/1.0", "/maven/maven2/org/ex/neg/1.0"),
])
@pytest_twisted.inlineCallbacks
def test_a_negative_follows_its_own_freshness_else_negative_ttl(gateway, raw, host, prefix,
                                                                 origin_prefix):
    cases = {"bare": [], **NEGATIVES}
    for status in (404, 410):
        for name, headers in cases.items():
            raw.answer(f"{origin_prefix}/{status}-{name}.jar", fixed(status, headers))
    gw = gateway(negative_ttl=60)
    for status in (404, 410):
        for name in cases:
            for _ in range(2):
                reply = yield fetch(gw.port, host, f"{prefix}/{status}-{name}.jar")
                assert reply.status == status
    counts = {(s, n): raw.count(f"{origin_prefix}/{s}-{n}.jar") for s in (404, 410)
              for n in cases}
    assert counts == {(s, n): 1 if n == "bare" else 2 for s in (404, 410) for n in cases}


# --- 5. Vary: * ----------------------------------------------------------------------------

VARY_STAR = {
    "star": [("Vary", "*")],
    "star-star": [("Vary", "*, *")],
    "empty-star": [("Vary", ", *")],
    "star-foo": [("Vary", "*, foo")],
    "foo-star": [("Vary", "foo, *")],
    "second-line": [("Vary", "accept"), ("Vary", "*")],
}


@pytest_twisted.inlineCallbacks
def test_vary_star_in_any_form_is_never_reused(gateway, raw):
    cases = {"accept": [("Vary", "accept")], **VARY_STAR}
    for name, headers in cases.items():
        raw.answer(f"/artifacts/vary/{name}",
                   fixed(200, [("Cache-Control", "max-age=600"), *headers]))
    gw = gateway()
    for name in cases:
        for _ in range(2):
            reply = yield fetch(gw.port, USER_HOST, f"/vary/{name}", {"Accept": "text/plain"})
            assert reply.body == b"body\n"
    counts = {name: raw.count(f"/artifacts/vary/{name}") for name in cases}
    assert counts == {"accept": 1, **{name: 2 for name in VARY_STAR}}


# --- 6. Connection -----------------------------------------------------------------------

@pytest_twisted.inlineCallbacks
def test_response_fields_named_in_connection_are_neither_stored_nor_forwarded(gateway, raw):
    raw.answer("/artifacts/conn", fixed(200, [
        ("Cache-Control", "max-age=600"), ("Connection", "X-Hop, x-other"), ("X-Hop", "1"),
        ("X-Other", "2"), ("X-Kept", "3")]))
    gw = gateway()
    miss = yield fetch(gw.port, USER_HOST, "/conn")
    hit = yield fetch(gw.port, USER_HOST, "/conn")
    head, _, _ = yield raw_get(gw.port, USER_HOST, "/conn")
    assert (miss.headers["x-cache"], hit.headers["x-cache"]) == ("MISS", "HIT")
    for reply in (miss.headers, hit.headers):
        assert reply["x-kept"] == "3"
        assert "x-hop" not in reply and "x-other" not in reply
    assert "X-Hop" not in head and "X-Other" not in head and "X-Kept: 3" in head
    entry, = gw.store.entries()
    assert {n.lower() for n, _ in entry.meta.headers} & {"x-hop", "x-other", "connection"} == set()


# --- 7. invalidation ---------------------------------------------------------------------

@pytest.mark.parametrize("method,invalidates", [("M-SEARCH", True), ("FOO", True),
                                                ("POST", True), ("OPTIONS", False)])
@pytest_twisted.inlineCallbacks
def test_a_method_not_known_to_be_safe_invalidates_every_variant(gateway, raw, method,
                                                                 invalidates):
    def answer(request: RawRequest) -> bytes:
        if request.method != "GET":
            return response(200, dated(), b"done")
        return response(200, dated(("Cache-Control", "max-age=600"), ("Vary", "Accept")),
                        request.headers.get("accept", "").encode())
    raw.answer("/artifacts/inv", answer)
    gw = gateway()
    variants = ({"Accept": "text/a"}, {"Accept": "text/b"})
    for accept in variants * 2:
        yield fetch(gw.port, USER_HOST, "/inv", accept)
    assert raw.count("/artifacts/inv", "GET") == 2
    other = yield fetch(gw.port, USER_HOST, "/inv", method=method)
    assert other.status == 200 and raw.count("/artifacts/inv", method) == 1
    labels = []
    for accept in variants:
        reply = yield fetch(gw.port, USER_HOST, "/inv", accept)
        assert reply.body == accept["Accept"].encode()
        labels.append(reply.headers["x-cache"])
    assert labels == (["MISS", "MISS"] if invalidates else ["HIT", "HIT"])


# --- 8. interim responses ------------------------------------------------------------------

EARLY_HINTS = (b"HTTP/1.1 103 Early Hints\r\nLink: </hint.css>; rel=preload\r\n\r\n"
               b"HTTP/1.1 100 Continue\r\n\r\n")


@pytest_twisted.inlineCallbacks
def test_interim_responses_are_dropped_and_the_final_one_is_unaffected(gateway, raw):
    """twisted.web's client discards a 1xx and its server cannot send one: the client gets
    the final response alone, exactly as the origin sent it, and that is what is stored."""
    raw.answer("/artifacts/hints", lambda r: response(200, dated(
        ("Cache-Control", "max-age=600"), ("X-Final", "yes")), b"final body", interim=EARLY_HINTS))
    raw.answer("/artifacts/linked", lambda r: response(200, dated(
        ("Cache-Control", "max-age=600"), ("Link", "</own.css>; rel=preload")), b"linked",
        interim=EARLY_HINTS))
    gw = gateway()
    head, body, _ = yield raw_get(gw.port, USER_HOST, "/hints")
    assert head.startswith("HTTP/1.1 200") and body == b"final body"
    assert "103" not in head and "hint.css" not in head and "X-Final: yes" in head
    hit = yield fetch(gw.port, USER_HOST, "/hints")
    assert hit.headers["x-cache"] == "HIT" and hit.body == b"final body"
    assert "link" not in hit.headers
    linked = yield fetch(gw.port, USER_HOST, "/linked")  # the twin: a final Link is kept
    assert linked.headers["link"] == "</own.css>; rel=preload" and linked.body == b"linked"
    assert raw.count("/artifacts/hints") == 1


# --- 9. bad bytes in a request -------------------------------------------------------------

def exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except (socket.timeout, ConnectionResetError):
            pass
        return b"".join(chunks)


BAD_BYTES = {
    "host-0xc9": b"GET /lib/a.jar HTTP/1.1\r\nHost: artifacts.exampl\xc9\r\n",
    "host-0xc9-built-in": b"GET /maven2/a.jar HTTP/1.1\r\nHost: repo1.maven.org\xc9\r\n",
    "path-0xc9": b"GET /lib/\xc9.jar HTTP/1.1\r\nHost: artifacts.example\r\n",
    "path-0xff-query": b"GET /lib/a.jar?\xff HTTP/1.1\r\nHost: artifacts.example\r\n",
    "path-control-encoded": b"GET /lib/%01a.jar HTTP/1.1\r\nHost: artifacts.example\r\n",
    "path-crlf-encoded": b"GET /lib/%0d%0aX:%20y HTTP/1.1\r\nHost: artifacts.example\r\n",
    "absolute-0xc9": b"GET http://artifacts.example/\xc9 HTTP/1.1\r\nHost: artifacts.example\r\n",
    "absolute-host-0xc9": b"GET http://artifacts.exampl\xc9/a HTTP/1.1\r\nHost: x\r\n",
    "two-hosts": b"GET /lib/a.jar HTTP/1.1\r\nHost: artifacts.example\r\nHost: evil\r\n",
    "user-agent-0xc9": None,  # a bad byte in another field is fine: see below
}


@pytest_twisted.inlineCallbacks
def test_bad_request_bytes_are_a_400_without_a_traceback_or_an_origin_request(
        gateway, raw, log_events):
    raw.answer("/artifacts/lib/a.jar", fixed(200, [("Cache-Control", "max-age=600")]))
    gw = gateway()
    for name, head in BAD_BYTES.items():
        if head is None:
            continue
        reply = yield threads.deferToThread(exchange, gw.port,
                                            head + b"Connection: close\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 400"), (name, reply[:200])
    assert raw.requests == [], [r.head for r in raw.requests]
    # the twin: a clean request, and one whose other header has a non-UTF-8 byte, are served
    reply = yield threads.deferToThread(exchange, gw.port, b"GET /lib/a.jar HTTP/1.1\r\n"
                                        b"Host: artifacts.example\r\nUser-Agent: \xc9\r\n"
                                        b"Connection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"body\n")
    critical = [e for e in log_events if e.get("log_level") == LogLevel.critical]
    assert critical == [], critical[0].get("log_format") if critical else None
    warned = [e for e in log_events if e.get("log_level") == LogLevel.warn and
              e.get("log_namespace") == "gateway.front.handler"]
    assert len(warned) == len(BAD_BYTES) - 1, "one warn line per bad request"


@pytest_twisted.inlineCallbacks
def test_a_flood_of_bad_requests_costs_a_bounded_number_of_log_lines(gateway, raw, log_events):
    from gateway.front.client_errors import LINES
    gw = gateway()
    bad = b"GET /%01 HTTP/1.1\r\nHost: artifacts.example\r\n\r\n" * 60  # one connection
    reply = yield threads.deferToThread(exchange, gw.port, bad + b"GET /x HTTP/1.1\r\n"
                                        b"Host: artifacts.example\r\nConnection: close\r\n\r\n")
    assert reply.count(b"HTTP/1.1 400") == 60 and reply.count(b"HTTP/1.1 404") == 1
    warned = [e for e in log_events if e.get("log_level") == LogLevel.warn and
              e.get("log_namespace") == "gateway.front.handler"]
    assert len(warned) == LINES, "past the budget, bad requests are counted, not logged"
    assert raw.count("/artifacts/x") == 1 and len(raw.requests) == 1
