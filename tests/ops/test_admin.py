"""The admin API against a gateway in this process, over real loopback sockets (the
gateway, origin and request helpers: tests/admin_gateways.py)."""

from __future__ import annotations

import hashlib
import json
import os
import stat

import pytest
import pytest_twisted
from dnslib import DNSRecord
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor

from gateway.ops.admin import TOKEN_FILE, load_or_create_token
from tests.admin_gateways import (ALPINE_HOST, APK, PYPI_HOST, WHEEL, admin, admin_json,
                                  serve_two)
from tests.dns_helpers import UdpClient
from tests.fixtures import counter_bytes, put_object
from tests.gateways import RunningGateway
from tests.http_client import fetch


@pytest_twisted.inlineCallbacks
def test_stats_count_requests_bytes_and_objects_per_ecosystem_and_client(bare_origin,
                                                                          admin_gateway):
    gw = admin_gateway(bare_origin.url)
    before = yield admin_json(gw, "GET", "/api/stats")
    assert before["gateway"]["total"]["requests"] == {} and before["cache"]["objects"] == 0
    wheel, apk = yield serve_two(bare_origin, gw)
    stats = yield admin_json(gw, "GET", "/api/stats")
    total, pypi = stats["gateway"]["total"], stats["gateway"]["ecosystems"]["pypi"]
    assert total["requests"] == {"MISS": 2, "HIT": 1}
    assert pypi == {"requests": {"MISS": 1, "HIT": 1}, "hit_ratio": 0.5,
                    "bytes_from_cache": len(wheel), "bytes_from_upstream": len(wheel)}
    assert stats["gateway"]["clients"]["127.0.0.1"]["requests"] == {"MISS": 2, "HIT": 1}
    assert stats["cache"]["ecosystems"] == {"pypi": {"objects": 1, "bytes": len(wheel)},
                                            "alpine": {"objects": 1, "bytes": len(apk)}}
    assert stats["cache"]["objects"] == 2 and stats["cache"]["bytes"] >= len(wheel) + len(apk)
    assert [line["url"] for line in stats["recent"]] == [ALPINE_HOST + APK, PYPI_HOST + WHEEL,
                                                         PYPI_HOST + WHEEL]
    assert stats["recent"][1]["label"] == "HIT" and stats["recent"][1]["sent"] == len(wheel)
    assert stats["top"][0] == {"url": PYPI_HOST + WHEEL, "requests": 2, "bytes": 2 * len(wheel)}
    assert set(stats["dns"]) >= {"queries", "redirected", "forwarded"}
    assert stats["tls"] == {"refused": 0, "minted": 0}
    assert stats["listeners"]["http"] == [gw.port]
    assert stats["listeners"]["admin"] == [gw.admin_port]
    assert stats["uptime"] >= 0
    health = yield admin_json(gw, "GET", "/healthz")
    assert health["status"] == "ok" and health["docker_dns"] == "127.0.0.1"


@pytest_twisted.inlineCallbacks
def test_metrics_parse_as_prometheus_text_with_the_live_figures(bare_origin, admin_gateway):
    gw = admin_gateway(bare_origin.url)
    wheel, _ = yield serve_two(bare_origin, gw)
    reply = yield admin(gw, "GET", "/metrics")
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(reply.body.decode())
               for s in family.samples}
    eco = (("ecosystem", "pypi"),)
    assert samples[("cachegate_requests_total", (("ecosystem", "pypi"), ("label", "HIT")))] == 1
    assert samples[("cachegate_requests_total", (("ecosystem", "alpine"), ("label", "MISS")))] == 1
    assert samples[("cachegate_sent_bytes_total", eco + (("source", "cache"),))] == len(wheel)
    assert samples[("cachegate_hit_ratio", eco)] == 0.5
    assert samples[("cachegate_cache_objects", eco)] == 1
    assert samples[("cachegate_cache_object_bytes", eco)] == len(wheel)
    assert samples[("cachegate_downloads_active", ())] == 0
    assert ("cachegate_dns_answers_total", (("how", "redirected"),)) in samples
    assert ("process_open_fds", ()) in samples


