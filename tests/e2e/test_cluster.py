"""Many build hosts: two children and two parents, each a real ``cachegate serve``, in
front of the recording fixture origin (the only fake)."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest_twisted
from twisted.internet import defer, reactor, task, threads

from gateway.cache.keys import base_key
from gateway.cache.rendezvous import ranked
from tests.fixtures import make_blob
from tests.http_client import fetch, raw_get
from tests.processes import GatewayProcess, api_stats, free_port, serve, toml_config

HOST = "repo1.maven.org"
TOKEN = "s3cret-cluster-token"


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


@defer.inlineCallbacks
def scrape(gw: GatewayProcess):  # type: ignore[no-untyped-def]
    """The gateway's /metrics as {(name, labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families
    from twisted.web.client import Agent, readBody
    response = yield Agent(reactor).request(
        b"GET", f"http://127.0.0.1:{gw.admin_port}/metrics".encode())
    text = (yield readBody(response)).decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def token_file(tmp: Path, token: str = TOKEN) -> Path:
    path = tmp / f"token-{hashlib.sha256(token.encode()).hexdigest()[:8]}"
    path.write_text(token + "\n")
    return path


class Fleet:
    """Two parents listening for children, two children sending them their misses."""

    def __init__(self, tmp: Path, origin_url: str, breaker_seconds: float = 5.0) -> None:
        token = token_file(tmp)
        self.cluster_ports = [free_port(), free_port()]
        self.parent_urls = [f"http://127.0.0.1:{p}" for p in self.cluster_ports]
        self.parents = [
            GatewayProcess(self._dir(tmp, f"parent{i}"), origin_url,
                           extra=f'[cluster]\nlisten = "127.0.0.1:{port}"\n'
                                 f'token_file = "{token}"\n')
            for i, port in enumerate(self.cluster_ports)]
        parents = ", ".join(f'"{url}"' for url in self.parent_urls)
        self.children = [
            GatewayProcess(self._dir(tmp, f"child{i}"), origin_url,
                           extra=f'[cluster]\nparents = [{parents}]\ntoken_file = "{token}"\n'
                                 f"breaker_seconds = {breaker_seconds}\n")
            for i in range(2)]

    @staticmethod
    def _dir(tmp: Path, name: str) -> Path:
        (tmp / name).mkdir()
        return tmp / name

    @defer.inlineCallbacks
    def ready(self):  # type: ignore[no-untyped-def]
        for gw in self.parents + self.children:
            yield gw.ready()
        return self

    def owner(self, path: str) -> int:
        """The index of the parent that owns ``path`` (the children's rendezvous choice)."""
        return self.parent_urls.index(ranked(base_key(HOST, path), self.parent_urls)[0])

    def stop(self) -> None:
        for gw in self.children + self.parents:
            gw.stop()


def blob(origin, path: str, size: int) -> str:  # type: ignore[no-untyped-def]
    file = origin.root / "maven" / path.lstrip("/")
    make_blob(file, size)
    return hashlib.sha256(file.read_bytes()).hexdigest()


@pytest_twisted.inlineCallbacks
def test_a_herd_over_two_children_makes_one_origin_request_and_a_dead_owner_costs_nothing(
        origin, tmp_path):
    fleet = yield Fleet(tmp_path, origin.url).ready()
    try:
        path = "/maven2/org/ex/cluster/1.0/cluster-1.0.jar"
        expected = blob(origin, path, 4_000_000)
        origin.behave("/maven" + path, slow_bytes_per_s=8_000_000)  # ~0.5 s: the herd overlaps
        clients = []
        for i in range(20):
            clients.append(raw_get(fleet.children[i % 2].port, HOST, path, keep=False))
        results = yield defer.gatherResults(clients)
        for head, _, proto in results:
            assert head.startswith("HTTP/1.1 200"), head
            assert proto.body_length == 4_000_000 and proto.sha256 == expected
        assert origin.count("/maven" + path) == 1
        owner = fleet.owner(path)
        for child in fleet.children:  # each child stored it, fetched from the owning parent
            stats = yield api_stats(child)
            tiers = stats["tiers"]
            # (and the small 404 of the jar's .sha1, asked first for its digest)
            assert 4_000_000 <= tiers["bytes"]["parents"] < 4_001_000, tiers
            assert tiers["bytes"].get("upstream", 0) == 0, tiers
            assert tiers["parents"][owner]["bytes"] >= 4_000_000, tiers
            hit = yield fetch(child.port, HOST, path)
            assert hit.headers["x-cache"] == "HIT" and hit.sha256 == expected
            series = yield scrape(child)
            assert 4_000_000 <= series[("cachegate_tier_fetched_bytes_total",
                                        (("source", "parent"),))] < 4_001_000, series
            assert series[("cachegate_tier_fetched_bytes_total", (("source", "upstream"),))] == 0
            text = yield threads.deferToThread(stats_text, child)
            assert "\nfetched from parents 3.8 MiB, s3 0 B, upstream 0 B\n" in text, text

        # The owner of the next object dies: its children go to the other parent.
        path2 = "/maven2/org/ex/cluster/2.0/cluster-2.0.jar"
        expected2 = blob(origin, path2, 300_000)
        dead = fleet.owner(path2)
        fleet.parents[dead].kill()
        replies = yield defer.gatherResults([fetch(child.port, HOST, path2)
                                             for child in fleet.children])
        assert [r.status for r in replies] == [200, 200]
        assert all(r.sha256 == expected2 for r in replies)
        assert origin.count("/maven" + path2) == 1, "the surviving parent's one fetch"
        for child in fleet.children:
            tiers = (yield api_stats(child))["tiers"]
            assert tiers["parents"][dead]["state"] == "open", tiers
            assert tiers["parents"][1 - dead]["bytes"] >= 300_000, tiers
    finally:
        fleet.stop()


