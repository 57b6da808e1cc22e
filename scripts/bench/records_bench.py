#!/usr/bin/env python3
"""Build records: what recording costs per request, and bundle export/import speed.

- Recording: 16 KiB warm hits (wrk, 64 connections, the gateway pinned to one core as in
  http_bench.py), with no session open and with a session open on 127.0.0.0/8 (every
  response recorded), alternated ``--rounds`` times: requests/s and p99 of each.
- Bundles: ``--bundle-mib`` of objects (``--objects`` of them) fetched through the
  gateway in a session; ``cachegate export --session`` against the running gateway,
  ``cachegate import`` into an empty, stopped state directory (every body re-hashed), next
  to ``tar cf`` of the same stored bodies and ``tar xf`` of that tar: MB/s of each.

    .venv/bin/python scripts/bench/records_bench.py [--seconds 10] [--bundle-mib 2048]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT), str(HERE)]

import http_bench as hb  # noqa: E402

from tests.fixtures import make_blob  # noqa: E402
from tests.processes import serve, stop_all  # noqa: E402


def cli(config: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.ops.cli", "--config", str(config),
                           *argv], cwd=ROOT, capture_output=True, text=True, check=True)


def timed(argv: list[str], **kw) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    subprocess.run(argv, check=True, capture_output=True, **kw)
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--bundle-mib", type=int, default=2048)
    parser.add_argument("--objects", type=int, default=16)
    args = parser.parse_args()
    hb.need_debs("wrk", "curl")
    work = Path(tempfile.mkdtemp(prefix="cachegate-records-bench-"))
    procs: list[subprocess.Popen] = []
    try:
        return run(work, procs, args)
    finally:
        stop_all(procs)
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, procs: list, args) -> int:  # type: ignore[no-untyped-def]
    objects = work / "origin" / "maven" / "bench"
    make_blob(objects / "small.bin", 16 * 1024)
    size = args.bundle_mib * 2**20 // args.objects
    print(f"writing {args.objects} x {size >> 20} MiB…", file=sys.stderr)
    for i in range(args.objects):
        make_blob(objects / f"part-{i}.bin", size)
    origin_port = hb.free_port()
    procs.append(subprocess.Popen([sys.executable, "-m", "tests.origin", "--root",
                                   str(work / "origin"), "--port", str(origin_port)],
                                  cwd=ROOT, stdout=subprocess.DEVNULL))
    hb.wait_port(origin_port, procs[-1])
    gw_port, admin_port = hb.free_port(), hb.free_port()
    config = work / "cachegate.toml"
    config.write_text(f'[server]\nstate_dir = "{work}/state"\nlisten = ["127.0.0.1"]\n'
                      f'http_port = {gw_port}\nhttps_port = 0\nadmin = "127.0.0.1:{admin_port}"\n'
                      '[dns]\nport = 0\nforwarders = ["127.0.0.1:9"]\n[images]\nlisten = ""\n'
                      f'[upstreams.maven]\norigin = "http://127.0.0.1:{origin_port}/maven"\n'
                      '[[upstreams.maven.rules]]\npath = "^/bench/"\npolicy = "immutable"\n'
                      '[cache]\nsize_limit = "20GiB"\n')
    procs.append(serve(config, work / "cachegate.log", hb.PROXY_CORE))
    hb.wait_port(gw_port, procs[-1])
    results = {"recording": recording(config, gw_port, args),
               "bundle": bundle(work, config, gw_port, args)}
    print(json.dumps(results, indent=2))
    return 0


def recording(config: Path, port: int, args) -> dict:  # type: ignore[no-untyped-def]
    hb.curl_speed(port, "/bench/small.bin")  # stored: every later request is a hit
    rounds: dict[str, list] = {"off": [], "on": []}
    for _ in range(args.rounds):
        rounds["off"].append(hb.wrk(port, "/bench/small.bin", args.seconds))
        session = cli(config, "session", "start", "--clients", "127.0.0.0/8").stdout.strip()
        rounds["on"].append(hb.wrk(port, "/bench/small.bin", args.seconds))
        started = time.monotonic()
        stopped = cli(config, "session", "stop", session).stdout.strip()
        rounds.setdefault("stop", []).append((time.monotonic() - started, stopped))
    best = {k: max(v, key=lambda r: r[0]) for k, v in rounds.items() if k != "stop"}
    return {"rounds": rounds, "best_rps_off": best["off"][0], "best_rps_on": best["on"][0],
            "p99_ms_off": best["off"][1], "p99_ms_on": best["on"][1],
            "ratio": best["on"][0] / best["off"][0]}


def bundle(work: Path, config: Path, port: int, args) -> dict:  # type: ignore[no-untyped-def]
    session = cli(config, "session", "start", "--name", "bundle", "--clients",
                  "127.0.0.0/8").stdout.strip()
    for i in range(args.objects):
        hb.curl_speed(port, f"/bench/part-{i}.bin")
    cli(config, "session", "stop", session)
    out = work / "bundle.tar"
    export_s = timed([sys.executable, "-m", "gateway.ops.cli", "--config", str(config),
                      "export", "--session", "bundle", "-o", str(out)], cwd=ROOT)
    size = out.stat().st_size
    state_b = work / "b"
    config_b = work / "b.toml"
    config_b.write_text(f'[server]\nstate_dir = "{state_b}"\n[cache]\nsize_limit = "20GiB"\n')
    import_s = timed([sys.executable, "-m", "gateway.ops.cli", "--config", str(config_b),
                      "import", str(out)], cwd=ROOT)
    bodies = [str(p) for p in (work / "state" / "cache" / "objects").rglob("*.val")]
    listing = work / "bodies.txt"
    listing.write_text("\n".join(bodies) + "\n")
    plain = work / "plain.tar"
    tar_c = timed(["tar", "cf", str(plain), "-P", "-T", str(listing)])
    out.unlink()
    unpack = work / "unpack"
    unpack.mkdir()
    tar_x = timed(["tar", "xf", str(plain), "-C", str(unpack)])
    mb = size / 1e6
    return {"bundle_bytes": size, "export_s": export_s, "import_s": import_s,
            "tar_c_s": tar_c, "tar_x_s": tar_x, "export_mb_s": mb / export_s,
            "import_mb_s": mb / import_s, "tar_c_mb_s": mb / tar_c, "tar_x_mb_s": mb / tar_x}


if __name__ == "__main__":
    sys.exit(main())
