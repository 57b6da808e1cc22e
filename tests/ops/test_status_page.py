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
from twisted.application.internet import TimerService
from twisted.internet import defer, threads

from gateway.ops.admin import AdminService
from gateway.ops.history import History, reading
from gateway.ops.status_page import render_status
from tests.clients import need
from tests.admin_gateways import ALPINE_HOST, APK, PYPI_HOST, WHEEL, admin, serve_two
from tests.fixtures import counter_bytes, put_object
from tests.http_client import fetch

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


def test_stored_is_the_bodies_on_the_card_and_in_the_table():
    """The store's volume (bodies and index: 325 KiB) is not what the card calls stored."""
    page = render_status(stats_doc(cache={
        "objects": 1, "bytes": 325 * 1024, "limit": 2**30,
        "ecosystems": {"npm": {"objects": 1, "bytes": 293 * 1024}}})).decode()
    assert '<div class=figure id="cache-size">293.0 KiB</div>' in page
    assert re.search(r'<tr data-ecosystem="npm">.*<td class=num>293\.0 KiB</td></tr>', page)
    assert "1 objects stored (their bodies); on disk with the index 325.0 KiB" in page


def test_loopback_only_listening_names_the_bridge_address_never_loopback():
    page = render_status(stats_doc(addresses=["127.0.0.1"], docker_dns="127.0.0.1",
                                   bridge="172.18.0.1")).decode()
    assert '/etc/docker/daemon.json: {"dns": ["172.18.0.1"]}' in page
    assert '"dns": ["127.0.0.1"]' not in page
    assert re.search(r"id=listen-note>cachegate listens on loopback only \(127\.0\.0\.1\)"
                     r".*bridge address 172\.18\.0\.1 to server\.listen", page)
    unseen = render_status(stats_doc(addresses=["127.0.0.1"], docker_dns="127.0.0.1",
                                     bridge=None)).decode()
    assert '{"dns": ["172.17.0.1"]}' in unseen and "Docker&#x27;s default" in unseen
    # Listening on every address (the bridge's too): its address, no note.
    wildcard = render_status(stats_doc(addresses=["0.0.0.0"], docker_dns="127.0.0.1",
                                       bridge="172.18.0.1")).decode()
    assert '{"dns": ["172.18.0.1"]}' in wildcard and "listen-note" not in wildcard
    # Listening on the bridge already: no note.
    assert "listen-note" not in render_status(stats_doc()).decode()
    # Advertising an address it does not listen on: the note says to add it.
    elsewhere = render_status(stats_doc(addresses=["127.0.0.1"])).decode()
    assert "does not listen on 172.17.0.1 yet" in elsewhere


def three_samples(clock: list[float]) -> History:
    """A history of two 10-minute intervals: 1 HIT and 2 MISS in each; an error in the
    second."""
    history = History(lambda: clock[0])
    for t, hits, misses, errors in ((1000.0, 0, 0, 0), (1600.0, 1, 2, 0), (2200.0, 2, 4, 1)):
        clock[0] = t
        history.sample(reading({"HIT": hits, "MISS": misses}, 70_000 * hits, 0, errors))
    return history


def test_the_last_hour_is_drawn_as_svg_with_axes_labelled_from_the_rates():
    page = render_status(stats_doc(), history=three_samples([0.0])).decode()
    requests = re.search(r'<svg id="plot-requests".*?</svg>', page).group(0)
    assert 'data-y-max="0.004"' in requests  # 2 MISS / 600 s = 0.0033/s: axis to 0.004
    assert re.findall(r"data-axis=y[^>]*>([^<]*)<", requests) == ["0", "0.002/s", "0.004/s"]
    assert re.findall(r"data-axis=x[^>]*>([^<]*)<", requests) == [
        "-60 min", "-45 min", "-30 min", "-15 min", "now"]
    assert 'data-series="HIT"' in requests and 'data-series="MISS"' in requests
    ratio = re.search(r'<svg id="plot-hit-ratio".*?</svg>', page).group(0)
    assert re.findall(r"data-axis=y[^>]*>([^<]*)<", ratio) == ["0%", "50%", "100%"]
    errors = re.search(r'<svg id="plot-errors".*?</svg>', page).group(0)
    assert 'data-y-max="0.002"' in errors  # 1 error in 600 s
    assert '<svg id="plot-bytes"' in page and "<script" not in page


