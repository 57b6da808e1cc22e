"""The operator's series on ``/metrics`` against a gateway in this process: request
durations, upstream requests and errors by kind, integrity failures, the engine's pure
error classification; each counted series has a case that leaves it at zero."""

from __future__ import annotations

import shutil
import subprocess

import pytest_twisted
from dnslib import DNSRecord
from OpenSSL import SSL
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, error, reactor, task, threads
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseNeverReceived

from gateway.cache.events import EngineEvents, failure_kind
from gateway.cache.stats import Histogram
from tests.admin_gateways import ALPINE_HOST, PYPI_HOST, admin, serve_two
from tests.clients import need
from tests.dns_helpers import UdpClient
from tests.fixtures import counter_bytes, put_object
from tests.http_client import fetch

BAD_WHEEL = "/packages/aa/bb/" + "0" * 60 + "/bad-1.0-py3-none-any.whl"


@defer.inlineCallbacks
def scrape(gw):  # type: ignore[no-untyped-def]
    reply = yield admin(gw, "GET", "/metrics")
    assert reply.status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(reply.body.decode())
            for s in family.samples}


def test_histogram_buckets_are_cumulative_with_inf_last():
    h = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 7.0):
        h.observe(value)
    assert h.cumulative() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert h.count == 4 and abs(h.total - 7.65) < 1e-9


def test_failure_kinds_see_through_the_http_clients_wrapping():
    wrapped = Failure(ResponseNeverReceived([Failure(error.TimeoutError())]))
    assert failure_kind(wrapped) == "timeout"
    assert failure_kind(Failure(error.ConnectionRefusedError())) == "connect"
    assert failure_kind(Failure(error.DNSLookupError("x"))) == "connect"
    assert failure_kind(Failure(ResponseNeverReceived([Failure(error.ConnectionLost())]))) \
        == "reset"
    assert failure_kind(Failure(defer.TimeoutError())) == "timeout"
    tls = Failure(SSL.Error([("SSL routines", "", "certificate verify failed")]))
    assert failure_kind(Failure(ResponseNeverReceived([tls]))) == "tls"
    assert failure_kind(Failure(KeyError("?"))) == "other"
    events = EngineEvents()
    events.upstream_error("pypi", "made-up")
    assert events.upstream_errors == {("pypi", "other"): 1}


@pytest_twisted.inlineCallbacks
def test_request_durations_and_upstream_requests_count_what_was_served(bare_origin,
                                                                        admin_gateway):
    gw = admin_gateway(bare_origin.url)
    yield serve_two(bare_origin, gw)
    s = yield scrape(gw)
    count = "cachegate_request_duration_seconds_count"
    assert s[(count, (("ecosystem", "pypi"), ("label", "MISS")))] == 1
    assert s[(count, (("ecosystem", "pypi"), ("label", "HIT")))] == 1
    assert s[(count, (("ecosystem", "alpine"), ("label", "MISS")))] == 1
    inf = (("ecosystem", "pypi"), ("label", "HIT"), ("le", "+Inf"))
    assert s[("cachegate_request_duration_seconds_bucket", inf)] == 1
    assert s[("cachegate_upstream_requests_total", (("ecosystem", "pypi"),))] == 1
    assert s[("cachegate_upstream_fetch_duration_seconds_count", (("ecosystem", "alpine"),))] == 1
    for name in ("cachegate_upstream_errors_total", "cachegate_integrity_failures_total",
                 "cachegate_drift_events_total"):  # at 0 from the start, for increase()
        series = [v for (n, _), v in s.items() if n == name]
        assert series and not any(series), name
    assert s[("cachegate_upstream_errors_total", (("ecosystem", "npm"), ("kind", "tls")))] == 0
    assert s[("cachegate_stale_responses_total", (("ecosystem", "pypi"),))] == 0
    assert s[("cachegate_passthrough_rejections_total", ())] == 0
    assert s[("cachegate_cache_evictions_total", ())] == 0
    assert ("cachegate_dns_forward_duration_seconds_count", ()) in s
    labels = {dict(key).get(k) for _, key in s for k in ("client", "url", "path")}
    assert labels == {None}, "no client or URL labels"