@pytest_twisted.inlineCallbacks
def test_with_every_parent_stopped_builds_pass_with_one_failed_connect_per_breaker_period(
        origin, tmp_path):
    fleet = yield Fleet(tmp_path, origin.url, breaker_seconds=3600).ready()
    try:
        for parent in fleet.parents:
            parent.stop()
        child = fleet.children[0]
        paths = [f"/maven2/org/ex/down/{i}.0/down-{i}.0.jar" for i in range(6)]
        sums = [blob(origin, path, 50_000 + i) for i, path in enumerate(paths)]
        for path, expected in zip(paths, sums):
            reply = yield fetch(child.port, HOST, path)
            assert reply.status == 200 and reply.sha256 == expected
            assert origin.count("/maven" + path) == 1
        tiers = (yield api_stats(child))["tiers"]
        assert [p["failures"] for p in tiers["parents"]] == [1, 1], tiers
        assert [p["state"] for p in tiers["parents"]] == ["open", "open"], tiers
        assert tiers["bytes"]["upstream"] >= sum(50_000 + i for i in range(6)), tiers
        assert tiers["bytes"].get("parents", 0) == 0, tiers
        from twisted.web.client import Agent, readBody
        page = yield Agent(reactor).request(b"GET", f"http://127.0.0.1:{child.admin_port}/"
                                            .encode())
        html = (yield readBody(page)).decode()
        assert html.count('data-tier="parent" data-state="open"') == 2, html
        text = yield threads.deferToThread(stats_text, child)
        for url in fleet.parent_urls:
            assert re.search(rf"^parent {url}: open \(probe in \d+ s\), 1 failures; 1 requests",
                             text, re.M), text
        assert re.search(r"^fetched from parents 0 B, s3 0 B, upstream \d", text, re.M), text
    finally:
        fleet.stop()


def stats_text(gw: GatewayProcess) -> str:
    """What ``cachegate stats`` prints for ``gw``."""
    return subprocess.run([sys.executable, "-m", "gateway.ops.cli", "--config", str(gw.config),
                           "stats"], capture_output=True, text=True, check=True).stdout


@pytest_twisted.inlineCallbacks
def test_a_parent_refuses_a_wrong_token_and_hosts_outside_the_catalogue(origin, tmp_path):
    fleet = Fleet(tmp_path, origin.url)
    parent = fleet.parents[0]
    fleet.parents[1].proc.terminate()
    for child in fleet.children:
        child.proc.terminate()
    yield parent.ready()
    try:
        path = "/maven2/org/ex/token/1.0/token-1.0.jar"
        expected = blob(origin, path, 20_000)
        port = fleet.cluster_ports[0]
        wrong = yield fetch(port, HOST, path, {"proxy-authorization": "Bearer guessed"},
                            proxy=True)
        assert wrong.status == 403
        none = yield fetch(port, HOST, path, proxy=True)
        assert none.status == 403
        assert origin.count("/maven" + path) == 0
        right = yield fetch(port, HOST, path, {"proxy-authorization": f"Bearer {TOKEN}"},
                            proxy=True)
        assert right.status == 200 and right.sha256 == expected
        for wrong_or_none in ({"proxy-authorization": "Bearer guessed"}, {}):  # now stored
            again = yield fetch(port, HOST, path, wrong_or_none, proxy=True)
            assert again.status == 403 and again.sha256 != expected
        hit = yield fetch(port, HOST, path, {"proxy-authorization": f"Bearer {TOKEN}"},
                          proxy=True)
        assert hit.headers["x-cache"] == "HIT" and hit.sha256 == expected
        assert origin.count("/maven" + path) == 1
        other = yield fetch(port, "example.com", "/", {"proxy-authorization": f"Bearer {TOKEN}"},
                            proxy=True)
        assert other.status == 403, "never an open proxy"
        stats = yield api_stats(parent)
        assert stats["tiers"]["children_refused"] == 4
    finally:
        fleet.stop()