@pytest_twisted.inlineCallbacks
def test_cache_listing_filters_by_ecosystem_and_prefix(bare_origin, admin_gateway):
    gw = admin_gateway(bare_origin.url)
    wheel, apk = yield serve_two(bare_origin, gw)
    listing = yield admin_json(gw, "GET", "/api/cache")
    assert listing["count"] == 2 and listing["bytes"] == len(wheel) + len(apk)
    pypi = yield admin_json(gw, "GET", "/api/cache?ecosystem=pypi")
    assert [e["url"] for e in pypi["entries"]] == [PYPI_HOST + WHEEL]
    assert pypi["entries"][0]["sha256"] == hashlib.sha256(wheel).hexdigest()
    assert pypi["entries"][0]["length"] == len(wheel)
    prefixed = yield admin_json(gw, "GET", f"/api/cache?prefix=https://{ALPINE_HOST}/alpine/")
    assert [e["ecosystem"] for e in prefixed["entries"]] == ["alpine"]
    none = yield admin_json(gw, "GET", "/api/cache?ecosystem=npm")
    assert none == {"count": 0, "bytes": 0, "truncated": False, "entries": []}
    limited = yield admin_json(gw, "GET", "/api/cache?limit=1")
    assert limited["count"] == 2 and len(limited["entries"]) == 1 and limited["truncated"]
    for bad in ("?limit=x", "?ecosytem=pypi", "?prefix="):
        error = yield admin_json(gw, "GET", "/api/cache" + bad, expect=400)
        assert error["error"]


@pytest_twisted.inlineCallbacks
def test_cache_clear_by_prefix_ecosystem_and_all_refetches_only_what_was_dropped(
        bare_origin, admin_gateway):
    gw = admin_gateway(bare_origin.url)
    yield serve_two(bare_origin, gw)
    typo = yield admin_json(gw, "DELETE", "/api/cache?ecosytem=pypi", expect=400)
    assert "ecosytem" in typo["error"]
    cleared = yield admin_json(gw, "DELETE", f"/api/cache?prefix={PYPI_HOST}/packages/")
    assert cleared["deleted"] == 1
    wheel_again = yield fetch(gw.port, PYPI_HOST, WHEEL)
    apk_again = yield fetch(gw.port, ALPINE_HOST, APK)
    assert wheel_again.headers["x-cache"] == "MISS" and apk_again.headers["x-cache"] == "HIT"
    cleared = yield admin_json(gw, "DELETE", "/api/cache?ecosystem=alpine")
    assert cleared["deleted"] == 1
    listing = yield admin_json(gw, "GET", "/api/cache")
    assert [e["ecosystem"] for e in listing["entries"]] == ["pypi"]
    cleared = yield admin_json(gw, "DELETE", "/api/cache")
    assert cleared["deleted"] == 1
    listing = yield admin_json(gw, "GET", "/api/cache")
    assert listing["count"] == 0
    assert bare_origin.count("/pypi" + WHEEL) == 2 and bare_origin.count("/alpine" + APK) == 1


@pytest_twisted.inlineCallbacks
def test_verify_drops_a_corrupt_body_and_keeps_the_good_ones(bare_origin, admin_gateway):
    gw = admin_gateway(bare_origin.url)
    wheel, _ = yield serve_two(bare_origin, gw)
    entry = next(e for e in gw.store.entries() if e.meta.ecosystem == "pypi")
    with open(entry.path, "r+b") as body:  # same length, one byte changed
        body.seek(1000)
        body.write(bytes([wheel[1000] ^ 0xFF]))
    report = yield admin_json(gw, "POST", "/api/cache/verify")
    assert report["checked"] == 2
    assert report["dropped"] == [{"key": entry.key, "url": PYPI_HOST + WHEEL,
                                  "reason": "sha256 mismatch"}]
    again = yield fetch(gw.port, PYPI_HOST, WHEEL)
    assert again.headers["x-cache"] == "MISS" and again.body == wheel
    apk = yield fetch(gw.port, ALPINE_HOST, APK)
    assert apk.headers["x-cache"] == "HIT"
    clean = yield admin_json(gw, "POST", "/api/cache/verify")
    assert clean["checked"] == 2 and clean["dropped"] == []


