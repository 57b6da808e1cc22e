"""``GET /metrics``: the gateway's live counters in the Prometheus text format.

A custom collector reads the counters the process already keeps (``Stats``, ``DnsStats``,
``EngineEvents``, the TLS context, the store) at scrape time, rather than mirroring every
event into ``prometheus_client`` metric objects on the request path.  Label values are
bounded: ecosystems (the catalogue's names), cache labels, error kinds, stages.  Per-client
figures stay in ``/api/stats``: client addresses or URLs as label values would grow the
series without bound.

The series (``_total`` counters, ``_seconds`` histograms; the gateway's job in
Prometheus gives ``up``):

- ``cachegate_requests_total{ecosystem,label}``, ``cachegate_sent_bytes_total{ecosystem,
  source}``, ``cachegate_request_duration_seconds{ecosystem,label}`` (request to the
  response's last byte), ``cachegate_stale_responses_total{ecosystem}``;
- ``cachegate_upstream_requests_total{ecosystem}``, ``cachegate_upstream_errors_total
  {ecosystem,kind}`` (connect, tls, timeout, 5xx, reset, other),
  ``cachegate_upstream_fetch_duration_seconds{ecosystem}`` (request to response head);
- ``cachegate_integrity_failures_total{ecosystem,stage}`` (download: a body not matching
  its length or digest, never stored; stored: damaged on disk), ``cachegate_drift_events
  _total{ecosystem}``;
- ``cachegate_passthrough_rejections_total`` (clients refusing the CA),
  ``cachegate_passthrough_tunnels_total``, ``cachegate_passthrough_tunnel_failures_total``;
- ``cachegate_dns_*``, ``cachegate_dns_forward_duration_seconds``;
- ``cachegate_cache_*`` (objects, bytes, limit, ``evictions_total``), TLS, uptime, process.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                   HistogramMetricFamily, Metric)

from gateway.cache.events import ERROR_KINDS, EngineEvents
from gateway.cache.stats import Histogram
from gateway.ops.tier_metrics import tier_metrics

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class GatewayCollector:
    """Reads ``snapshot()`` (the ``/api/stats`` document) and ``live()`` (the histograms and
    engine counters, ``Live``) at every scrape."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]],
                 live: Callable[[], "Live"] | None = None) -> None:
        self.snapshot, self.live = snapshot, live

    def collect(self) -> Iterator[Metric]:
        doc = self.snapshot()
        live = self.live() if self.live is not None else None
        yield from _requests(doc["gateway"], live.ecosystems if live is not None else ())
        yield from _passthrough(doc.get("passthrough", {}))
        yield from _images(doc.get("images"))
        yield from tier_metrics(doc.get("tiers"))
        if live is not None:
            yield from _live(live)
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


def _requests(stats: dict[str, Any], names: tuple[str, ...] = ()) -> Iterator[Metric]:
    requests = CounterMetricFamily("cachegate_requests", "Requests answered, by ecosystem and "
                                   "how (HIT, MISS, REVALIDATED, STALE, PASS, ERROR)",
                                   labels=["ecosystem", "label"])
    sent = CounterMetricFamily("cachegate_sent_bytes", "Body bytes sent to clients, by "
                               "ecosystem and source (cache or upstream)",
                               labels=["ecosystem", "source"])
    ratio = GaugeMetricFamily("cachegate_hit_ratio", "Share of requests answered from the "
                              "cache since start", labels=["ecosystem"])
    stale = CounterMetricFamily("cachegate_stale_responses", "Stale copies served because "
                                "the upstream failed (or offline), by ecosystem",
                                labels=["ecosystem"])
    for ecosystem, tally in stats["ecosystems"].items():
        for label, count in sorted(tally["requests"].items()):
            requests.add_metric([ecosystem, label], count)
        sent.add_metric([ecosystem, "cache"], tally["bytes_from_cache"])
        sent.add_metric([ecosystem, "upstream"], tally["bytes_from_upstream"])
        ratio.add_metric([ecosystem], tally["hit_ratio"])
    stale_counts = {name: tally["requests"].get("STALE", 0)
                    for name, tally in stats["ecosystems"].items()}
    for ecosystem, count in sorted(_zeros(stale_counts, names).items()):
        stale.add_metric([ecosystem], count)
    yield requests
    yield sent
    yield ratio
    yield stale


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


class Live:
    """What the collector reads besides the stats document: the live histograms and the
    engine's counters (``GatewayService`` parts, named so tests can build one)."""

    def __init__(self, durations: dict, events: EngineEvents, dns_forward: Histogram,
                 evictions: int, ecosystems: tuple[str, ...] = ()) -> None:
        self.durations, self.events = durations, events
        self.dns_forward, self.evictions = dns_forward, evictions
        # The catalogue's names: their counters are shown at 0 before the first event, so
        # ``increase()`` in an alert sees the first one (a series born at 1 shows none).
        self.ecosystems = ecosystems


