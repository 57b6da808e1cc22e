"""A gateway in this process with its admin API on a free port, a bare recording origin
(no fixture tree to build), admin requests from the reactor, and two objects served
through it.  Shared by the admin, CLI and status-page tests; the fixtures reach them
through ``pytest_plugins`` in conftest.py."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from tests.fixtures import counter_bytes, put_object
from tests.gateways import RunningGateway, Started, gateway_config
from tests.http_client import Reply, fetch
from tests.origin import Origin


@pytest.fixture
def bare_origin(tmp_path):  # type: ignore[no-untyped-def]
    """The recording origin serving an empty tree that tests fill with ``put_object``."""
    root = tmp_path / "origin"
    root.mkdir()
    server = Origin(root, reactor)
    server.listen()
    yield server
    pytest_twisted.blockon(server.stop_serving())


@pytest.fixture
def admin_gateway(tmp_path):  # type: ignore[no-untyped-def]
    """``admin_gateway(origin_url, admin=("127.0.0.1", 0), state_dir=None, **server)``: a
    gateway in this process with its admin API on a free port; stopped after the test."""
    started = Started()

    def start(origin_url: str, admin: tuple[str, int] = ("127.0.0.1", 0),
              state_dir: Path | None = None, **server: Any) -> RunningGateway:
        config = gateway_config(state_dir or tmp_path / "state", origin_url)
        config = replace(config, server=replace(config.server, admin=admin, **server))
        gw = started.add(RunningGateway(config))
        gw.admin_port = gw.service.ports("admin")[0]  # type: ignore[attr-defined]
        return gw

    yield start
    started.stop_all()


@defer.inlineCallbacks
def admin(gw: RunningGateway, method: str, path: str, body: Any = None,
          headers: dict[str, str] | None = None, host: str | None = None):  # type: ignore[no-untyped-def]
    """One request to ``gw``'s admin API; ``body`` (not bytes) is sent as JSON."""
    port = gw.admin_port  # type: ignore[attr-defined]
    raw = Headers({k.encode(): [v.encode()] for k, v in (headers or {}).items()})
    raw.setRawHeaders(b"host", [(host or f"127.0.0.1:{port}").encode()])
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode()
    producer = FileBodyProducer(io.BytesIO(body)) if body is not None else None
    pool = HTTPConnectionPool(reactor, persistent=False)
    response = yield Agent(reactor, pool=pool).request(
        method.encode(), f"http://127.0.0.1:{port}{path}".encode(), raw, producer)
    data = yield readBody(response)
    reply_headers = {k.decode().lower(): ", ".join(x.decode() for x in v)
                     for k, v in response.headers.getAllRawHeaders()}
    return Reply(response.code, reply_headers, data)


@defer.inlineCallbacks
def admin_json(gw: RunningGateway, method: str, path: str, body: Any = None,
               expect: int = 200, **kwargs: Any):  # type: ignore[no-untyped-def]
    reply = yield admin(gw, method, path, body, **kwargs)
    assert reply.status == expect, (method, path, reply.status, reply.body[:500])
    assert reply.headers["content-type"] == "application/json", reply.headers
    return json.loads(reply.body)


WHEEL = "/packages/source/f/fixture/fixture-1.0.tar.gz"
APK = "/alpine/v3.19/main/x86_64/a-1.0-r0.apk"
PYPI_HOST, ALPINE_HOST = "files.pythonhosted.org", "dl-cdn.alpinelinux.org"


@defer.inlineCallbacks
def serve_two(origin: Origin, gw: RunningGateway):  # type: ignore[no-untyped-def]
    """A wheel fetched twice (MISS, HIT) and an apk once (MISS): the bodies."""
    wheel, apk = counter_bytes(70_000, b"wheel"), counter_bytes(5_000, b"apk")
    put_object(origin.root, "pypi", WHEEL, wheel)
    put_object(origin.root, "alpine", APK, apk)
    for host, path, label in ((PYPI_HOST, WHEEL, "MISS"), (PYPI_HOST, WHEEL, "HIT"),
                              (ALPINE_HOST, APK, "MISS")):
        reply = yield fetch(gw.port, host, path)
        assert reply.status == 200 and reply.headers["x-cache"] == label, (path, reply.status)
    return wheel, apk