def test_without_samples_the_plots_are_empty_but_drawn():
    page = render_status(stats_doc(), history=History(lambda: 5.0)).decode()
    assert page.count("<svg ") == 4 and "<polyline" not in page


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


def png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit non-interlaced PNG (Chromium's)."""
    data = path.read_bytes()
    pos, idat, head = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            head = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, color = struct.unpack(">IIBB", head[:10])
    assert depth == 8 and color in (2, 6), (depth, color)
    bpp = 3 if color == 2 else 4
    raw, stride, rows, previous = zlib.decompress(idat), width * bpp, [], bytes(width * bpp)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = previous[i], previous[i - bpp] if i >= bpp else 0
            line[i] = (line[i] + (0, a, b, (a + b) // 2, _paeth(a, b, c))[kind]) & 0xFF
        rows.append(bytes(line))
        previous = rows[-1]
    return width, bpp, rows


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


def count_color(rows: list[bytes], bpp: int, rgb: str) -> int:
    want = bytes.fromhex(rgb.lstrip("#"))
    return sum(1 for row in rows for i in range(0, len(row), bpp) if row[i:i + 3] == want)


@pytest_twisted.inlineCallbacks
def test_chromium_draws_the_last_hour_from_live_samples(bare_origin, admin_gateway,  # noqa: F811
                                                        tmp_path):
    """Samples taken by the live gateway (its clock replaced: two 10-minute intervals) of
    real requests; Chromium's DOM has the axes' values, its screenshot the lines."""
    need(shutil.which("chromium"), "chromium not installed (Debian package chromium)")
    gw = admin_gateway(bare_origin.url)
    admin_service = next(c for c in gw.service if isinstance(c, AdminService))
    for child in list(admin_service):
        if isinstance(child, TimerService):
            yield defer.maybeDeferred(child.stopService)  # the test takes the samples
    api, clock = admin_service.api, [1000.0]
    api.history.clock = lambda: clock[0]
    api.history._last = None
    api.sample_history()
    yield serve_two(bare_origin, gw)  # MISS, HIT, MISS
    clock[0] = 1600.0
    api.sample_history()
    for name in ("b", "c"):
        path = APK.replace("/a-1.0", f"/{name}-1.0")
        put_object(bare_origin.root, "alpine", path, counter_bytes(2500, name.encode()))
        reply = yield fetch(gw.port, ALPINE_HOST, path)
        assert reply.headers["x-cache"] == "MISS"
    reply = yield fetch(gw.port, PYPI_HOST, WHEEL)
    assert reply.headers["x-cache"] == "HIT"
    clock[0] = 2200.0
    api.sample_history()
    url = f"http://127.0.0.1:{gw.admin_port}/"
    dom = yield threads.deferToThread(chromium, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    requests = re.search(r'<svg id="plot-requests".*?</svg>', dom.stdout, re.S).group(0)
    assert 'data-y-max="0.004"' in requests  # 2 MISS per 600 s in each interval
    ticks = re.findall(r'data-axis="y"[^>]*>([^<]*)<', requests)
    assert ticks == ["0", "0.002/s", "0.004/s"], ticks
    assert "-60 min" in requests and ">now<" in requests
    ratio = re.search(r'<svg id="plot-hit-ratio".*?</svg>', dom.stdout, re.S).group(0)
    assert re.findall(r'data-axis="y"[^>]*>([^<]*)<', ratio) == ["0%", "50%", "100%"]
    shot = tmp_path / "plots.png"
    done = yield threads.deferToThread(chromium, f"--screenshot={shot}",
                                       "--window-size={},{}".format(*WINDOW), url)
    assert shot.exists(), done.stderr[-2000:]
    _, bpp, rows = png_pixels(shot)
    # The lines are drawn in their colours (legend swatches are faded, so exact pixels
    # of these colours are the lines'): MISS and HIT at steady rates, the hit ratio.
    assert count_color(rows, bpp, "#d4860b") > 40, "no MISS line in the screenshot"
    assert count_color(rows, bpp, "#1a7f37") > 40, "no HIT line in the screenshot"
