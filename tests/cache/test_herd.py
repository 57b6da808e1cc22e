"""Single flight under a herd, memory bound, and crash safety, against a real
``cachegate serve`` process (so its memory is measured and it can be killed)."""

from __future__ import annotations

import os

import pytest_twisted
from twisted.internet import defer, reactor, task

from tests.fixtures import make_blob
from tests.http_client import raw_get
from tests.processes import GatewayProcess

BIG = 50 * 1000 * 1000
CLIENTS = 50


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


def sha256_of(path) -> str:
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@pytest_twisted.inlineCallbacks
def test_fifty_clients_one_origin_request_identical_bodies_bounded_memory(origin, tmp_path):
    path = "/maven2/org/ex/herd/1.0/herd-1.0.jar"
    blob = origin.root / "maven" / path.lstrip("/")
    make_blob(blob, BIG)
    expected = sha256_of(blob)
    origin.behave("/maven" + path, slow_bytes_per_s=25_000_000)  # ~2 s: the herd overlaps it
    gw = yield GatewayProcess(tmp_path, origin.url).ready()
    try:
        baseline_kib = gw.status("VmRSS")
        slow: list = []
        slow_done = raw_get(gw.port, "repo1.maven.org", path, rate=100_000, keep=False,
                            started=slow)
        slow_done.addErrback(lambda f: None)
        fast = []
        for i in range(CLIENTS - 1):
            fast.append(raw_get(gw.port, "repo1.maven.org", path, keep=False))
            if i % 10 == 9:
                yield sleep(0.1)  # clients keep arriving while the download runs
        results = yield defer.gatherResults(fast)
        peak_kib = gw.status("VmHWM")
        for head, _, proto in results:
            assert head.startswith("HTTP/1.1 200"), head
            assert proto.body_length == BIG and proto.sha256 == expected
        assert origin.count("/maven" + path) == 1
        misses = [head for head, _, _ in results if "X-Cache: MISS" in head]
        assert len(misses) <= 1, "clients that joined the download are hits, not misses"
        # the slow reader is far behind and still connected: it delayed nobody
        assert slow[0].finished_at is None and slow[0].received < BIG // 4
        slow[0].transport.abortConnection()
        growth_mib = (peak_kib - baseline_kib) / 1024
        assert growth_mib < BIG / 2**20 / 2, f"RSS grew {growth_mib:.0f} MiB for a 48 MiB object"
        head, _, again = yield raw_get(gw.port, "repo1.maven.org", path, keep=False)
        assert "X-Cache: HIT" in head and again.sha256 == expected
        assert origin.count("/maven" + path) == 1
    finally:
        gw.stop()


@pytest_twisted.inlineCallbacks
def test_kill_9_mid_download_then_restart_leaves_a_consistent_cache(origin, tmp_path):
    path = "/debian/pool/main/k/kill/kill_1.0_all.deb"
    blob = origin.root / "debian" / path.lstrip("/")
    make_blob(blob, 20_000_000)
    expected = sha256_of(blob)
    origin.behave("/debian" + path, slow_bytes_per_s=2_000_000)
    gw = yield GatewayProcess(tmp_path, origin.url).ready()
    partial_dir = gw.state_dir / "cache" / "partial"
    client: list = []
    done = raw_get(gw.port, "deb.debian.org", path, keep=False, started=client)
    for _ in range(200):
        yield sleep(0.05)
        partials = os.listdir(partial_dir)
        if partials and os.path.getsize(partial_dir / partials[0]) > 1_000_000:
            break
    else:
        raise AssertionError("the download never started")
    gw.kill()
    head, _, proto = yield done
    assert proto.body_length < 20_000_000, "the client of a killed gateway saw a whole body"
    restarted = yield GatewayProcess(tmp_path, origin.url, state_dir=gw.state_dir).ready()
    try:
        assert os.listdir(partial_dir) == [], "stale partial downloads survived a restart"
        origin.behave("/debian" + path)
        head, _, proto = yield raw_get(restarted.port, "deb.debian.org", path, keep=False)
        assert "X-Cache: MISS" in head and proto.sha256 == expected
        head, _, proto = yield raw_get(restarted.port, "deb.debian.org", path, keep=False)
        assert "X-Cache: HIT" in head and proto.sha256 == expected
    finally:
        restarted.stop()
