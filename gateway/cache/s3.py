"""The S3 tier: an S3-compatible object store shared by every host, behind the parents.

- **Write-behind**: an immutable object committed here is queued (bounded: past ``queue``
  objects the newest are dropped and counted) and uploaded under a content-addressed key,
  ``<prefix>sha256/<hex>``, then a small pointer ``<prefix>keys/<sha256 of the cache key>``
  holding its stored head (status, headers, sha256, length).  Both PUTs carry
  ``If-None-Match: *``: the first finished copy wins, a 412 means another host was first.
  An object a parent gave us is left to that parent when it says it writes behind to
  this same store (``identity``, in its answers' ``X-Cachegate-S3``).
- **Read-through**: a local miss on an immutable object reads the pointer, then streams
  the body into the flight like an upstream response; it is stored under this host's own
  rule, and its sha256 must match the pointer's or the body is refused.
- Bodies and pointers go through Twisted from presigned URLs (boto3 signs in process, no
  I/O); boto3's own blocking calls (the client, HEAD bucket, the doctor's test write) run
  in a thread pool with tight timeouts and one attempt.
- Any S3 error opens the breaker (``breaker.py``): the tier is skipped, the upstream
  serves as if there were no S3, and the tier is probed again after the back-off.

Only immutable objects use the tier: an index that changes upstream is never read from a
copy another host stored at some earlier time.
"""

from __future__ import annotations

import hashlib
import json
import os
from io import BytesIO
from collections import deque
from typing import Any, Callable

from twisted.internet import defer, threads
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.client import FileBodyProducer, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse
from zope.interface import implementer

from gateway.cache.breaker import Breaker
from gateway.cache.download import Download, VerificationError
from gateway.cache.fetcher import Fetcher
from gateway.cache.rules import Digest, Policy, Rule
from gateway.cache.store import Meta, Store

log = Logger()

SOURCE = "s3"
POINTER = "the S3 store's pointer"  # the source named when a body does not match it
# Presigned URLs are used at once; a short life limits what a leaked one is worth.
PRESIGN_SECONDS = 300
# Uploads running at once: the write-behind must not take the upstream's bandwidth.
UPLOADERS = 2
THREADS = 4  # boto3 control calls at once (its connection pool is as large)


class S3Error(Exception):
    """An answer from the store that is neither the object nor a clean "not there"."""


def body_key(prefix: str, sha256: str) -> str:
    return f"{prefix}sha256/{sha256}"


def pointer_key(prefix: str, cache_key: str) -> str:
    return f"{prefix}keys/{hashlib.sha256(cache_key.encode()).hexdigest()}"


def pointer_document(meta: Meta) -> bytes:
    return json.dumps({"url": meta.url, "status": meta.status, "headers": meta.headers,
                       "length": meta.length, "sha256": meta.sha256}).encode()


def make_client(endpoint: str, region: str, credentials_file: str, timeout: float):  # type: ignore[no-untyped-def]
    """A boto3 S3 client (blocking: build it in a thread) with one attempt per call."""
    import boto3
    from botocore.config import Config as BotoConfig
    keys: dict[str, str] = {}
    if credentials_file:
        access, _, secret = open(credentials_file).read().strip().partition(":")
        keys = {"aws_access_key_id": access, "aws_secret_access_key": secret}
    config = BotoConfig(connect_timeout=timeout, read_timeout=timeout,
                        retries={"max_attempts": 1, "mode": "standard"},
                        max_pool_connections=THREADS, signature_version="s3v4",
                        s3={"addressing_style": "path"})
    return boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=region,
                                          config=config, **keys)


@implementer(IResponse)
class StoredResponse:
    """The S3 body as the flight sees an upstream response: the stored head, the S3 body,
    and the pointer's sha256 as a digest the download must match (its last byte held back
    until it does).  A body that does not is reported to the tier (``body_ended``)."""

    def __init__(self, body, document: dict[str, Any], tier: "S3Tier",  # type: ignore[no-untyped-def]
                 cache_key: str) -> None:
        self.body, self.document, self.tier, self.cache_key = body, document, tier, cache_key
        self.code = document["status"]
        self.phrase = b"OK"
        self.version = (b"HTTP", 1, 1)
        self.headers = Headers()
        for name, value in document["headers"]:
            self.headers.addRawHeader(name, value)
        self.length = document["length"]
        self.request = self.previousResponse = None
        self.source = SOURCE
        self.digest = Digest("sha256", document["sha256"], POINTER)

    def deliverBody(self, protocol: Protocol) -> None:  # noqa: N802
        self.body.deliverBody(protocol)

    def body_ended(self, download: Download) -> None:
        error = download.error
        if error is not None and error.check(VerificationError) and \
                download.sha256.hexdigest() != self.digest.hex:
            self.tier.corrupt(self.cache_key, self.digest.hex)

    def setPreviousResponse(self, response) -> None:  # type: ignore[no-untyped-def]  # noqa: N802
        pass


