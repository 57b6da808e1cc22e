"""``GET /metrics``: the gateway's live counters in the Prometheus text format.

A custom collector reads the counters the process already keeps (``Stats``, ``DnsStats``,
the TLS context, the store) at scrape time, rather than mirroring every event into
``prometheus_client`` metric objects on the request path.  Per-client figures stay in
``/api/stats``: client addresses as label values would grow the series without bound.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class GatewayCollector:
    """Reads ``snapshot()`` (the ``/api/stats`` document) at every scrape."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        doc = self.snapshot()
        yield from _requests(doc["gateway"])
        yield from _dns(doc["dns"])
        yield from _cache(doc["cache"], doc["downloads"])
        tls = doc["tls"]
        yield CounterMetricFamily("cachegate_tls_refused_handshakes",
                                  "TLS handshakes refused: no SNI, or a name we do not serve",
                                  value=tls["refused"])
        yield CounterMetricFamily("cachegate_tls_certificates_minted",
                                  "Leaf certificates signed by the local CA", value=tls["minted"])
        yield GaugeMetricFamily("cachegate_uptime_seconds", "Seconds since the gateway started",
                                value=doc["uptime"])


def _requests(stats: dict[str, Any]) -> Iterator[Metric]:
    requests = CounterMetricFamily("cachegate_requests", "Requests answered, by ecosystem and "
                                   "how (HIT, MISS, REVALIDATED, STALE, PASS, ERROR)",
                                   labels=["ecosystem", "label"])
    sent = CounterMetricFamily("cachegate_sent_bytes", "Body bytes sent to clients, by "
                               "ecosystem and source (cache or upstream)",
                               labels=["ecosystem", "source"])
    ratio = GaugeMetricFamily("cachegate_hit_ratio", "Share of requests answered from the "
                              "cache since start", labels=["ecosystem"])
    for ecosystem, tally in stats["ecosystems"].items():
        for label, count in sorted(tally["requests"].items()):
            requests.add_metric([ecosystem, label], count)
        sent.add_metric([ecosystem, "cache"], tally["bytes_from_cache"])
        sent.add_metric([ecosystem, "upstream"], tally["bytes_from_upstream"])
        ratio.add_metric([ecosystem], tally["hit_ratio"])
    yield requests
    yield sent
    yield ratio


def _dns(dns: dict[str, int]) -> Iterator[Metric]:
    yield CounterMetricFamily("cachegate_dns_queries", "DNS messages received",
                              value=dns["queries"])
    answers = CounterMetricFamily("cachegate_dns_answers", "DNS queries by how they were "
                                  "answered", labels=["how"])
    for how in ("redirected", "forwarded", "cache_hits", "refused", "errors"):
        answers.add_metric([how], dns[how])
    yield answers


def _cache(cache: dict[str, Any], downloads: dict[str, int]) -> Iterator[Metric]:
    objects = GaugeMetricFamily("cachegate_cache_objects", "Objects stored, by ecosystem",
                                labels=["ecosystem"])
    stored = GaugeMetricFamily("cachegate_cache_object_bytes", "Bytes of stored bodies, by "
                               "ecosystem", labels=["ecosystem"])
    for ecosystem, figures in cache["ecosystems"].items():
        objects.add_metric([ecosystem], figures["objects"])
        stored.add_metric([ecosystem], figures["bytes"])
    yield objects
    yield stored
    yield GaugeMetricFamily("cachegate_cache_bytes", "Bytes the store holds (its volume)",
                            value=cache["bytes"])
    yield GaugeMetricFamily("cachegate_cache_limit_bytes", "The store's size limit",
                            value=cache["limit"])
    yield GaugeMetricFamily("cachegate_downloads_active", "Upstream downloads in progress",
                            value=downloads["active"])


def metrics_registry(snapshot: Callable[[], dict[str, Any]]) -> CollectorRegistry:
    """A registry of our collector and the process's own (CPU, memory, open files)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(snapshot))
    ProcessCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
