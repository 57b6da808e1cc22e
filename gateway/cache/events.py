"""What the engine tells the operator's side: upstream fetch times and errors, integrity
failures, drift.  Plain counters kept here (the engine imports nothing from ``ops``);
``gateway/ops/metrics.py`` reads them at scrape time.

The error kinds are a fixed set, so they stay bounded as Prometheus label values:
``connect`` (refused, unreachable, no address, our own address), ``tls`` (handshake or
certificate), ``timeout``, ``5xx`` (an upstream answer >= 500), ``reset`` (the connection
lost before or during the response), ``other``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from twisted.internet import defer, error
from twisted.python.failure import Failure
from twisted.web import _newclient

from gateway.cache.stats import Histogram

ERROR_KINDS = ("connect", "tls", "timeout", "5xx", "reset", "other")
# Seconds from an upstream request to its response head.
FETCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

_TIMEOUTS = (defer.TimeoutError, defer.CancelledError, error.TimeoutError)
_CONNECT = (error.ConnectError, error.DNSLookupError, ConnectionRefusedError)
_RESET = (error.ConnectionLost, error.ConnectionDone, ConnectionResetError,
          _newclient.ResponseFailed, _newclient.ResponseNeverReceived,
          _newclient.RequestTransmissionFailed)


def failure_kind(failure: Failure) -> str:
    """The ``ERROR_KINDS`` member a failed upstream exchange counts under.  The HTTP
    client wraps the cause (``ResponseNeverReceived([...])``): its reasons are looked at
    first, a timeout or TLS failure among them winning over the lost connection."""
    reasons = getattr(failure.value, "reasons", None) or []
    kinds = [_kind(reason) for reason in reasons] or [_kind(failure)]
    for kind in ("timeout", "tls", "connect", "5xx", "reset"):
        if kind in kinds:
            return kind
    return _kind(failure) if reasons else kinds[0]


def _kind(failure: Failure) -> str:
    if failure.check(*_TIMEOUTS):
        return "timeout"
    if type(failure.value).__module__.startswith(("OpenSSL", "service_identity")) or \
            failure.check(error.VerifyError, error.CertificateError):
        return "tls"
    if failure.check(*_CONNECT):
        return "connect"
    if failure.check(*_RESET):
        return "reset"
    return "other"


@dataclass
class EngineEvents:
    """Counters the engine's flights and the request handler bump; read by metrics."""

    requests: Counter = field(default_factory=Counter)  # ecosystem: upstream requests sent
    fetch_seconds: dict = field(default_factory=dict)  # ecosystem -> Histogram
    upstream_errors: Counter = field(default_factory=Counter)  # (ecosystem, kind)
    integrity_failures: Counter = field(default_factory=Counter)  # (ecosystem, stage)
    drift: Counter = field(default_factory=Counter)  # ecosystem

    def fetched(self, ecosystem: str, seconds: float) -> None:
        """An upstream answered (any status) ``seconds`` after the request was sent."""
        self.requests[ecosystem] += 1
        histogram = self.fetch_seconds.get(ecosystem)
        if histogram is None:
            histogram = self.fetch_seconds[ecosystem] = Histogram(FETCH_BUCKETS)
        histogram.observe(seconds)

    def upstream_error(self, ecosystem: str, kind: str) -> None:
        self.upstream_errors[(ecosystem, kind if kind in ERROR_KINDS else "other")] += 1

    def upstream_failure(self, ecosystem: str, failure: Failure) -> None:
        """A response body that failed after its head arrived (counted by ``fetched``)."""
        self.upstream_error(ecosystem, failure_kind(failure))

    def unreachable(self, ecosystem: str, failure: Failure) -> None:
        """A request that got no response head at all."""
        self.requests[ecosystem] += 1
        self.upstream_error(ecosystem, failure_kind(failure))

    def integrity_failure(self, ecosystem: str, stage: str) -> None:
        """A body that did not match its promise: ``download`` (length or digest, never
        stored) or ``stored`` (damaged on disk, dropped)."""
        self.integrity_failures[(ecosystem, stage)] += 1

    def drift_event(self, ecosystem: str) -> None:
        """An immutable URL's bytes changed upstream since first stored."""
        self.drift[ecosystem] += 1
