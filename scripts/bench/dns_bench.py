#!/usr/bin/env python3
"""cachegate's DNS server vs dnsmasq, same run, loopback, each pinned to the same one core.

    .venv/bin/python scripts/bench/dns_bench.py [--seconds 5] [--inflight 32]

cachegate is the real process (``python -m gateway.ops.cli serve``, every listener up, DNS on a
free port); dnsmasq runs in the foreground with ``--conf-file=/dev/null``, a 10000-entry
cache and the same answers.  Both forward to one fake upstream resolver (a dnslib thread in
this process, TTL one hour) that counts what it is asked.  Two measures per server:

- redirected: A queries for the catalogue's exact names, answered locally with 127.0.0.1
  (cachegate: its redirect rules; dnsmasq: ``--address=/NAME/127.0.0.1``, ``--local-ttl=30``
  like cachegate's ``dns.ttl``);
- forwarded, cached: A queries for 100 names outside the catalogue after one priming query
  per name, so every measured answer comes from the server's cache (checked: the upstream
  gets no query while measuring).

The load is dnsperf (C) on the other core, ``--inflight`` queries in flight from one UDP
socket, round-robin over the names, ``-v`` so every query's rcode and latency is counted.
A Python client was tried first and rejected: its one core topped out near 78k queries/s
against both servers alike, dnsmasq idle a third of the time.  dnsperf keeps either server
near saturation (about 90 % of its core and more on a quiet machine); the server's CPU use
is reported so a client-bound figure shows, and so is its CPU time per answer, which
hardly depends on who was the limit.  Each measure is ``--seconds`` per server cut into
slices alternating between the servers, after a warm-up, so drift of a shared machine (VM
steal, reported) hits both alike.  Only NOERROR answers count, and while dnsperf runs a
sampler parses one answer every 10 ms and checks its A record (its queries are dnsperf's
byte for byte but for the ID, so they take the same path through each server).

Run as root: it installs dnsmasq-base and dnsperf (Debian) when missing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dnslib import QTYPE, RCODE, RR, A, DNSError, DNSRecord  # noqa: E402

from gateway.ecosystems.catalogue import BUILTIN  # noqa: E402
from tests.processes import serve, stop_all  # noqa: E402

SERVER_CORE, CLIENT_CORE = "1", "0"
REDIRECTED = {h: "127.0.0.1" for u in BUILTIN for h in u.hosts if not h.startswith("*.")}
FORWARDED = {f"n{i}.bench.test": f"10.77.{i // 256}.{i % 256}" for i in range(100)}
EXPECTED = {**REDIRECTED, **FORWARDED}
SLICES = 5  # per server and measure, alternating with the other server's
WARMUP = 1.0  # seconds of unmeasured load per server before each measure
SAMPLE_PERIOD = 0.01  # seconds between two answers checked in full
STEAL_WARNING = 5.0  # % of CPU time stolen by the hypervisor above which a run is noise


# -- the fake upstream resolver (a thread: it only works while priming) ------------------

class Upstream:
    """FORWARDED names on a loopback UDP port, TTL an hour; ``queries`` counts queries."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port, self.queries = self.sock.getsockname()[1], 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            data, addr = self.sock.recvfrom(4096)
            self.queries += 1
            try:
                query = DNSRecord.parse(data)
            except DNSError:
                continue
            reply, name = query.reply(), str(query.q.qname).rstrip(".").lower()
            if name in FORWARDED and query.q.qtype == QTYPE.A:
                reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A(FORWARDED[name]), ttl=3600))
            else:
                reply.header.rcode = RCODE.NXDOMAIN
            self.sock.sendto(reply.pack(), addr)


# -- the two servers --------------------------------------------------------------------