class RuledChild(GatewayProcess):
    """A child whose Maven entry has a rule of its own (``rules`` in ``[upstreams.maven]``)."""

    def __init__(self, tmp: Path, origin_url: str, cluster: str, rule: str) -> None:
        self.port, self.admin_port = free_port(), free_port()
        self.state_dir = tmp / "state"
        self.config = tmp / f"cachegate-{self.port}.toml"
        maven = f'[upstreams.maven]\norigin = "{origin_url}/maven"\nrules = [{rule}]\n'
        self.config.write_text(toml_config(self.state_dir, self.port, origin_url,
                                           ["debian", "pypi"], cluster + maven, 1,
                                           self.admin_port))
        self.proc = serve(self.config, tmp / f"gateway-{self.port}.log")


@pytest_twisted.inlineCallbacks
def test_a_parent_never_makes_an_object_fresher_than_the_childs_rule(origin, tmp_path):
    fleet = yield Fleet(tmp_path, origin.url).ready()
    parents = ", ".join(f'"{url}"' for url in fleet.parent_urls)
    cluster = f'[cluster]\nparents = [{parents}]\ntoken_file = "{token_file(tmp_path)}"\n'
    strict = RuledChild(fleet._dir(tmp_path, "strict"), origin.url, cluster,
                        r'{path = "/maven-metadata\\.xml$", policy = "revalidate", ttl = 2}')
    young, old = (f"/maven2/org/ex/meta{i}/maven-metadata.xml" for i in (1, 2))
    for path in (young, old):
        file = origin.root / "maven" / path.lstrip("/")
        file.parent.mkdir(parents=True)
        file.write_text(f"<metadata><artifactId>{path}</artifactId></metadata>\n")
    try:
        yield strict.ready()
        for path in (young, old):  # the owning parents store both
            assert (yield fetch(fleet.children[0].port, HOST, path)).status == 200
        labels = []
        for _ in range(2):  # young at its parent: fresh here too
            reply = yield fetch(strict.port, HOST, young)
            labels.append(reply.headers["x-cache"])
        assert labels == ["MISS", "HIT"]
        yield sleep(3)  # the parent's copy of ``old`` is now older than this child's 2 s
        labels = []
        for _ in range(2):  # fresh for the parent's own rule, but stale at once here
            reply = yield fetch(strict.port, HOST, old)
            assert reply.status == 200
            labels.append(reply.headers["x-cache"])
        assert labels == ["MISS", "REVALIDATED"], labels
        assert origin.count("/maven" + old) == 1, "the parent answered the revalidation"
    finally:
        strict.stop()
        fleet.stop()


@pytest_twisted.inlineCallbacks
def test_doctor_checks_each_parent_for_reach_and_token(origin, tmp_path):
    from dataclasses import replace

    from gateway.config import ClusterConfig, Config
    from gateway.ops.tier_checks import check_parent
    fleet = Fleet(tmp_path, origin.url)
    for gw in fleet.children + fleet.parents[1:]:
        gw.proc.terminate()
    yield fleet.parents[0].ready()
    try:
        live, dead = fleet.parent_urls
        good = replace(Config(), cluster=ClusterConfig(parents=(live, dead),
                                                       token_file=str(token_file(tmp_path))))
        bad = replace(good, cluster=replace(good.cluster,
                                            token_file=str(token_file(tmp_path, "other"))))
        checks = yield threads.deferToThread(
            lambda: [check_parent(good, live, 2.0), check_parent(bad, live, 2.0),
                     check_parent(good, dead, 2.0)])
        assert [c.ok for c in checks] == [True, False, False], checks
        assert "token accepted" in checks[0].detail
        assert "403" in checks[1].detail and "unreachable" in checks[2].detail
    finally:
        fleet.stop()


@pytest_twisted.inlineCallbacks
def test_a_gateway_listed_among_its_own_parents_skips_itself(origin, tmp_path):
    """One config for the whole fleet: every host is a parent and a child."""
    port = free_port()
    me = f"http://127.0.0.1:{port}"
    gw = GatewayProcess(tmp_path, origin.url, extra=(
        f'[cluster]\nlisten = "127.0.0.1:{port}"\nparents = ["{me}"]\n'
        f'token_file = "{token_file(tmp_path)}"\n'))
    try:
        yield gw.ready()
        path = "/maven2/org/ex/self/1.0/self-1.0.jar"
        expected = blob(origin, path, 30_000)
        for _ in range(2):
            reply = yield fetch(gw.port, HOST, path)
            assert reply.status == 200 and reply.sha256 == expected
        assert origin.count("/maven" + path) == 1
        tiers = (yield api_stats(gw))["tiers"]
        assert tiers["parents"][0]["itself"] is True and \
            tiers["parents"][0]["state"] == "closed", tiers
    finally:
        gw.stop()


