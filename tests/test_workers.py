"""``[server] workers = 2``: a supervisor and two worker processes on one store, against a
real ``cachegate serve`` (the only fake is the origin)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task, threads

from gateway.cache.keys import base_key
from gateway.front.owners import owner_of
from tests.fixtures import make_blob
from tests.http_client import fetch, raw_get
from tests.processes import GatewayProcess

REPO = Path(__file__).resolve().parents[1]
HOST = "repo1.maven.org"


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


def sha256_of(path: Path) -> str:
    import hashlib
    return hashlib.sha256(path.read_bytes()).hexdigest()


@defer.inlineCallbacks
def admin(gw: GatewayProcess, method: str, path: str):  # type: ignore[no-untyped-def]
    from twisted.web.client import Agent, readBody
    response = yield Agent(reactor).request(
        method.encode(), f"http://127.0.0.1:{gw.admin_port}{path}".encode())
    body = yield readBody(response)
    return json.loads(body) if body.startswith((b"{", b"[")) else body.decode()


@defer.inlineCallbacks
def gathered(gw: GatewayProcess, requests: int):  # type: ignore[no-untyped-def]
    """/api/stats once the supervisor has gathered ``requests`` answered requests."""
    for _ in range(100):
        stats = yield admin(gw, "GET", "/api/stats")
        if sum(stats["gateway"]["total"]["requests"].values()) >= requests:
            return stats
        yield sleep(0.1)
    raise AssertionError(f"stats never reached {requests} requests: {stats['gateway']}")


def per_worker_requests(metrics: str) -> dict[str, float]:
    counts: dict[str, float] = {}
    for line in metrics.splitlines():
        if line.startswith("cachegate_requests_total{"):
            worker = line.split('worker="')[1].split('"')[0]
            counts[worker] = counts.get(worker, 0) + float(line.rsplit(" ", 1)[1])
    return counts


@defer.inlineCallbacks
def worker_pids(gw: GatewayProcess, up: int = 2):  # type: ignore[no-untyped-def]
    for _ in range(100):
        stats = yield admin(gw, "GET", "/api/stats")
        pids = {w["worker"]: w["pid"] for w in stats["workers"] if w["state"] == "up"}
        if len(pids) >= up:
            return pids, stats["workers"]
        yield sleep(0.1)
    raise AssertionError(f"workers not up: {stats['workers']}")


@defer.inlineCallbacks
def started(tmp_path: Path, origin_url: str, workers: int = 2):  # type: ignore[no-untyped-def]
    """A gateway whose workers all answer (the supervisor's port accepts before they do)."""
    gw = yield GatewayProcess(tmp_path, origin_url, workers=workers).ready()
    if workers > 1:
        yield worker_pids(gw, workers)
    return gw


@pytest_twisted.inlineCallbacks
def test_a_herd_over_both_workers_makes_one_origin_request(origin, tmp_path):
    path = "/maven2/org/ex/workers/1.0/workers-1.0.jar"
    blob = origin.root / "maven" / path.lstrip("/")
    make_blob(blob, 8_000_000)
    expected = sha256_of(blob)
    origin.behave("/maven" + path, slow_bytes_per_s=8_000_000)  # ~1 s: the herd overlaps it
    gw = yield started(tmp_path, origin.url)
    try:
        clients = []
        for i in range(50):
            clients.append(raw_get(gw.port, HOST, path, keep=False))
            if i % 10 == 9:
                yield sleep(0.05)
        results = yield defer.gatherResults(clients)
        for head, _, proto in results:
            assert head.startswith("HTTP/1.1 200"), head
            assert proto.body_length == 8_000_000 and proto.sha256 == expected
        assert origin.count("/maven" + path) == 1
        stats = yield gathered(gw, 50)
        assert stats["gateway"]["total"]["requests"] == {"MISS": 1, "HIT": 49}, stats["gateway"]
        log = (tmp_path / f"gateway-{gw.port}.log").read_text()
        hops = [line for line in log.splitlines() if f"] hop GET {HOST}{path} " in line]
        assert len(hops) == 1, hops  # the other worker's clients shared one relay
        metrics = yield admin(gw, "GET", "/metrics")
        spread = per_worker_requests(metrics)
        assert set(spread) == {"0", "1"} and sum(spread.values()) == 50, spread
        hits = yield fetch(gw.port, HOST, path)  # stored once, by the owner, for both
        assert hits.sha256 == expected and hits.headers["x-cache"] == "HIT"
        shown = yield threads.deferToThread(
            subprocess.run, [sys.executable, "-m", "gateway.ops.cli", "--config",
                             str(gw.config), "stats"], capture_output=True, text=True, cwd=REPO)
        page = yield admin(gw, "GET", "/")
        assert '<table id=workers>' in page and page.count('<tr class="up">') == 2, page
        assert "workers: 0 up (pid" in shown.stdout \
            and "1 up (pid" in shown.stdout, shown.stdout
    finally:
        gw.stop()


@pytest_twisted.inlineCallbacks
def test_kill_9_of_the_owner_mid_fill_stores_nothing_partial_and_it_comes_back(origin,
                                                                               tmp_path):
    path = "/maven2/org/ex/workers/2.0/workers-2.0.jar"
    blob = origin.root / "maven" / path.lstrip("/")
    make_blob(blob, 6_000_000)
    expected = sha256_of(blob)
    origin.behave("/maven" + path, slow_bytes_per_s=1_000_000, times=1)  # ~6 s, then fast
    gw = yield started(tmp_path, origin.url)
    try:
        pids, _ = yield worker_pids(gw)
        owner = owner_of(base_key(HOST, path), 2)
        clients = [raw_get(gw.port, HOST, path, keep=False) for _ in range(10)]
        for _ in range(100):
            if origin.count("/maven" + path):
                break
            yield sleep(0.05)
        yield sleep(1.0)  # bytes are flowing to every client
        os.kill(pids[owner], signal.SIGKILL)
        results = yield defer.gatherResults(clients)
        for head, _, proto in results:  # cut short, never a short body passed as whole
            assert proto.body_length < 6_000_000 or proto.sha256 == expected, head
        assert any(proto.body_length < 6_000_000 for _, _, proto in results)
        new_pids, workers = yield worker_pids(gw)
        assert new_pids[owner] != pids[owner] and workers[owner]["restarts"] == 1
        assert new_pids[1 - owner] == pids[1 - owner], "the other worker was not touched"
        listing = yield admin(gw, "GET", "/api/cache")
        assert base_key(HOST, path) not in [o["url"] for o in listing["entries"]], "nothing stored"
        retry = yield fetch(gw.port, HOST, path)
        assert retry.status == 200 and retry.sha256 == expected
        assert origin.count("/maven" + path) == 2
        assert os.listdir(gw.state_dir / "cache" / "partial" / f"w{owner}") == []
    finally:
        gw.stop()
    verify = yield threads.deferToThread(
        subprocess.run, [sys.executable, "-m", "gateway.ops.cli", "--config", str(gw.config),
                         "cache", "verify", "--json"],
        capture_output=True, text=True, cwd=REPO, timeout=120)
    assert verify.returncode == 0, verify.stderr
    report = json.loads(verify.stdout)
    assert report["checked"] >= 1 and report["dropped"] == []


@pytest_twisted.inlineCallbacks
def test_after_a_clear_no_worker_serves_the_cleared_object(origin, tmp_path):
    # Indexes, not artifacts: new bytes at an immutable URL would be refused as drift.
    paths = [f"/maven2/org/ex/workers/clear/{i}/maven-metadata.xml" for i in range(6)]
    for path in paths:
        (origin.root / "maven" / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (origin.root / "maven" / path.lstrip("/")).write_bytes(f"old {path}\n".encode())
    gw = yield started(tmp_path, origin.url)
    try:
        for _ in range(4):  # each object read through both workers: both memoise it
            for path in paths:
                reply = yield fetch(gw.port, HOST, path)
                assert reply.body == f"old {path}\n".encode()
        for path in paths:
            (origin.root / "maven" / path.lstrip("/")).write_bytes(f"new {path}\n".encode())
        cleared = yield admin(gw, "DELETE", "/api/cache?ecosystem=maven")
        assert cleared["deleted"] >= len(paths), cleared  # with the .sha1 each fill asked
        for _ in range(4):
            for path in paths:
                reply = yield fetch(gw.port, HOST, path)
                assert reply.body == f"new {path}\n".encode(), (path, reply.headers)
        assert all(origin.count("/maven" + path) == 2 for path in paths)
    finally:
        gw.stop()


@pytest_twisted.inlineCallbacks
def test_workers_end_with_the_supervisor_even_when_it_is_killed(origin, tmp_path):
    gw = yield started(tmp_path, origin.url)
    pids, _ = yield worker_pids(gw)
    gw.kill()
    for _ in range(100):
        alive = [pid for pid in pids.values() if Path(f"/proc/{pid}").exists()
                 and " Z " not in Path(f"/proc/{pid}/stat").read_text()]
        if not alive:
            break
        yield sleep(0.1)
    assert not alive, "a worker outlived its supervisor"


@pytest.mark.parametrize("workers", [1, 2])
@pytest_twisted.inlineCallbacks
def test_a_catalogue_edit_reaches_every_worker(origin, tmp_path, workers):
    gw = yield started(tmp_path, origin.url, workers)
    try:
        (origin.root / "maven" / "extra").mkdir(parents=True)
        (origin.root / "maven" / "extra" / "x.txt").write_bytes(b"extra\n")
        from twisted.web.client import Agent, FileBodyProducer, readBody
        from io import BytesIO
        body = json.dumps({"hosts": ["extra.maven.org"], "origin": f"{origin.url}/maven"})
        response = yield Agent(reactor).request(
            b"PUT", f"http://127.0.0.1:{gw.admin_port}/api/upstreams/extra".encode(),
            bodyProducer=FileBodyProducer(BytesIO(body.encode())))
        yield readBody(response)
        assert response.code == 200
        yield sleep(0.5)
        for _ in range(6):  # new connections: the kernel spreads them over the workers
            reply = yield fetch(gw.port, "extra.maven.org", "/extra/x.txt")
            assert reply.status == 200 and reply.body == b"extra\n"
    finally:
        gw.stop()


def test_doctor_names_a_worker_that_is_down():
    from gateway.config import Config
    from gateway.ops.doctor import Situation, check_workers

    def situation(workers):  # type: ignore[no-untyped-def]
        return Situation(Config(), [], {"workers": workers}, None, Path("/nonexistent"),
                         None, "example.com", 1.0)
    up = {"worker": 0, "pid": 10, "state": "up", "restarts": 1, "last_exit": None}
    down = {"worker": 1, "pid": 0, "state": "down", "restarts": 3,
            "last_exit": "process ended by signal 9."}
    assert check_workers(situation([up, {**up, "worker": 1}])).ok is True
    failed = check_workers(situation([up, down]))
    assert failed.ok is False and "worker 1 down (last exit: process ended by signal 9.)" \
        in failed.detail


def test_a_client_rejecting_the_ca_at_one_worker_is_tunnelled_by_the_other(tmp_path):
    """The passthrough's memo lives in the store when workers serve: connections are
    spread by the kernel, so the retry of a client that rejected our CA reaches another
    worker, which must tunnel it too."""
    from twisted.internet.task import Clock

    from gateway.cache.store import Store
    from gateway.front.proxy import SharedMemo, UntrustedMemo, memo

    clock = Clock()
    clock.advance(1000)
    stores = [Store(tmp_path / "cache", 10**9, clock.seconds, f"w{i}") for i in range(2)]
    try:
        first, second = (memo(type("Top", (), {"store": s}), clock, "untrusted")
                         for s in stores)
        assert isinstance(first, SharedMemo)
        assert ("10.0.0.5", "pypi.org") not in second
        first.add("10.0.0.5", "pypi.org")
        assert ("10.0.0.5", "pypi.org") in second  # learnt from the store
        assert ("10.0.0.6", "pypi.org") not in second
        clock.advance(first.seconds + 1)
        assert ("10.0.0.5", "pypi.org") not in second and ("10.0.0.5", "pypi.org") not in first
    finally:
        for store in stores:
            store.close()
    alone = Store(tmp_path / "alone", 10**9, clock.seconds)
    try:
        assert type(memo(type("Top", (), {"store": alone}), clock, "untrusted")) is UntrustedMemo
    finally:
        alone.close()


@pytest_twisted.inlineCallbacks
def test_requests_arriving_while_the_workers_start_still_make_one_origin_request(origin,
                                                                                 tmp_path):
    """The supervisor's sockets accept before the workers run; a worker takes clients only
    once its siblings answer, so the first misses still go to their owners."""
    paths = [f"/maven2/org/ex/workers/start/{i}/s-{i}.jar" for i in range(8)]
    for path in paths:
        make_blob(origin.root / "maven" / path.lstrip("/"), 100_000)
    gw = yield GatewayProcess(tmp_path, origin.url, workers=2).ready()  # ports only
    try:
        replies = yield defer.gatherResults([fetch(gw.port, HOST, path)
                                             for path in paths for _ in range(4)])
        assert all(reply.status == 200 for reply in replies)
        assert [origin.count("/maven" + path) for path in paths] == [1] * len(paths)
    finally:
        gw.stop()