@pytest_twisted.inlineCallbacks
def test_ca_certificate_is_the_one_in_the_state_dir(bare_origin, admin_gateway, tmp_path):
    gw = admin_gateway(bare_origin.url)
    reply = yield admin(gw, "GET", "/ca.crt")
    assert reply.status == 200 and reply.headers["content-type"] == "application/x-pem-file"
    assert reply.body == (tmp_path / "state" / "ca" / "ca.crt").read_bytes()
    assert reply.body.startswith(b"-----BEGIN CERTIFICATE-----")


@defer.inlineCallbacks
def redirected(gw: RunningGateway, name: str):  # type: ignore[no-untyped-def]
    """Whether our DNS answers ``name`` itself (with the gateway's address)."""
    client = UdpClient(reactor, gw.service.ports("dns")[0])
    try:
        before = gw.service.dns_stats.redirected
        reply = yield client.ask(DNSRecord.question(name, "A"), timeout=1)
        return gw.service.dns_stats.redirected == before + 1 and reply is not None and \
            [str(rr.rdata) for rr in reply.rr] == ["127.0.0.1"]
    finally:
        yield client.close()


@pytest_twisted.inlineCallbacks
def test_upstream_edits_apply_at_once_persist_and_revert(bare_origin, admin_gateway, tmp_path):
    gw = admin_gateway(bare_origin.url)
    data = counter_bytes(3000, b"mirror")
    put_object(bare_origin.root, "corp", "/pool/c/corp_1.0.deb", data)
    refused = yield fetch(gw.port, "mirror.debian.org", "/pool/c/corp_1.0.deb")
    assert refused.status == 403
    was_redirected = yield redirected(gw, "mirror.debian.org")
    assert not was_redirected
    table = {"hosts": ["mirror.debian.org"], "origin": f"{bare_origin.url}/corp",
             "rules": [{"path": r"\.deb$", "policy": "immutable"}]}
    put = yield admin_json(gw, "PUT", "/api/upstreams/corp", table)
    assert put["upstream"]["hosts"] == ["mirror.debian.org"]
    served = yield fetch(gw.port, "mirror.debian.org", "/pool/c/corp_1.0.deb")
    assert served.status == 200 and served.body == data
    now_redirected = yield redirected(gw, "mirror.debian.org")
    assert now_redirected
    listing = yield admin_json(gw, "GET", "/api/upstreams")
    corp = next(u for u in listing["upstreams"] if u["name"] == "corp")
    assert corp["source"] == "runtime" and corp["rules"][0]["policy"] == "immutable"
    assert listing["edits"] == {"corp": table}
    assert json.loads((tmp_path / "state" / "upstreams.json").read_text()) == {"corp": table}
    one = yield admin_json(gw, "GET", "/api/upstreams/corp")
    assert one["origin"] == f"{bare_origin.url}/corp"

    yield gw.service.stopService()  # the edit is applied again at the next start
    gw = admin_gateway(bare_origin.url)
    hit = yield fetch(gw.port, "mirror.debian.org", "/pool/c/corp_1.0.deb")
    assert hit.status == 200 and hit.headers["x-cache"] == "HIT"

    yield admin_json(gw, "DELETE", "/api/upstreams/corp")
    gone = yield fetch(gw.port, "mirror.debian.org", "/pool/c/corp_1.0.deb")
    assert gone.status == 403
    no_longer = yield redirected(gw, "mirror.debian.org")
    assert not no_longer
    missing = yield admin_json(gw, "DELETE", "/api/upstreams/corp", expect=404)
    assert "corp" in missing["error"]


@pytest_twisted.inlineCallbacks
def test_upstream_edit_disables_a_builtin_entry_until_deleted(bare_origin, admin_gateway):
    gw = admin_gateway(bare_origin.url)
    put_object(bare_origin.root, "alpine", APK, counter_bytes(100))
    yield admin_json(gw, "PUT", "/api/upstreams/alpine", {"enabled": False})
    refused = yield fetch(gw.port, ALPINE_HOST, APK)
    assert refused.status == 403
    listing = yield admin_json(gw, "GET", "/api/upstreams")
    assert "alpine" not in [u["name"] for u in listing["upstreams"]]
    yield admin_json(gw, "DELETE", "/api/upstreams/alpine")
    served = yield fetch(gw.port, ALPINE_HOST, APK)
    assert served.status == 200