def _histogram(name: str, doc: str, labels: list[str],
               series: Iterator[tuple[list[str], Histogram]]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for values, histogram in series:
        family.add_metric(values, histogram.cumulative(), histogram.total)
    return family


def _live(live: Live) -> Iterator[Metric]:
    yield _histogram("cachegate_request_duration_seconds", "Seconds from a request to the "
                     "end of its response, by ecosystem and cache label", ["ecosystem", "label"],
                     ((list(key), h) for key, h in sorted(live.durations.items())))
    events = live.events
    yield _histogram("cachegate_upstream_fetch_duration_seconds", "Seconds from an upstream "
                     "request to its response head, by ecosystem", ["ecosystem"],
                     (([name], h) for name, h in sorted(events.fetch_seconds.items())))
    names = live.ecosystems
    yield _counter("cachegate_upstream_requests", "Upstream requests sent (answered or not), "
                   "by ecosystem", ["ecosystem"], _zeros(events.requests, names))
    yield _counter("cachegate_upstream_errors", "Upstream requests that failed, by ecosystem "
                   "and kind (connect, tls, timeout, 5xx, reset, other)", ["ecosystem", "kind"],
                   _zeros(events.upstream_errors, names, ERROR_KINDS))
    yield _counter("cachegate_integrity_failures", "Bodies that did not match their length "
                   "or digest, by ecosystem and stage (download: never stored; stored: "
                   "damaged on disk, dropped)", ["ecosystem", "stage"],
                   _zeros(events.integrity_failures, names, ("download", "stored")))
    yield _counter("cachegate_drift_events", "Immutable URLs whose bytes changed upstream "
                   "since first stored, by ecosystem", ["ecosystem"], _zeros(events.drift, names))
    yield _histogram("cachegate_dns_forward_duration_seconds", "Seconds the forwarders took "
                     "to answer (or fail) a forwarded DNS query", [],
                     iter([([], live.dns_forward)]))
    yield CounterMetricFamily("cachegate_cache_evictions", "Objects evicted to keep the store "
                              "under its size limit", value=live.evictions)


def _zeros(counts: dict, names: tuple[str, ...], second: tuple[str, ...] = ()) -> dict:
    """``counts`` with a 0 for every name (and every name, second pair) not in it yet."""
    keys = [(name, other) for name in names for other in second] if second else list(names)
    return {**dict.fromkeys(keys, 0), **counts}


def _counter(name: str, doc: str, labels: list[str], counts: dict) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, count in sorted(counts.items()):
        family.add_metric(list(key) if isinstance(key, tuple) else [key], count)
    return family


def _passthrough(doc: dict[str, Any]) -> Iterator[Metric]:
    pairs = doc.get("untrusting_clients", [])
    yield CounterMetricFamily("cachegate_passthrough_rejections", "TLS handshakes a client "
                              "ended by refusing the gateway's CA", value=doc.get("rejected", 0))
    yield CounterMetricFamily("cachegate_passthrough_tunnels", "HTTPS connections tunnelled "
                              "uncached to the real upstream (clients not trusting the CA)",
                              value=doc.get("tunnelled", 0))
    yield CounterMetricFamily("cachegate_passthrough_tunnel_failures", "Tunnels that could not "
                              "reach the real upstream", value=sum(p["tunnel_failures"]
                                                                   for p in pairs))


def _images(doc: dict[str, Any] | None) -> Iterator[Metric]:
    """The registry mirror's upstream requests ("GET manifests" are Docker Hub's counted
    pulls) and tag revalidations, per registry."""
    upstream = CounterMetricFamily("cachegate_registry_upstream_requests", "Requests the "
                                   "registry mirror sent upstream, by registry and request",
                                   labels=["registry", "request"])
    checks = CounterMetricFamily("cachegate_registry_tag_checks", "Tag revalidations (upstream "
                                 "HEADs) by registry and outcome", labels=["registry", "outcome"])
    for registry, figures in ((doc or {}).get("registries") or {}).items():
        for request, n in figures["upstream"].items():
            upstream.add_metric([registry, request], n)
        for outcome, n in figures["tag_checks"].items():
            checks.add_metric([registry, outcome], n)
    yield upstream
    yield checks


def metrics_registry(snapshot: Callable[[], dict[str, Any]],
                     live: Callable[[], Live] | None = None) -> CollectorRegistry:
    """A registry of our collector and the process's own (CPU, memory, open files)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(snapshot, live))
    ProcessCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


class _Pooled:
    """The supervisor's ``/metrics``: the workers' series with a ``worker`` label, the
    DNS, store and CA series of the supervisor (where those live) with
    ``worker="supervisor"``, and every process's own (CPU, memory)."""

    SUPERVISOR_ONLY = ("cachegate_dns", "cachegate_cache", "cachegate_tls", "cachegate_uptime")

    def __init__(self, own: CollectorRegistry, texts: Callable[[], dict[str, str]]) -> None:
        self.own, self.texts = own, texts

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        sources = [("supervisor", text_string_to_metric_families(render(self.own).decode()))]
        sources += [(name, text_string_to_metric_families(text))
                    for name, text in sorted(self.texts().items())]
        for worker, parsed in sources:
            for family in parsed:
                mine = family.name.startswith(self.SUPERVISOR_ONLY)
                if not family.name.startswith("process_") and (worker == "supervisor") != mine:
                    continue
                into = families.setdefault(family.name, Metric(family.name,
                                                               family.documentation,
                                                               family.type, family.unit))
                for sample in family.samples:
                    into.add_sample(sample.name, {**sample.labels, "worker": worker},
                                    sample.value, sample.timestamp)
        yield from families.values()


def pooled_metrics(own: CollectorRegistry, pool: Any) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Pooled(own, pool.metrics_texts))
    return registry
