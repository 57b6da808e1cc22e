"""scripts/start.sh's readiness probe (``python -m gateway.ops.hostsetup wait``) against a
DNS server that answers REFUSED (an older cachegate, or another server on the port; the
current cachegate answers this host's own addresses whatever ``dns.allow`` says): the
probe is sent from the address it asks, as ``dig -b`` does, and a REFUSED answer is
reported at once, as refused and with the fix, never as a timeout (issue 13)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from dnslib import RCODE, DNSRecord

REPO = Path(__file__).resolve().parents[2]
ASKED = "127.0.0.2"  # on lo, so the kernel's own choice of source would be 127.0.0.1


class Refuser:
    """UDP on ``ASKED``: REFUSED to every query, recording each sender's address."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((ASKED, 0))
        self.port = self.sock.getsockname()[1]
        self.sources: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                data, sender = self.sock.recvfrom(4096)
            except OSError:  # closed
                return
            self.sources.append(sender[0])
            reply = DNSRecord.parse(data).reply()
            reply.header.rcode = RCODE.REFUSED
            self.sock.sendto(reply.pack(), sender)


class Health(BaseHTTPRequestHandler):
    """The admin API's /healthz, as a running gateway answers it."""

    def do_GET(self) -> None:  # noqa: N802
        body = json.dumps({"status": "ok", "docker_dns": ASKED}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
        pass


@pytest.fixture
def refusing_gateway(tmp_path):  # type: ignore[no-untyped-def]
    refuser = Refuser()
    admin = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=admin.serve_forever, daemon=True).start()
    config = tmp_path / "cachegate.toml"
    config.write_text("\n".join([
        "[server]", f'state_dir = "{tmp_path / "state"}"', f'listen = ["{ASKED}"]',
        f'admin = "127.0.0.1:{admin.server_address[1]}"',
        "[dns]", f"port = {refuser.port}", ""]))
    yield config, refuser
    admin.shutdown()
    refuser.sock.close()


def test_a_refused_probe_is_reported_as_refused_with_the_fix(refusing_gateway):
    config, refuser = refusing_gateway
    done = subprocess.run([sys.executable, "-m", "gateway.ops.hostsetup", "--config",
                           str(config), "wait", "--timeout", "20"],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 3, done.stderr
    assert f"at {ASKED} port {refuser.port} REFUSED a query from {ASKED}" in done.stderr
    assert f'add "{ASKED}/32" to dns.allow in {config}' in done.stderr
    assert "did not answer" not in done.stderr
    assert refuser.sources == [ASKED]  # one probe, from the address it asked