@pytest_twisted.inlineCallbacks
def test_bad_upstream_edits_are_4xx_and_change_nothing(bare_origin, admin_gateway, tmp_path):
    gw = admin_gateway(bare_origin.url)
    cases = [
        ("/api/upstreams/corp", b"{not json", 400, "not JSON"),
        ("/api/upstreams/corp", [1, 2], 400, "expected a table"),
        ("/api/upstreams/corp", {"origin": "http://x"}, 400, "upstreams.corp.hosts: required"),
        ("/api/upstreams/corp", {"hosts": "a.debian.org"}, 400, "upstreams.corp.hosts"),
        ("/api/upstreams/corp", {"hosts": ["a.debian.org"], "colour": 1}, 400, "colour"),
        ("/api/upstreams/corp", {"hosts": ["a.debian.org"], "rules": [{"path": "("}]}, 400,
         "regular expression"),
        ("/api/upstreams/Bad%20Name", {"hosts": ["a.debian.org"]}, 400, "lower-case"),
        ("/api/upstreams/corp", {"hosts": ["pkgs.example.net"]}, 409, "example.net"),
        ("/api/upstreams/corp", b"[" * (70 * 1024), 413, "larger"),
    ]
    for path, body, status, reason in cases:
        error = yield admin_json(gw, "PUT", path, body, expect=status)
        assert reason in error["error"], (str(body)[:40], error)
    assert not (tmp_path / "state" / "upstreams.json").exists()
    listing = yield admin_json(gw, "GET", "/api/upstreams")
    assert "corp" not in [u["name"] for u in listing["upstreams"]]
    assert listing["edits"] == {}
    health = yield admin_json(gw, "GET", "/healthz")
    assert health["status"] == "ok"


@pytest_twisted.inlineCallbacks
def test_unknown_paths_and_methods_are_json_errors(bare_origin, admin_gateway):
    gw = admin_gateway(bare_origin.url)
    missing = yield admin_json(gw, "GET", "/nope", expect=404)
    assert "/nope" in missing["error"]
    reply = yield admin(gw, "POST", "/api/stats")
    assert reply.status == 405 and "GET" in reply.headers["allow"]
    reply = yield admin(gw, "HEAD", "/healthz")
    assert reply.status == 200 and reply.body == b""
    reply = yield admin(gw, "GET", "/metrics?name[]=cachegate_requests")  # a scraper's query
    assert reply.status == 200
    nobody = yield admin_json(gw, "GET", "/api/upstreams/nobody", expect=404)
    assert "nobody" in nobody["error"]


@pytest_twisted.inlineCallbacks
def test_loopback_mutations_must_address_the_api_by_ip(bare_origin, admin_gateway):
    gw = admin_gateway(bare_origin.url)
    yield serve_two(bare_origin, gw)
    rebound = yield admin_json(gw, "DELETE", "/api/cache", host="evil.example:3129", expect=403)
    assert "IP or localhost" in rebound["error"]
    stats = yield admin_json(gw, "GET", "/api/stats", host="evil.example:3129")
    assert stats["cache"]["objects"] == 2  # reading is harmless, and nothing was deleted
    cleared = yield admin_json(gw, "DELETE", "/api/cache", host=f"localhost:{gw.admin_port}")
    assert cleared["deleted"] == 2