@pytest_twisted.inlineCallbacks
def test_upstream_errors_by_kind_and_integrity_failures(bare_origin, admin_gateway):
    gw = admin_gateway(bare_origin.url)
    put_object(bare_origin.root, "pypi", BAD_WHEEL, counter_bytes(3000, b"not what it says"))
    try:  # the body does not match the blake2b its URL names: aborted, never stored
        yield fetch(gw.port, PYPI_HOST, BAD_WHEEL)
    except Exception:
        pass
    apk = "/alpine/v3.19/main/x86_64/b-1.0-r0.apk"
    put_object(bare_origin.root, "alpine", apk, b"apk")
    bare_origin.behave("/alpine" + apk, status=503)
    reply = yield fetch(gw.port, ALPINE_HOST, apk)
    assert reply.status == 503
    yield bare_origin.stop_serving()
    reply = yield fetch(gw.port, ALPINE_HOST, apk.replace("b-1.0", "c-1.0"))
    assert reply.status == 502
    s = yield scrape(gw)
    assert s[("cachegate_integrity_failures_total", (("ecosystem", "pypi"),
                                                     ("stage", "download")))] == 1
    errors = {dict(k)["kind"]: v for (name, k), v in s.items()
              if name == "cachegate_upstream_errors_total" and dict(k)["ecosystem"] == "alpine"
              and v}
    assert errors == {"5xx": 1, "connect": 1}
    assert s[("cachegate_upstream_requests_total", (("ecosystem", "alpine"),))] == 2


@pytest_twisted.inlineCallbacks
def test_promtool_finds_nothing_to_lint_in_the_metrics(bare_origin, admin_gateway):
    """Prometheus' own linter on a live scrape: names, units, counters' _total, help."""
    need(shutil.which("promtool"), "promtool not installed (Debian package prometheus)")
    gw = admin_gateway(bare_origin.url)
    yield serve_two(bare_origin, gw)
    reply = yield admin(gw, "GET", "/metrics")
    done = yield threads.deferToThread(subprocess.run, ["promtool", "check", "metrics"],
                                       input=reply.body, capture_output=True, timeout=60)
    assert done.returncode == 0, (done.stdout + done.stderr).decode()


@pytest_twisted.inlineCallbacks
def test_forwarded_dns_queries_are_timed_and_answers_from_memory_are_not(bare_origin,
                                                                          admin_gateway):
    """The test gateway's forwarder is a closed port: the forwarded query fails (SERVFAIL)
    and is timed; a redirected name is answered from the rules, untimed."""
    gw = admin_gateway(bare_origin.url)
    client = UdpClient(reactor, gw.service.ports("dns")[0])
    try:
        yield client.ask(DNSRecord.question(PYPI_HOST, "A"), timeout=2)
        s = yield scrape(gw)
        assert s[("cachegate_dns_forward_duration_seconds_count", ())] == 0
        reply = yield client.ask(DNSRecord.question("example.com", "A"), timeout=5)
        assert reply is not None
    finally:
        yield client.close()
    s = yield scrape(gw)
    assert s[("cachegate_dns_forward_duration_seconds_count", ())] == 1
    assert s[("cachegate_dns_forward_duration_seconds_bucket", (("le", "+Inf"),))] == 1


def test_passthrough_and_stale_series_come_from_the_stats_document():
    from gateway.ops.metrics import Live, metrics_registry, render
    tally = {"requests": {"STALE": 2, "HIT": 1}, "hit_ratio": 1.0, "bytes_from_cache": 9,
             "bytes_from_upstream": 0}
    doc = {"gateway": {"ecosystems": {"debian": tally}},
           "dns": {k: 0 for k in ("queries", "redirected", "forwarded", "cache_hits",
                                  "refused", "errors")},
           "cache": {"ecosystems": {}, "bytes": 0, "limit": 1}, "downloads": {"active": 0},
           "tls": {"refused": 0, "minted": 0}, "uptime": 1.0,
           "passthrough": {"rejected": 3, "tunnelled": 2, "untrusting_clients": [
               {"client": "172.17.0.2", "host": "pypi.org", "rejected": 3, "tunnelled": 2,
                "tunnel_failures": 1}]}}
    live = Live({}, EngineEvents(), Histogram((1.0,)), 4, ("debian", "npm"))
    text = render(metrics_registry(lambda: doc, lambda: live)).decode()
    s = {(x.name, tuple(sorted(x.labels.items()))): x.value
         for family in text_string_to_metric_families(text) for x in family.samples}
    assert s[("cachegate_passthrough_rejections_total", ())] == 3
    assert s[("cachegate_passthrough_tunnels_total", ())] == 2
    assert s[("cachegate_passthrough_tunnel_failures_total", ())] == 1
    assert s[("cachegate_stale_responses_total", (("ecosystem", "debian"),))] == 2
    assert s[("cachegate_stale_responses_total", (("ecosystem", "npm"),))] == 0
    assert s[("cachegate_cache_evictions_total", ())] == 4
    assert "172.17.0.2" not in text and "pypi.org" not in text