@pytest_twisted.inlineCallbacks
def test_a_mesh_of_hosts_each_parent_and_child_makes_one_origin_request(origin, tmp_path):
    """Every host listed as a parent of every other (and itself): a key goes only to hosts
    ranked above the asker, so two hosts never wait on each other."""
    ports = [free_port(), free_port()]
    urls = ", ".join(f'"http://127.0.0.1:{p}"' for p in ports)
    token = token_file(tmp_path)
    hosts = [GatewayProcess(Fleet._dir(tmp_path, f"mesh{i}"), origin.url, extra=(
        f'[cluster]\nlisten = "127.0.0.1:{port}"\nparents = [{urls}]\n'
        f'token_file = "{token}"\n')) for i, port in enumerate(ports)]
    try:
        for gw in hosts:
            yield gw.ready()
        paths = [f"/maven2/org/ex/mesh/{i}.0/mesh-{i}.0.jar" for i in range(6)]
        sums = [blob(origin, path, 200_000 + i) for i, path in enumerate(paths)]
        for path in paths:
            origin.behave("/maven" + path, slow_bytes_per_s=2_000_000)
        replies = yield defer.gatherResults([fetch(gw.port, HOST, path)
                                             for path in paths for gw in hosts])
        assert [r.sha256 for r in replies] == [s for s in sums for _ in hosts]
        assert [origin.count("/maven" + path) for path in paths] == [1] * 6
    finally:
        for gw in hosts:
            gw.stop()


@pytest_twisted.inlineCallbacks
def test_a_child_with_two_worker_processes_uses_the_parents_and_sums_their_figures(
        origin, tmp_path):
    fleet = Fleet(tmp_path, origin.url)
    for gw in fleet.children:
        gw.proc.terminate()
    parents = ", ".join(f'"{url}"' for url in fleet.parent_urls)
    child = GatewayProcess(Fleet._dir(tmp_path, "workers"), origin.url, workers=2, extra=(
        f'[cluster]\nparents = [{parents}]\ntoken_file = "{token_file(tmp_path)}"\n'))
    try:
        for gw in fleet.parents + [child]:
            yield gw.ready()
        paths = [f"/maven2/org/ex/wk/{i}.0/wk-{i}.0.jar" for i in range(8)]
        sums = [blob(origin, path, 10_000 + i) for i, path in enumerate(paths)]
        replies = yield defer.gatherResults([fetch(child.port, HOST, p) for p in paths])
        assert [r.sha256 for r in replies] == sums
        assert all(origin.count("/maven" + p) == 1 for p in paths)
        want = sum(10_000 + i for i in range(8))
        for _ in range(100):  # the supervisor gathers the workers' figures each second
            tiers = (yield api_stats(child))["tiers"]
            if tiers["bytes"].get("parents", 0) >= want:
                break
            yield sleep(0.1)
        assert want <= tiers["bytes"]["parents"] < want + 1000, tiers
        assert sum(p["bytes"] for p in tiers["parents"]) == tiers["bytes"]["parents"]
        assert tiers["bytes"].get("upstream", 0) == 0, tiers
    finally:
        child.stop()
        fleet.stop()


@pytest_twisted.inlineCallbacks
def test_the_owning_parent_killed_mid_body_the_next_tier_finishes_it(origin, tmp_path):
    fleet = yield Fleet(tmp_path, origin.url).ready()
    try:
        path = "/maven2/org/ex/midbody/1.0/midbody-1.0.jar"
        expected = blob(origin, path, 3_000_000)
        origin.behave("/maven" + path, slow_bytes_per_s=1_500_000)  # ~2 s per fetch
        owner = fleet.owner(path)
        clients = [raw_get(child.port, HOST, path, keep=False)
                   for child in fleet.children for _ in range(3)]
        for _ in range(100):
            if origin.count("/maven" + path):
                break
            yield sleep(0.05)
        yield sleep(0.8)  # bytes are flowing from the owner to both children
        fleet.parents[owner].kill()
        results = yield defer.gatherResults(clients)
        for head, _, proto in results:
            assert head.startswith("HTTP/1.1 200"), head
            assert proto.body_length == 3_000_000 and proto.sha256 == expected
        for child in fleet.children:
            tiers = (yield api_stats(child))["tiers"]
            assert tiers["resumed"] == 1, tiers
            assert tiers["parents"][owner]["state"] == "open", tiers
            hit = yield fetch(child.port, HOST, path)  # stored whole
            assert hit.headers["x-cache"] == "HIT" and hit.sha256 == expected
        assert origin.count("/maven" + path) == 2  # the dead owner's and the next parent's
    finally:
        fleet.stop()
