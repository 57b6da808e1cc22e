#!/usr/bin/env python3
"""TLS handshake cost of cachegate's SNI front, side by side with nginx serving a static cert.

    .venv/bin/python scripts/bench/tls_bench.py [--names 200] [--resumed 2000]

The server runs in a subprocess (``--serve``: the real ``tls.context.SNIContexts`` on a
Twisted reactor, leaves minted on first use); this process is the client, Python ``ssl``
trusting only the benchmark's CA, one connection at a time.  Three figures per server:

- first: the first handshake for each of N distinct names (``bN.archive.ubuntu.com``);
  for cachegate this includes minting and signing that name's leaf;
- full: a second full (not resumed) handshake for the same names, leaf already cached;
- resumed/s: handshakes per second resuming one TLS session (tickets).

nginx (Debian package ``nginx`` or ``nginx-light``) gets a wildcard leaf for the same names
from the same kind of CA, one worker process, session cache and tickets on.  It is skipped
with a note if not installed.  Both sides pay the same client overhead (Python ``ssl``,
TCP connect, certificate verification), so the ratio is the comparable figure.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives import serialization  # noqa: E402

from gateway.cache.rules import find_upstream  # noqa: E402
from gateway.ecosystems.catalogue import BUILTIN
from tls.ca import create_ca, permitted_domains  # noqa: E402
from tls.leaf import issue_leaf, new_leaf_key  # noqa: E402

LOCAL_NAMES = ("cachegate.internal",)


# -- the cachegate server (subprocess) ---------------------------------------------------

def serve(workdir: Path, key_type: str) -> None:
    """Write ca.crt to ``workdir``, listen on a free loopback port, print it, run."""
    from twisted.internet import reactor
    from twisted.web import resource, server

    from tls.context import SNIContexts
    from tls.leaf import LeafCache

    ca = create_ca(permitted_domains(BUILTIN, LOCAL_NAMES), key_type, True, reactor.seconds())
    (workdir / "ca.crt").write_bytes(ca.cert_pem())
    contexts = SNIContexts(LeafCache(ca, reactor, key_type),
                           lambda n: find_upstream(BUILTIN, n) is not None)
    ok = resource.Resource()
    ok.isLeaf = True  # type: ignore[attr-defined]
    ok.render_GET = lambda request: b"ok"  # type: ignore[attr-defined]
    site = server.Site(ok)
    site.noisy = False
    port = reactor.listenSSL(0, site, contexts.options, interface="127.0.0.1")
    print(port.getHost().port, flush=True)
    reactor.run()


def start_cachegate(workdir: Path, key_type: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(workdir),
                             "--key-type", key_type], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.strip().isdigit():
        proc.kill()
        sys.exit("error: the cachegate server did not start")
    return proc, int(line)


# -- the nginx peer ----------------------------------------------------------------------

NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    ssl_session_tickets on;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name _;
        ssl_certificate {dir}/chain.pem;
        ssl_certificate_key {dir}/leaf.key;
        location / {{ return 200 "ok"; }}
    }}
}}
"""


def start_nginx(workdir: Path, key_type: str) -> tuple[subprocess.Popen, int] | None:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists()
                                      else None)
    if nginx is None:
        print("nginx is not installed (apt-get install nginx): skipping the peer")
        return None
    ca = create_ca(permitted_domains(BUILTIN, LOCAL_NAMES), key_type, True, time.time())
    key = new_leaf_key(key_type)
    leaf = issue_leaf(ca, "*.archive.ubuntu.com", key, time.time())
    (workdir / "ca.crt").write_bytes(ca.cert_pem())
    (workdir / "chain.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM)
                                        + ca.cert_pem())
    (workdir / "leaf.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=workdir, port=port))
    proc = subprocess.Popen([nginx, "-p", str(workdir), "-e", str(workdir / "error.log"),
                             "-c", str(conf)])
    wait_listening(port, proc)
    return proc, port


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen) -> None:
    for _ in range(100):
        if proc.poll() is not None:
            sys.exit("error: nginx exited at start")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit("error: nginx did not start listening")


