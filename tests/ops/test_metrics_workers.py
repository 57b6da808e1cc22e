"""With worker processes the supervisor's /metrics carries each worker's request,
upstream and integrity series under a ``worker`` label (DNS and store series under
``worker="supervisor"``), and its status page plots the workers' summed counters."""

from __future__ import annotations

import re
import time

import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor, task

from tests.admin_gateways import PYPI_HOST, admin
from tests.fixtures import counter_bytes, put_object
from tests.http_client import fetch
from tests.processes import GatewayProcess

PATHS = [f"/packages/source/w/w{i}/w{i}-1.0.tar.gz" for i in range(3)]


@pytest_twisted.inlineCallbacks
def test_worker_series_are_labelled_and_the_plots_sum_the_workers(bare_origin, tmp_path):
    gw = GatewayProcess(tmp_path, bare_origin.url, workers=2)
    try:
        yield gw.ready(60)
        for path in PATHS:
            put_object(bare_origin.root, "pypi", path, counter_bytes(3000, path.encode()))
        for path in PATHS + PATHS:  # a MISS, then a HIT, of each
            reply = yield fetch(gw.port, PYPI_HOST, path)
            assert reply.status == 200
        deadline, samples = time.monotonic() + 30, {}
        while time.monotonic() < deadline:  # the supervisor gathers every second
            reply = yield admin(gw, "GET", "/metrics")
            samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                       for f in text_string_to_metric_families(reply.body.decode())
                       for s in f.samples}
            counts = [v for (n, labels), v in samples.items()
                      if n == "cachegate_request_duration_seconds_count"]
            if sum(counts) == 6:
                break
            yield task.deferLater(reactor, 0.5, lambda: None)
        workers = {dict(labels).get("worker") for (n, labels) in samples
                   if n == "cachegate_request_duration_seconds_count"}
        assert workers and workers <= {"0", "1"}, workers
        upstream = sum(v for (n, labels), v in samples.items()
                       if n == "cachegate_upstream_requests_total")
        assert upstream == 3  # each object fetched once, by its owner worker
        assert ("cachegate_cache_evictions_total", (("worker", "supervisor"),)) in samples
        assert ("cachegate_dns_forward_duration_seconds_count",
                (("worker", "supervisor"),)) in samples
        # The plots: the sampler (every 10 s) sees the workers' requests.
        deadline, page = time.monotonic() + 40, ""
        while time.monotonic() < deadline:
            reply = yield admin(gw, "GET", "/")
            page = reply.body.decode()
            requests = re.search(r'<svg id="plot-requests".*?</svg>', page).group(0)
            if 'data-series="MISS"' in requests:
                break
            yield task.deferLater(reactor, 1.0, lambda: None)
        assert 'data-series="MISS"' in requests and 'data-series="HIT"' in requests, requests
    finally:
        gw.stop()