@pytest_twisted.inlineCallbacks
def test_beyond_loopback_every_mutation_needs_the_token(bare_origin, admin_gateway, tmp_path):
    gw = admin_gateway(bare_origin.url, admin=("0.0.0.0", 0))
    yield serve_two(bare_origin, gw)
    token_file = tmp_path / "state" / TOKEN_FILE
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    token = token_file.read_text().strip()
    assert len(token) >= 32
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
        reply = yield admin(gw, "DELETE", "/api/cache", headers=headers)
        assert reply.status == 401 and "admin.token" in json.loads(reply.body)["error"]
        assert reply.headers["www-authenticate"].startswith("Bearer")
        refused = yield admin(gw, "PUT", "/api/upstreams/alpine", {"enabled": False},
                              headers=headers)
        assert refused.status == 401
    listing = yield admin_json(gw, "GET", "/api/cache")  # reading needs no token
    assert listing["count"] == 2
    cleared = yield admin_json(gw, "DELETE", "/api/cache",
                               headers={"Authorization": f"Bearer {token}"})
    assert cleared["deleted"] == 2
    yield gw.service.stopService()
    again = admin_gateway(bare_origin.url, admin=("0.0.0.0", 0))  # the token is kept
    assert again.service.running and token_file.read_text().strip() == token


def test_an_empty_token_file_is_replaced_never_trusted(tmp_path):
    (tmp_path / TOKEN_FILE).write_text("")  # as a crash mid-write could have left it
    token = load_or_create_token(tmp_path)
    assert len(token) >= 32 and (tmp_path / TOKEN_FILE).read_text() == token + "\n"
    assert stat.S_IMODE(os.stat(tmp_path / TOKEN_FILE).st_mode) == 0o600
    assert load_or_create_token(tmp_path) == token


# -- live progress of long downloads --------------------------------------------------------

from twisted.internet import task  # noqa: E402
from twisted.logger import globalLogPublisher  # noqa: E402

from gateway.ops import progress  # noqa: E402
from gateway.cache.download import Download  # noqa: E402


@pytest.fixture
def progress_lines():  # type: ignore[no-untyped-def]
    """The progress events logged during the test."""
    events: list[dict] = []

    def observe(event: dict) -> None:
        if event.get("log_namespace") == "gateway.ops.progress":
            events.append(event)
    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


def test_progress_logs_bytes_and_rate_every_interval_until_the_end(tmp_path, progress_lines):
    clock = task.Clock()
    download = Download(str(tmp_path / "body.partial"), 1000)
    progress.watch_progress(clock, download, "https://example.org/big", interval=5)
    download.write(b"a" * 100)
    clock.advance(5)
    download.write(b"b" * 400)
    clock.advance(5)
    assert [(e["bytes"], e["bytes_per_s"], e["length"]) for e in progress_lines] == \
        [(100, 20, 1000), (500, 80, 1000)]
    assert progress_lines[0]["log_level"].name == "info"
    assert "https://example.org/big" in progress_lines[0]["url"]
    download.write(b"c" * 500)
    download.finish(None)
    clock.advance(60)
    assert len(progress_lines) == 2, "progress logged after the download ended"
    assert not clock.getDelayedCalls()


def test_a_download_shorter_than_the_interval_logs_no_progress(tmp_path, progress_lines):
    clock = task.Clock()
    download = Download(str(tmp_path / "body.partial"), 10)
    progress.watch_progress(clock, download, "https://example.org/small", interval=5)
    download.write(b"x" * 10)
    clock.advance(4)
    download.finish(None)
    clock.advance(60)
    assert progress_lines == [] and not clock.getDelayedCalls()


@pytest_twisted.inlineCallbacks
def test_a_slow_upstream_download_logs_its_progress(bare_origin, admin_gateway, monkeypatch,
                                                    progress_lines):
    monkeypatch.setattr(progress, "PROGRESS_INTERVAL", 0.1)
    gw = admin_gateway(bare_origin.url)
    data = counter_bytes(60_000, b"slow")
    put_object(bare_origin.root, "pypi", WHEEL, data)
    bare_origin.behave("/pypi" + WHEEL, slow_bytes_per_s=100_000)  # ~0.6 s: several ticks
    reply = yield fetch(gw.port, PYPI_HOST, WHEEL)
    assert reply.body == data
    mine = [e for e in progress_lines if e["url"].endswith(WHEEL)]
    assert mine, "no progress line for a download lasting several intervals"
    assert all(0 <= e["bytes"] <= len(data) and e["length"] == len(data) for e in mine)
    assert [e["bytes"] for e in mine] == sorted(e["bytes"] for e in mine)