# -- the client --------------------------------------------------------------------------

def client_context(cafile: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def handshake(ctx: ssl.SSLContext, port: int, name: str,
              session: ssl.SSLSession | None = None) -> tuple[float, bool]:
    """Seconds from connect() to a verified handshake, and whether it resumed."""
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with ctx.wrap_socket(raw, server_hostname=name, session=session) as tls:
            return time.perf_counter() - start, tls.session_reused


def session_for(ctx: ssl.SSLContext, port: int, name: str) -> ssl.SSLSession:
    """A resumable session: read a response first, so TLS 1.3 tickets have arrived."""
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with ctx.wrap_socket(raw, server_hostname=name) as tls:
            tls.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
            while tls.recv(65536):
                pass
            assert tls.session is not None
            return tls.session


def measure(cafile: Path, port: int, names: int, resumed: int) -> dict[str, float]:
    ctx = client_context(cafile)
    hosts = [f"b{i}.archive.ubuntu.com" for i in range(names)]
    first = [handshake(ctx, port, h)[0] for h in hosts]
    full = [handshake(ctx, port, h)[0] for h in hosts]
    session = session_for(ctx, port, hosts[0])
    start = time.perf_counter()
    for _ in range(resumed):
        _, reused = handshake(ctx, port, hosts[0], session)
        if not reused:
            sys.exit("error: a handshake did not resume")
    elapsed = time.perf_counter() - start
    return {"first_p50": ms(first, 50), "first_p99": ms(first, 99), "full_p50": ms(full, 50),
            "full_p99": ms(full, 99), "resumed_per_s": resumed / elapsed}


def ms(samples: list[float], percentile: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[percentile - 1] * 1000


def run(started: tuple[subprocess.Popen, int] | None, cafile: Path,
        args: argparse.Namespace) -> dict[str, float] | None:
    if started is None:
        return None
    proc, port = started
    try:
        return measure(cafile, port, args.names, args.resumed)
    finally:
        proc.terminate()
        proc.wait(10)


def report(results: dict[str, dict[str, float] | None], args: argparse.Namespace) -> None:
    print(f"\n{args.names} distinct names, {args.resumed} resumed handshakes, "
          f"{args.key_type} keys, Python {sys.version.split()[0]} client, "
          f"{ssl.OPENSSL_VERSION}")
    print(f"{'server':<22}{'first p50':>10}{'first p99':>10}{'full p50':>10}{'full p99':>10}"
          f"{'resumed/s':>11}")
    for label, r in results.items():
        if r is not None:
            print(f"{label:<22}{r['first_p50']:>8.2f}ms{r['first_p99']:>8.2f}ms"
                  f"{r['full_p50']:>8.2f}ms{r['full_p99']:>8.2f}ms{r['resumed_per_s']:>11.0f}")
    ours, peer = results.get("cachegate"), results.get("nginx (static cert)")
    if ours and peer:
        print(f"{'cachegate / nginx':<22}{ours['first_p50'] / peer['first_p50']:>9.2f}x"
              f"{ours['first_p99'] / peer['first_p99']:>9.2f}x"
              f"{ours['full_p50'] / peer['full_p50']:>9.2f}x"
              f"{ours['full_p99'] / peer['full_p99']:>9.2f}x"
              f"{ours['resumed_per_s'] / peer['resumed_per_s']:>10.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--names", type=int, default=200)
    parser.add_argument("--resumed", type=int, default=2000)
    parser.add_argument("--key-type", choices=("ecdsa", "rsa"), default="ecdsa")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve, args.key_type)
    results: dict[str, dict[str, float] | None] = {}
    with tempfile.TemporaryDirectory() as ours, tempfile.TemporaryDirectory() as peer:
        results["cachegate"] = run(start_cachegate(Path(ours), args.key_type),
                                   Path(ours) / "ca.crt", args)
        results["nginx (static cert)"] = run(start_nginx(Path(peer), args.key_type),
                                             Path(peer) / "ca.crt", args)
    report(results, args)


if __name__ == "__main__":
    main()
