"""A real Prometheus (Debian's) scrapes a live gateway's /metrics every second; its HTTP
API answers PromQL: the hit ratio and the p99 request latency over a recent window, checked
against the requests this test made (one of them held up 1 s by the origin).  The shipped
rules load and evaluate there too."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task, threads

from gateway.ops.monitoring import RULES
from tests.admin_gateways import PYPI_HOST, WHEEL, serve_two
from tests.clients import need
from tests.fixtures import counter_bytes, put_object
from tests.http_client import fetch

RULES_FILE = Path(__file__).resolve().parents[2] / "gateway" / "ops" / "monitoring" / RULES
WINDOW = "10s"  # the PromQL window; the test waits past it after the warm-up
SCRAPE = "1s"
HITS = '{label=~"HIT|REVALIDATED|STALE"}'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    """``prometheus`` on loopback with a temporary storage directory."""

    def __init__(self, tmp: Path, targets: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = tmp / "prometheus.yml"
        config.write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": SCRAPE, "evaluation_interval": SCRAPE},
            "rule_files": [str(RULES_FILE)],
            "scrape_configs": [{"job_name": "cachegate", "metrics_path": "/metrics",
                                "static_configs": [{"targets": targets}]}]}))
        self.log = open(tmp / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "prometheus exited (see prometheus.log)"
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise AssertionError("prometheus not ready")

    def api(self, path: str, **params: str) -> dict:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as reply:
            doc = json.loads(reply.read())
        assert doc["status"] == "success", doc
        return doc["data"]

    def value(self, promql: str) -> float | None:
        """The single value of an instant query (None: an empty result)."""
        result = self.api("query", query=promql)["result"]
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


@pytest.fixture
def prometheus(tmp_path):  # type: ignore[no-untyped-def]
    """``prometheus([host:port, ...])``: a running Prometheus scraping those targets."""
    need(shutil.which("prometheus"), "prometheus not installed (Debian package prometheus)")
    started: list[Prometheus] = []

    def start(targets: list[str]) -> Prometheus:
        server = Prometheus(tmp_path, targets)
        started.append(server)
        server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()


@defer.inlineCallbacks
def until(prom: Prometheus, promql: str, want: float, timeout: float = 30):  # type: ignore[no-untyped-def]
    """Wait (the reactor running: the gateway answers scrapes) until ``promql`` is ``want``."""
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        got = yield threads.deferToThread(prom.value, promql)
        if got == want:
            return
        yield task.deferLater(reactor, 0.5, lambda: None)
    raise AssertionError(f"{promql} = {got}, not {want}, after {timeout} s")


@pytest_twisted.inlineCallbacks
def test_prometheus_answers_hit_ratio_and_p99_of_the_requests_made(bare_origin, admin_gateway,
                                                                    prometheus):
    gw = admin_gateway(bare_origin.url)
    prom = yield threads.deferToThread(prometheus, [f"127.0.0.1:{gw.admin_port}"])
    # Warm-up: every series the measurement uses exists (a series born inside the window
    # would lose its first increment to increase()).
    yield serve_two(bare_origin, gw)  # pypi MISS, HIT; alpine MISS
    yield until(prom, 'sum(cachegate_requests_total{ecosystem="pypi"})', 2)
    yield task.deferLater(reactor, 12, lambda: None)  # the warm-up falls out of the window
    # Measured: 8 hits and 2 misses, one of them held up 1 s by the origin.
    slow = "/packages/source/s/slow/slow-1.0.tar.gz"
    quick = "/packages/source/q/quick/quick-1.0.tar.gz"
    for path in (slow, quick):
        put_object(bare_origin.root, "pypi", path, counter_bytes(4000, path.encode()))
    bare_origin.behave("/pypi" + slow, delay_headers=1.0)
    started = time.monotonic()
    reply = yield fetch(gw.port, PYPI_HOST, slow)
    slow_seconds = time.monotonic() - started
    assert reply.headers["x-cache"] == "MISS" and slow_seconds >= 1.0
    reply = yield fetch(gw.port, PYPI_HOST, quick)
    assert reply.headers["x-cache"] == "MISS"
    for _ in range(8):
        reply = yield fetch(gw.port, PYPI_HOST, WHEEL)
        assert reply.headers["x-cache"] == "HIT"
    yield until(prom, 'sum(cachegate_requests_total{ecosystem="pypi"})', 12)

    ratio = yield threads.deferToThread(
        prom.value, f"sum(increase(cachegate_requests_total{HITS}[{WINDOW}]))"
                    f" / sum(increase(cachegate_requests_total[{WINDOW}]))")
    assert ratio == pytest.approx(8 / 10)
    p99 = yield threads.deferToThread(
        prom.value, "histogram_quantile(0.99, sum by (le) "
                    f"(increase(cachegate_request_duration_seconds_bucket[{WINDOW}])))")
    # The 10th of 10 requests (the held-up miss) sets the 99th percentile: in its bucket.
    assert 1.0 < p99 <= 2.5 and p99 <= max(2.5, slow_seconds)
    hits_p99 = yield threads.deferToThread(
        prom.value, "histogram_quantile(0.99, sum by (le) (increase("
                    f'cachegate_request_duration_seconds_bucket{{label="HIT"}}[{WINDOW}])))')
    assert hits_p99 < 1.0  # answered from the store, not held up by the origin

    rules = yield threads.deferToThread(prom.api, "rules")
    groups = {g["name"]: g for g in rules["groups"]}
    assert set(groups) == {"cachegate.recording", "cachegate.alerts"}
    assert all(r["health"] == "ok" for g in groups.values() for r in g["rules"]), groups
    down = next(r for r in groups["cachegate.alerts"]["rules"] if r["name"] == "CachegateDown")
    assert down["state"] == "inactive"
    up = yield threads.deferToThread(prom.value, 'up{job="cachegate"}')
    assert up == 1