def free_port() -> int:
    """A loopback port number free for both UDP and TCP (DNS servers bind both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, socket.socket() as tcp:
            udp.bind(("127.0.0.1", 0))
            try:
                tcp.bind(("127.0.0.1", udp.getsockname()[1]))
            except OSError:
                continue
            return udp.getsockname()[1]


def start_cachegate(work: Path, upstream: int, procs: list) -> tuple[subprocess.Popen, int]:
    port = free_port()
    config = work / "cachegate.toml"
    config.write_text(f'[server]\nstate_dir = "{work}/state"\nlisten = ["127.0.0.1"]\n'
                      f"http_port = {free_port()}\nhttps_port = {free_port()}\n"
                      f'admin = "127.0.0.1:{free_port()}"\n'
                      f'[dns]\nport = {port}\nforwarders = ["127.0.0.1:{upstream}"]\n'
                      'advertise_ipv4 = "127.0.0.1"\nallow = ["127.0.0.0/8"]\n')
    procs.append(serve(config, work / "cachegate.log", SERVER_CORE))
    return procs[-1], port


def start_dnsmasq(work: Path, upstream: int, procs: list) -> tuple[subprocess.Popen, int]:
    port = free_port()
    procs.append(subprocess.Popen(
        ["taskset", "-c", SERVER_CORE, "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
         "--no-resolv", "--no-hosts", "--bind-interfaces", "--listen-address=127.0.0.1",
         f"--port={port}", f"--server=127.0.0.1#{upstream}", "--cache-size=10000",
         "--local-ttl=30", f"--pid-file={work}/dnsmasq.pid", "--log-facility=-",
         *(f"--address=/{name}/{ip}" for name, ip in REDIRECTED.items())],
        stdout=open(work / "dnsmasq.log", "wb"), stderr=subprocess.STDOUT))
    return procs[-1], port


def wait_ready(server: str, proc: subprocess.Popen, port: int, timeout: float = 30) -> None:
    """Until it answers, then until its start-up work is done (under 2 % CPU for 0.5 s)."""
    deadline = time.monotonic() + timeout
    while not ask(port, next(iter(REDIRECTED)), 0.2):
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"error: {server} does not answer on port {port} (exit status "
                     f"{proc.returncode})")
    while time.monotonic() < deadline:
        before = cpu_seconds(proc.pid)
        time.sleep(0.5)
        if cpu_seconds(proc.pid) - before < 0.01:
            return


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_ticks() -> tuple[int, int]:
    """(steal, total) ticks of the whole machine so far."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[7], sum(fields[:8])


# -- the clients ------------------------------------------------------------------------

def ask(port: int, name: str, timeout: float = 2.0) -> bool:
    """One query, waited for; whether it got exactly the right A record."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        query = DNSRecord.question(name)
        try:
            sock.sendto(query.pack(), ("127.0.0.1", port))
            reply = DNSRecord.parse(sock.recv(4096))
        except (OSError, DNSError):  # a timeout, refused (nothing listens yet), garbage
            return False
    return (reply.header.id == query.header.id and reply.header.rcode == RCODE.NOERROR
            and reply.q == query.q
            and [(rr.rtype, str(rr.rdata)) for rr in reply.rr]
            == [(QTYPE.A, EXPECTED[name])])


class Sampler:
    """While dnsperf runs: one query every SAMPLE_PERIOD, its answer checked in full."""

    def __init__(self, port: int, names: list[str]) -> None:
        self.port, self.names, self.checked, self.wrong = port, names, 0, 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.wait(SAMPLE_PERIOD):
            self.wrong += not ask(self.port, self.names[self.checked % len(self.names)])
            self.checked += 1

    def stop(self) -> None:
        self.done.set()
        self.thread.join()


def dnsperf(port: int, datafile: Path, seconds: float, inflight: int) -> str:
    """One dnsperf run's output; ``-v`` logs each query (rcode, latency)."""
    with os.fdopen(os.memfd_create("dnsperf.log"), "w+") as log:  # no disk writes meanwhile
        subprocess.run(["taskset", "-c", CLIENT_CORE, "dnsperf", "-v", "-s", "127.0.0.1",
                        "-p", str(port), "-d", str(datafile), "-q", str(inflight),
                        "-l", f"{seconds:g}", "-t", "1"],
                       stdout=log, check=True, timeout=seconds + 30)
        log.seek(0)
        return log.read()


def parse_dnsperf(output: str, latencies: list[float]) -> tuple[int, float]:
    """Appends each NOERROR answer's latency to ``latencies``; (queries sent, run time)."""
    sent, run_time = 0, 0.0
    for line in output.splitlines():
        if line.startswith("> NOERROR "):
            latencies.append(float(line.rsplit(None, 1)[1]))
        elif line.startswith("  Queries sent:"):
            sent = int(line.split()[2])
        elif line.startswith("  Run time (s):"):
            run_time = float(line.split()[3])
    return sent, run_time


# -- the measure ------------------------------------------------------------------------

def measure(servers: dict, names: dict[str, str], upstream: Upstream, work: Path,
            args: argparse.Namespace) -> dict[str, dict]:
    """Both servers on ``names``, in alternating slices; a summary per server."""
    datafile = work / "queries.txt"
    datafile.write_text("".join(f"{name} A\n" for name in names))
    for server, (proc, port) in servers.items():
        if not all(ask(port, name) for name in names):  # also primes the caches
            sys.exit(f"error: {server} gave a wrong answer")
        dnsperf(port, datafile, WARMUP, args.inflight)
    totals = {server: Counter() for server in servers}
    latencies: dict[str, list[float]] = {server: [] for server in servers}
    for _ in range(SLICES):
        for server, (proc, port) in servers.items():
            sampler = Sampler(port, list(names))
            before = counters(proc, upstream)
            output = dnsperf(port, datafile, args.seconds / SLICES, args.inflight)
            after = counters(proc, upstream)  # before parsing: the server is idle now
            sampler.stop()
            sent, run_time = parse_dnsperf(output, latencies[server])
            totals[server].update({key: after[key] - before[key] for key in before},
                                  sent=sent, run_time=run_time, checked=sampler.checked,
                                  wrong=sampler.wrong)
    return {server: summary(totals[server], sorted(latencies[server])) for server in servers}