@pytest_twisted.inlineCallbacks
def test_relayed_requests_count_as_upstream_requests_and_errors(bare_origin, admin_gateway):
    """A request with credentials is relayed uncached (PASS): still an upstream request of
    its ecosystem, and a failure when the origin is gone."""
    gw = admin_gateway(bare_origin.url)
    apk = "/alpine/v3.19/main/x86_64/p-1.0-r0.apk"
    put_object(bare_origin.root, "alpine", apk, b"private apk")
    secret = {"authorization": "Bearer t"}
    reply = yield fetch(gw.port, ALPINE_HOST, apk, headers=secret)
    assert reply.status == 200 and reply.headers["x-cache"] == "PASS"
    yield bare_origin.stop_serving()
    reply = yield fetch(gw.port, ALPINE_HOST, apk, headers=secret)
    assert reply.status == 502
    s = yield scrape(gw)
    assert s[("cachegate_upstream_requests_total", (("ecosystem", "alpine"),))] == 2
    assert s[("cachegate_upstream_errors_total", (("ecosystem", "alpine"),
                                                  ("kind", "connect")))] == 1
    assert s[("cachegate_upstream_fetch_duration_seconds_count", (("ecosystem", "alpine"),))] == 1


@pytest_twisted.inlineCallbacks
def test_a_body_damaged_on_disk_counts_as_a_stored_integrity_failure(bare_origin,
                                                                     admin_gateway):
    gw = admin_gateway(bare_origin.url)
    wheel, _ = yield serve_two(bare_origin, gw)
    entry = next(e for e in gw.store.entries() if e.meta.ecosystem == "pypi")
    with open(entry.path, "r+b") as body:  # same length, one byte changed
        body.seek(100)
        body.write(bytes([wheel[100] ^ 0xFF]))
    reply = yield admin(gw, "POST", "/api/cache/verify")
    assert reply.status == 200
    s = yield scrape(gw)
    assert s[("cachegate_integrity_failures_total", (("ecosystem", "pypi"),
                                                     ("stage", "stored")))] == 1
    assert s[("cachegate_integrity_failures_total", (("ecosystem", "alpine"),
                                                     ("stage", "stored")))] == 0


@pytest_twisted.inlineCallbacks
def test_evictions_are_counted(bare_origin, start_gateway):
    """Four 400 kB objects under a 1.3 MB limit (the index counts too): the jars gone
    from the store are among the evictions counted (the series reads the count)."""
    names = [f"/maven2/org/ex/ev/1.0/ev-{i}.jar" for i in range(4)]
    for i, name in enumerate(names):
        put_object(bare_origin.root, "maven", name, counter_bytes(400_000, bytes([i])))
    gw = start_gateway(bare_origin.url, size_limit=1_300_000)
    for name in names[:3]:
        yield fetch(gw.port, "repo1.maven.org", name)
    assert gw.store.evictions == 0
    yield fetch(gw.port, "repo1.maven.org", names[3])
    for _ in range(50):  # committed when the body ends, after the response
        if gw.store.evictions:
            break
        yield task.deferLater(reactor, 0.05, lambda: None)
    jars = [e for e in gw.store.entries() if e.key.endswith(".jar")]  # (.sha1s besides)
    assert 1 <= 4 - len(jars) <= gw.store.evictions
