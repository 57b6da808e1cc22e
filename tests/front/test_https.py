"""The HTTPS front door of a whole gateway, with real clients trusting only its CA: the
same cache as port 80, certificates per SNI name, Host and SNI must agree (the gateway and
its fixtures: tests/tls_gateways.py)."""

from __future__ import annotations

import os
import socket
import ssl
from pathlib import Path

import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.fixtures import FILES_HOST, PYPI_HOST
from tests.tls_gateways import SIMPLE_A, TlsGateway, curl_head, need_binary, ok, run


def curl_https(gw: TlsGateway, host: str, path: str, *extra: str):  # type: ignore[no-untyped-def]
    """``curl`` to ``https://host:PORT/path`` with ``host`` resolved to the gateway."""
    port = gw.https_port
    return run(["curl", "-sS", "-D", "-", "-o", os.devnull, "--max-time", "20",
                "--cacert", str(gw.cafile), "--resolve", f"{host}:{port}:127.0.0.1",
                *extra, f"https://{host}:{port}{path}"])


def tls_handshake(port: int, cafile: Path, name: str | None) -> str:
    """A Python ``ssl`` handshake trusting only ``cafile``: the certificate's subject
    alternative names, or the SSL error text."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile)
    ctx.check_hostname = name is not None
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname=name) as tls:
                return str(tls.getpeercert()["subjectAltName"])
    except (ssl.SSLError, ConnectionResetError) as e:
        return f"refused: {e}"


# --- the tests ----------------------------------------------------------------------

@pytest_twisted.inlineCallbacks
def test_curl_over_https_second_request_is_a_hit(start_tls_gateway, https_origin):
    need_binary("curl", "curl")
    gw = start_tls_gateway(https_origin.url)
    first = ok((yield curl_https(gw, PYPI_HOST, SIMPLE_A)))
    second = ok((yield curl_https(gw, PYPI_HOST, SIMPLE_A)))
    assert curl_head(first)[0] == 200 and curl_head(first)[1]["x-cache"] == "MISS"
    assert curl_head(second)[0] == 200 and curl_head(second)[1]["x-cache"] == "HIT"
    assert https_origin.count("/pypi" + SIMPLE_A) == 1  # the hit asked nothing


@pytest_twisted.inlineCallbacks
def test_host_that_disagrees_with_sni_is_421(start_tls_gateway, https_origin):
    need_binary("curl", "curl")
    gw = start_tls_gateway(https_origin.url)
    done = ok((yield curl_https(gw, PYPI_HOST, SIMPLE_A, "-H", f"Host: {FILES_HOST}")))
    assert curl_head(done)[0] == 421
    assert https_origin.requests == []


@pytest_twisted.inlineCallbacks
def test_python_ssl_gets_a_leaf_for_a_catalogue_name_only(start_tls_gateway, https_origin):
    gw = start_tls_gateway(https_origin.url)
    good = yield deferToThread(tls_handshake, gw.https_port, gw.cafile, FILES_HOST)
    outside = yield deferToThread(tls_handshake, gw.https_port, gw.cafile, "example.com")
    no_sni = yield deferToThread(tls_handshake, gw.https_port, gw.cafile, None)
    assert good == f"(('DNS', '{FILES_HOST}'),)"
    assert outside.startswith("refused") and no_sni.startswith("refused")
    assert gw.service.tls.refused == 2


@pytest_twisted.inlineCallbacks
def test_ca_certificate_on_the_local_name(start_tls_gateway, https_origin, tmp_path):
    need_binary("curl", "curl")
    gw = start_tls_gateway(https_origin.url)
    body = tmp_path / "ca.crt"
    port = gw.https_port
    done = ok((yield run(["curl", "-sS", "--fail", "--max-time", "20", "--cacert",
                         str(gw.cafile), "--resolve", f"cachegate.internal:{port}:127.0.0.1",
                         "-o", str(body), f"https://cachegate.internal:{port}/ca.crt"])))
    assert body.read_bytes() == gw.cafile.read_bytes(), done.stderr
