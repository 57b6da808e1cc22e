"""The status page: rendered from the stats document (pure), served at the admin API's
``/``, and loaded in headless Chromium (a screenshot that shows something, and the
figures in the DOM it built)."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

import pytest_twisted
from twisted.internet import threads

from gateway.ops.status_page import render_status
from tests.clients import need
from tests.admin_gateways import ALPINE_HOST, PYPI_HOST, WHEEL, admin, serve_two

WINDOW = (1200, 1000)


def stats_doc(**changes) -> dict:  # type: ignore[no-untyped-def]
    tally = {"requests": {"HIT": 3, "MISS": 1}, "hit_ratio": 0.75,
             "bytes_from_cache": 3 * 2**20, "bytes_from_upstream": 2**20}
    doc = {
        "uptime": 3725.0, "addresses": ["172.17.0.1", "127.0.0.1"], "docker_dns": "172.17.0.1",
        "local_names": ["cachegate.internal"],
        "gateway": {"total": tally, "ecosystems": {"npm": tally}, "clients": {}},
        "cache": {"objects": 7, "bytes": 5 * 2**20, "limit": 50 * 2**30,
                  "ecosystems": {"npm": {"objects": 7, "bytes": 5 * 2**20}}},
        "recent": [{"time": 100.0, "client": "172.17.0.5", "method": "GET",
                    "url": "registry.npmjs.org/<script>alert(1)</script>", "status": 200,
                    "label": "HIT", "sent": 2048, "ms": 3, "complete": True}],
    }
    doc.update(changes)
    return doc


def test_page_shows_the_figures_setup_lines_and_escapes_client_input():
    page = render_status(stats_doc(), now=160.0).decode()
    assert '<div class=figure id="hit-ratio">75.0%</div>' in page
    assert '<div class=figure id="bytes-saved">3.0 MiB</div>' in page
    assert '<div class=figure id="cache-size">5.0 MiB</div>' in page
    assert "7 objects stored" in page
    assert re.search(r'<tr data-ecosystem="npm">.*75\.0%.*3\.0 MiB', page)
    assert "1h 2m" in page and "1m ago" in page
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert '/etc/docker/daemon.json: {"dns": ["172.17.0.1"]}' in page
    assert "sudo systemctl restart docker" in page
    assert 'href="/ca.crt"' in page and "http://cachegate.internal/ca.crt" in page


def test_an_idle_gateway_says_so_rather_than_showing_an_empty_table():
    idle = {"requests": {}, "hit_ratio": 0.0, "bytes_from_cache": 0, "bytes_from_upstream": 0}
    page = render_status(stats_doc(
        gateway={"total": idle, "ecosystems": {}, "clients": {}},
        cache={"objects": 0, "bytes": 0, "limit": 2**30, "ecosystems": {}},
        recent=[])).decode()
    assert "nothing served or stored yet" in page and "no requests yet" in page
    assert '<div class=figure id="hit-ratio">0.0%</div>' in page


@pytest_twisted.inlineCallbacks
def test_served_page_has_the_live_figures(bare_origin, admin_gateway):  # noqa: F811
    gw = admin_gateway(bare_origin.url)
    yield serve_two(bare_origin, gw)
    reply = yield admin(gw, "GET", "/")
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/html")
    page = reply.body.decode()
    assert '<div class=figure id="hit-ratio">33.3%</div>' in page  # 1 hit in 3 requests
    assert re.search(r'<tr data-ecosystem="pypi">.*?50\.0%.*?68\.4 KiB', page)  # 70,000 B
    assert PYPI_HOST + WHEEL in page


def png_facts(path: Path) -> tuple[int, int, int]:
    """(width, height, distinct byte values of the image data): a blank page has a
    handful, a page with text and tables hundreds."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, size = 8, b"", (0, 0)
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    return size[0], size[1], len(set(zlib.decompress(idat)))


def chromium(*args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}", *args],
            capture_output=True, text=True, timeout=90)


@pytest_twisted.inlineCallbacks
def test_chromium_renders_the_page_with_the_figures(bare_origin, admin_gateway,  # noqa: F811
                                                    tmp_path):
    need(shutil.which("chromium"), "chromium not installed (Debian package chromium)")
    gw = admin_gateway(bare_origin.url)
    yield serve_two(bare_origin, gw)
    url = f"http://127.0.0.1:{gw.admin_port}/"
    shot = tmp_path / "status.png"
    done = yield threads.deferToThread(chromium, f"--screenshot={shot}",
                                       "--window-size={},{}".format(*WINDOW), url)
    assert shot.exists(), done.stderr[-2000:]
    width, height, distinct = png_facts(shot)
    assert (width, height) == WINDOW
    assert distinct > 32, "the screenshot is (nearly) blank"
    dom = yield threads.deferToThread(chromium, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert '<div class="figure" id="hit-ratio">33.3%</div>' in dom.stdout
    assert re.search(r'<tr data-ecosystem="pypi">.*?50\.0%.*?68\.4 KiB', dom.stdout, re.S)
    assert re.search(r'<tr data-ecosystem="alpine">.*?0\.0%', dom.stdout, re.S)
    assert ALPINE_HOST in dom.stdout and 'id="ca-link"' in dom.stdout
    assert "sudo systemctl restart docker" in dom.stdout