def counters(proc: subprocess.Popen, upstream: Upstream) -> dict[str, float]:
    steal, ticks = cpu_ticks()
    return {"cpu": cpu_seconds(proc.pid), "upstream": upstream.queries, "steal": steal,
            "ticks": ticks}


def summary(total: Counter, latencies: list[float]) -> dict:
    answered = len(latencies)
    if not answered:
        sys.exit("error: no NOERROR answer at all")
    return {"qps": answered / total["run_time"], "p50": latencies[answered // 2] * 1000,
            "p99": latencies[int(answered * 0.99)] * 1000,
            "cpu": total["cpu"] / total["run_time"] * 100, "us": total["cpu"] / answered * 1e6,
            "failed": total["sent"] - answered, "upstream": total["upstream"],
            "sampled": f"{total['wrong']} of {total['checked']}",
            "steal": total["steal"] / total["ticks"] * 100}


# -- the run ----------------------------------------------------------------------------

def need_debs(packages: dict[str, str]) -> None:
    """``packages``: command → Debian package, installed when the command is missing."""
    os.environ["PATH"] += ":/usr/sbin"
    missing = [deb for command, deb in packages.items() if shutil.which(command) is None]
    if missing:
        if os.geteuid() != 0:
            sys.exit(f"error: install {' '.join(missing)} (Debian packages) or run as root")
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True,
                       stdout=subprocess.DEVNULL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per server and measure")
    parser.add_argument("--inflight", type=int, default=32)
    args = parser.parse_args()
    # dnsmasq-base: the binary alone, no service that could start and take port 53.
    need_debs({"dnsmasq": "dnsmasq-base", "dnsperf": "dnsperf"})
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so `finally` runs on a kill
    work = Path(tempfile.mkdtemp(prefix="cachegate-dnsbench-"))
    procs: list[subprocess.Popen] = []
    try:
        return run(work, procs, args)
    finally:
        stop_all(procs)
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, procs: list, args: argparse.Namespace) -> int:
    os.sched_setaffinity(0, {int(CLIENT_CORE)})  # this process: the sampler, the upstream
    upstream = Upstream()
    servers = {"cachegate": start_cachegate(work, upstream.port, procs),
               "dnsmasq": start_dnsmasq(work, upstream.port, procs)}
    for server, (proc, port) in servers.items():
        wait_ready(server, proc, port)
    results = {kind: measure(servers, names, upstream, work, args)
               for kind, names in (("redirected", REDIRECTED), ("forwarded, cached", FORWARDED))}
    report(results, args)
    return 0


ROWS = (("queries/s", "qps", "{:.0f}"), ("p50 latency (ms)", "p50", "{:.3f}"),
        ("p99 latency (ms)", "p99", "{:.3f}"), ("server CPU (% of its core)", "cpu", "{:.0f}"),
        ("server CPU per answer (µs)", "us", "{:.1f}"), ("not NOERROR or lost", "failed", "{}"),
        ("sampled answers wrong", "sampled", "{}"),
        ("upstream queries while measured", "upstream", "{}"),
        ("VM steal, both cores (%)", "steal", "{:.1f}"))


def report(results: dict[str, dict[str, dict]], args: argparse.Namespace) -> None:
    versions = [subprocess.run([c, "--version" if c == "dnsmasq" else "-h"], text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT).stdout.split()
                for c in ("dnsmasq", "dnsperf")]
    print(f"\n{args.inflight} queries in flight, {args.seconds:g} s per server and measure "
          f"({SLICES} alternating slices), {len(REDIRECTED)} redirected and {len(FORWARDED)} "
          f"forwarded names; servers on core {SERVER_CORE}, dnsperf on core {CLIENT_CORE}; "
          f"dnsmasq {versions[0][2]}, dnsperf {versions[1][versions[1].index('Version') + 1]}, "
          f"Python {sys.version.split()[0]}\n")
    print("| measure | cachegate | dnsmasq | cachegate / dnsmasq |\n|---|---|---|---|")
    for kind, by_server in results.items():
        g, d = by_server["cachegate"], by_server["dnsmasq"]
        for label, key, fmt in ROWS:
            ratio = f"{g[key] / d[key]:.2f}" if key in ("qps", "p50", "p99", "us") else ""
            print(f"| {kind}: {label} | {fmt.format(g[key])} | {fmt.format(d[key])} | {ratio} |")
    steal = max(r["steal"] for by_server in results.values() for r in by_server.values())
    if steal > STEAL_WARNING:
        print(f"\nwarning: the hypervisor took up to {steal:.0f} % of the CPU time while "
              "measuring: queries/s and latencies are unreliable (CPU per answer less so)")


if __name__ == "__main__":
    sys.exit(main())
