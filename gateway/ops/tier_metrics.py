"""Prometheus series of the shared tiers (``/api/stats`` ``tiers``): bytes fetched by
where they came from (a parent, S3, the upstream), each parent's and the S3 store's
breaker, and the S3 write-behind queue."""

from __future__ import annotations

from typing import Any, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric


def tier_metrics(tiers: dict[str, Any] | None) -> Iterator[Metric]:
    if not tiers or not (tiers.get("parents") or tiers.get("s3")):
        return
    fetched = CounterMetricFamily("cachegate_tier_fetched_bytes", "Bytes of fetched bodies "
                                  "stored here, by where they came from", labels=["source"])
    byte_counts = tiers.get("bytes", {})
    for source in ("parents", "s3", "upstream"):
        fetched.add_metric([source.rstrip("s") if source == "parents" else source],
                           byte_counts.get(source, 0))
    yield fetched
    up = GaugeMetricFamily("cachegate_parent_up", "1 while a parent's breaker is closed "
                           "(or probing), 0 while open", labels=["parent"])
    failures = CounterMetricFamily("cachegate_parent_failures", "Requests a parent did not "
                                   "answer (refused, timed out)", labels=["parent"])
    received = CounterMetricFamily("cachegate_parent_received_bytes", "Bytes of bodies "
                                   "fetched from a parent", labels=["parent"])
    for parent in tiers.get("parents", []):
        up.add_metric([parent["parent"]], 0 if parent["state"] == "open" else 1)
        failures.add_metric([parent["parent"]], parent["failures"])
        received.add_metric([parent["parent"]], parent["bytes"])
    yield from (up, failures, received)
    s3 = tiers.get("s3")
    if s3:
        yield from _s3(s3)


def _s3(s3: dict[str, Any]) -> Iterator[Metric]:
    yield GaugeMetricFamily("cachegate_s3_up", "1 while the S3 tier's breaker is closed "
                            "(or probing), 0 while open", value=0 if s3["state"] == "open" else 1)
    reads = CounterMetricFamily("cachegate_s3_reads", "Read-through look-ups, by result "
                                "(corrupt: a body that did not hash to its name, deleted)",
                                labels=["result"])
    for result, key in (("hit", "hits"), ("miss", "misses"), ("error", "errors"),
                        ("corrupt", "corrupt")):
        reads.add_metric([result], s3[key])
    yield reads
    writes = CounterMetricFamily("cachegate_s3_writes", "Write-behind uploads, by result "
                                 "(present: another host's copy was first; dropped: the queue "
                                 "was full)", labels=["result"])
    for result, key in (("uploaded", "uploaded"), ("present", "present"),
                        ("dropped", "dropped"), ("error", "upload_errors")):
        writes.add_metric([result], s3[key])
    yield writes
    yield CounterMetricFamily("cachegate_s3_requests", "Requests sent to the S3 store "
                              "(reads, HEADs and PUTs)", value=s3["requests"])
    yield GaugeMetricFamily("cachegate_s3_queue", "Objects waiting for upload or uploading",
                            value=s3["queued"] + s3["uploading"])
