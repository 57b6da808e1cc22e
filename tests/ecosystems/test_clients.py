"""Real package clients through the gateway's HTTP port as their ``http_proxy``: the first
run fills the cache from the fixture origin, the second is served wholly from it."""

from __future__ import annotations

import hashlib
import shutil

import pytest
import pytest_twisted

from tests.clients import PROXIED_FETCHES, need, ok, run, through_proxy
from tests.http_client import fetch


@pytest.mark.parametrize("client", sorted(PROXIED_FETCHES))
@pytest_twisted.inlineCallbacks
def test_second_run_is_served_wholly_from_the_cache(client, origin, fixtures, start_gateway,
                                                     tmp_path):
    gw = start_gateway(origin.url)
    proxy = f"http://127.0.0.1:{gw.port}"
    for attempt in ("cold", "warm"):
        before = len(origin.requests)
        for argv, kwargs in through_proxy(client, fixtures, proxy, gw.port, tmp_path / attempt):
            ok((yield run(argv, **kwargs)))
        fetched = origin.requests[before:]
        if attempt == "cold":
            host, prefix = PROXIED_FETCHES[client]
            assert any(r.path.startswith(prefix) for r in fetched), \
                f"{client} did not fetch {prefix} through the gateway"
        else:
            assert fetched == [], f"{client}'s second run reached the origin: {fetched}"
    assert gw.service.stats.total.requests["HIT"] > 0


@pytest_twisted.inlineCallbacks
def test_curl_fetches_alpine_paths_as_apk_does(origin, fixtures, start_gateway, tmp_path):
    need(shutil.which("curl"), "curl not installed")
    gw = start_gateway(origin.url)
    for attempt in ("cold", "warm"):
        before = len(origin.requests)
        for obj in fixtures.of("alpine"):
            out = tmp_path / f"{attempt}-{obj.path.rsplit('/', 1)[1]}"
            ok((yield run(["curl", "-sfS", "--proxy", f"http://127.0.0.1:{gw.port}", "-o",
                           str(out), f"http://{obj.host}{obj.path}"])))
            assert hashlib.sha256(out.read_bytes()).hexdigest() == obj.sha256
        if attempt == "warm":
            assert origin.requests[before:] == []


@pytest_twisted.inlineCallbacks
def test_ca_certificate_is_served_on_the_local_name(origin, start_gateway):
    gw = start_gateway(origin.url)
    reply = yield fetch(gw.port, "cachegate.internal", "/ca.crt")
    assert reply.status == 200 and reply.body == gw.service.ca.cert_pem()
    assert reply.body.startswith(b"-----BEGIN CERTIFICATE-----")
    other = yield fetch(gw.port, "cachegate.internal", "/ca.key")
    assert other.status == 404 and b"BEGIN" not in other.body
    assert origin.requests == []