class _Discard(Protocol):
    def connectionLost(self, reason: Failure) -> None:  # noqa: N802
        pass


class S3Tier:
    def __init__(self, reactor, store: Store, endpoint: str, bucket: str, prefix: str,  # type: ignore[no-untyped-def]
                 region: str, credentials_file: str, queue: int, timeout: float,
                 breaker_seconds: float, rule_for: Callable[[str], Rule | None]) -> None:
        self.reactor, self.store, self.bucket, self.prefix = reactor, store, bucket, prefix
        self.endpoint, self.region, self.credentials_file = endpoint, region, credentials_file
        self.timeout, self.limit, self.rule_for = timeout, queue, rule_for
        self.breaker = Breaker(reactor.seconds, breaker_seconds)
        self.fetcher = Fetcher(reactor, connect_timeout=timeout, idle_timeout=max(timeout, 30.0))
        self.pool = ThreadPool(1, THREADS, "cachegate-s3")
        self.client = None
        self.queue: deque[tuple[Meta, str]] = deque()
        self.queued: set[str] = set()
        self.uploading = 0
        self.counts = {"uploaded": 0, "present": 0, "dropped": 0, "upload_errors": 0,
                       "hits": 0, "misses": 0, "errors": 0, "requests": 0, "corrupt": 0}
        # The store, as parents and children name it to each other.
        named = f"{endpoint}\n{bucket}\n{prefix}".encode()
        self.identity = hashlib.sha256(named).hexdigest()[:16]
        # The store a tier (a parent's URL) said it writes behind to; "" when none.
        self.writes_to: Callable[[str | None], str] = lambda source: ""

    # -- life ------------------------------------------------------------------------

    def start(self) -> defer.Deferred:
        self.pool.start()
        self.reactor.addSystemEventTrigger("during", "shutdown", self._stop_pool)
        d = self.in_thread(make_client, self.endpoint, self.region, self.credentials_file,
                           self.timeout)

        def made(client) -> None:  # type: ignore[no-untyped-def]
            self.client = client
        d.addCallbacks(made, lambda f: log.error("S3 client not created: {error}",
                                                 error=f.getErrorMessage()))
        return d

    def stop(self) -> defer.Deferred:
        self._stop_pool()
        return self.fetcher.close()

    def _stop_pool(self) -> None:
        """Once (the service's stop and the reactor's shutdown both ask)."""
        if self.pool.started and not self.pool.joined:
            self.pool.stop()

    def in_thread(self, call: Callable, *args: Any, **kwargs: Any) -> defer.Deferred:
        return threads.deferToThreadPool(self.reactor, self.pool, call, *args, **kwargs)

    def presign(self, method: str, key: str) -> str:
        """The URL of one request to the store (counted: a store may bill each)."""
        assert self.client is not None
        self.counts["requests"] += 1
        return self.client.generate_presigned_url(
            method, Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=PRESIGN_SECONDS)

    def usable(self) -> bool:
        return self.client is not None and self.breaker.allow()

    def _failed(self, why: str) -> None:
        self.counts["errors"] += 1
        self.breaker.failed()
        log.error("S3 tier failed ({why}): skipped for {seconds:.0f} s", why=why,
                  seconds=self.breaker.back_off)

    # -- read-through ----------------------------------------------------------------

    def lookup(self, target, headers: dict[str, str]) -> defer.Deferred:  # type: ignore[no-untyped-def]
        """The stored object for ``target`` as a response, or None (not there, not an
        immutable object, or the tier is down: then the upstream serves)."""
        if target.rule.policy is not Policy.IMMUTABLE or "if-none-match" in headers or \
                "if-modified-since" in headers or "range" in headers or not self.usable():
            return defer.succeed(None)
        d = self._get_pointer(target.key)
        d.addCallback(self._get_body, target.key)
        d.addErrback(self._read_failed)
        return d

    @defer.inlineCallbacks
    def _get_pointer(self, cache_key: str):  # type: ignore[no-untyped-def]
        response = yield self.fetcher.request("GET", self.presign(
            "get_object", pointer_key(self.prefix, cache_key)), {})
        body = yield readBody(response)
        if response.code == 404:
            self.breaker.succeeded()
            self.counts["misses"] += 1
            return None
        if response.code != 200:
            raise S3Error(f"pointer: status {response.code}")
        return json.loads(body)

    @defer.inlineCallbacks
    def _get_body(self, document: dict | None, cache_key: str):  # type: ignore[no-untyped-def]
        if document is None:
            return None
        response = yield self.fetcher.request("GET", self.presign(
            "get_object", body_key(self.prefix, document["sha256"])), {})
        if response.code != 200:
            response.deliverBody(_Discard())
            raise S3Error(f"body: status {response.code}")
        self.breaker.succeeded()
        self.counts["hits"] += 1
        return StoredResponse(response, document, self, cache_key)

    def _read_failed(self, failure: Failure) -> None:
        self._failed(failure.getErrorMessage())
        return None

    def corrupt(self, cache_key: str, sha256: str) -> None:
        """A body read here did not hash to its name: the store is failing like any other
        way (the breaker opens), and the pointer and the body are deleted, so the next
        host to fetch the object from the upstream puts it back whole."""
        self.counts["corrupt"] += 1
        self._failed(f"body {sha256} does not hash to its name")
        for key in (pointer_key(self.prefix, cache_key), body_key(self.prefix, sha256)):
            d = self.fetcher.request("DELETE", self.presign("delete_object", key), {})
            d.addCallback(readBody)
            d.addErrback(lambda f, key=key: log.error("cannot delete S3 {key}: {error}",
                                                      key=key, error=f.getErrorMessage()))

    # -- write-behind ----------------------------------------------------------------

    def committed(self, meta: Meta, cache_key: str, source: str | None = None) -> None:
        """Queue a committed object for upload (an immutable 200 with a sha256), unless it
        was read from this store (its body and pointer are there already) or came from a
        parent that writes behind to this store itself."""
        rule = self.rule_for(meta.url)
        if rule is None or rule.policy is not Policy.IMMUTABLE or meta.status != 200 or \
                not meta.sha256 or cache_key in self.queued or source == SOURCE or \
                self.writes_to(source) == self.identity:
            return
        if len(self.queue) + self.uploading >= self.limit:
            self.counts["dropped"] += 1
            return
        self.queue.append((meta, cache_key))
        self.queued.add(cache_key)
        self._pump()

    def _pump(self) -> None:
        while self.queue and self.uploading < UPLOADERS and self.usable():
            meta, cache_key = self.queue.popleft()
            self.uploading += 1
            d = self._upload(meta, cache_key)
            d.addErrback(lambda f: self._upload_failed(f))
            d.addBoth(self._uploaded, cache_key)

    def _uploaded(self, _: object, cache_key: str) -> None:
        self.uploading -= 1
        self.queued.discard(cache_key)
        self.reactor.callLater(0, self._pump)

    def _upload_failed(self, failure: Failure) -> None:
        self.counts["upload_errors"] += 1
        self._failed(f"upload: {failure.getErrorMessage()}")

    @defer.inlineCallbacks
    def _upload(self, meta: Meta, cache_key: str):  # type: ignore[no-untyped-def]
        """The body, unless its bytes are there already, then the pointer: one HEAD when
        the pointer is there (every child of a parent that wrote the object behind)."""
        entry = self.store.get(cache_key)
        if entry is None or entry.meta.sha256 != meta.sha256:  # evicted or replaced
            return
        if (yield self._exists(pointer_key(self.prefix, cache_key))):
            self.breaker.succeeded()
            self.counts["present"] += 1
            return
        try:
            body = open(entry.path, "rb")
        except FileNotFoundError:
            return
        try:
            there = yield self._exists(body_key(self.prefix, meta.sha256))
            if not there:  # (another host put the same bytes under another key)
                yield self._put(body_key(self.prefix, meta.sha256), FileBodyProducer(body))
        finally:
            body.close()
        status = yield self._put(pointer_key(self.prefix, cache_key),
                                 FileBodyProducer(BytesIO(pointer_document(entry.meta))))
        self.breaker.succeeded()
        self.counts["uploaded" if status == 200 else "present"] += 1

    @defer.inlineCallbacks
    def _exists(self, key: str):  # type: ignore[no-untyped-def]
        response = yield self.fetcher.request("HEAD", self.presign("head_object", key), {})
        yield readBody(response)
        if response.code not in (200, 404):
            raise S3Error(f"HEAD {key}: status {response.code}")
        return response.code == 200

    @defer.inlineCallbacks
    def _put(self, key: str, producer: FileBodyProducer):  # type: ignore[no-untyped-def]
        headers = Headers({b"if-none-match": [b"*"]})
        response = yield self.fetcher.agent.request(b"PUT", self.presign("put_object", key)
                                                    .encode(), headers, producer)
        yield readBody(response)
        if response.code not in (200, 412):  # 412: another host's copy was first
            raise S3Error(f"PUT {key}: status {response.code}")
        return response.code

    # -- the operator's side ---------------------------------------------------------

    def check(self) -> defer.Deferred:
        """The doctor's check: the bucket answers and takes a test write (then deleted)."""
        def probe() -> str:
            client = self.client or make_client(self.endpoint, self.region,
                                                self.credentials_file, self.timeout)
            client.head_bucket(Bucket=self.bucket)
            key = f"{self.prefix}doctor/{os.getpid()}"
            client.put_object(Bucket=self.bucket, Key=key, Body=b"cachegate doctor\n")
            client.delete_object(Bucket=self.bucket, Key=key)
            return "bucket reachable, test write ok"
        return self.in_thread(probe)

    def describe(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "bucket": self.bucket,
                "client": self.client is not None, **self.breaker.describe(),
                "queued": len(self.queue), "uploading": self.uploading,
                "queue_limit": self.limit, **self.counts}
