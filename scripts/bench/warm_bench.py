#!/usr/bin/env python3
"""``cachegate warm`` of a 500-package ``package-lock.json`` against an origin 50 ms away,
side by side with ``npm ci --prefer-online`` filling its own cache through cachegate from
the same lockfile.

A synthetic npm registry (N packages, one version each, a small tarball and its
packuments with a correct ``dist.integrity``) is served by the test origin
(tests/origin.py) in this process, every answer delayed by ``--delay-ms`` (default 50),
as an upstream across the internet.  ``cachegate serve`` runs as a child process with an
empty state directory per run.  Printed per run: wall time, origin requests, the most
requests the origin saw in flight at once, and for warm the cost per item of parsing the
lockfile and of verifying a tarball (sha512 of its bytes, what the gateway adds to a
fill), measured in this process.

Run from the repository root (no root needed):
    .venv/bin/python scripts/bench/warm_bench.py [--packages 500] [--delay-ms 50] [--jobs 8]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from twisted.internet import defer, task, threads  # noqa: E402

from gateway.ecosystems.lockfiles import parse  # noqa: E402
from tests.fixtures import _gzip, _tar, payload  # noqa: E402
from tests.origin import Origin  # noqa: E402
from tests.processes import free_port, serve, stop_all, toml_config  # noqa: E402

REGISTRY = "http://registry.npmjs.org"


def build_registry(root: Path, count: int) -> tuple[dict, dict, list[bytes]]:
    """The registry tree under ``root/npm``; (package-lock, package.json, tarballs)."""
    packages, deps, tarballs = {}, {}, []
    for i in range(count):
        name, version = f"cg-bench-{i:03d}", "1.0.0"
        manifest = {"name": name, "version": version, "main": "index.js", "license": "MIT"}
        data = _gzip(_tar([("package/package.json", json.dumps(manifest).encode()),
                           ("package/index.js", b"module.exports = 1;\n"),
                           ("package/payload.bin", payload(f"bench/{name}", 8 * 1024 + i * 16))]))
        tarballs.append(data)
        integrity = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
        path = f"/{name}/-/{name}-{version}.tgz"
        (root / "npm" / name / "-").mkdir(parents=True)
        (root / "npm" / path.lstrip("/")).write_bytes(data)
        dist = {"integrity": integrity, "shasum": hashlib.sha1(data).hexdigest(),
                "tarball": REGISTRY + path}
        version_doc = dict(manifest, dist=dist, dependencies={})
        full = {"name": name, "dist-tags": {"latest": version}, "versions": {version: version_doc}}
        (root / "npm" / name / "index.json").write_text(json.dumps(full))
        (root / "npm" / name / "index.corgi.json").write_text(json.dumps(full))
        packages[f"node_modules/{name}"] = {"version": version, "resolved": REGISTRY + path,
                                            "integrity": integrity}
        deps[name] = version
    project = {"name": "bench", "version": "1.0.0", "dependencies": deps}
    lock = {"name": "bench", "version": "1.0.0", "lockfileVersion": 3, "requires": True,
            "packages": {"": project, **packages}}
    return lock, project, tarballs


class Gateway:
    def __init__(self, work: Path, origin_url: str, name: str) -> None:
        self.port = free_port()
        self.state = work / f"state-{name}"
        self.config = work / f"{name}.toml"
        self.config.write_text(toml_config(self.state, self.port, origin_url, ["npm"]))
        self.proc = serve(self.config, work / f"{name}.log")

    def wait(self) -> None:
        import urllib.request
        for _ in range(400):
            try:
                admin = [ln for ln in self.config.read_text().splitlines() if ln.startswith("admin")]
                url = "http://" + admin[0].split('"')[1] + "/healthz"
                urllib.request.urlopen(url, timeout=1).read()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("cachegate did not start")


def timed(argv: list[str], **kwargs) -> tuple[float, subprocess.CompletedProcess]:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    return time.monotonic() - start, done


@defer.inlineCallbacks
def bench(reactor, args):  # type: ignore[no-untyped-def]
    work = Path(tempfile.mkdtemp(prefix="cg-warm-bench-"))
    try:
        lock, project, tarballs = build_registry(work / "origin", args.packages)
        (work / "app").mkdir()
        lock_path = work / "app" / "package-lock.json"
        lock_path.write_text(json.dumps(lock, indent=2))
        (work / "app" / "package.json").write_text(json.dumps(project, indent=2))
        origin = Origin(work / "origin", reactor)
        origin.listen()
        origin.behave("/*", delay_headers=args.delay_ms / 1000)

        # The cost per item of what warm adds: parsing, and verifying a body's sha512.
        text = lock_path.read_text()
        parse(lock_path, text)  # the parsers' modules imported once, not timed
        start = time.perf_counter()
        items = parse(lock_path, text)
        parse_us = (time.perf_counter() - start) / len(items) * 1e6
        start = time.perf_counter()
        for data in tarballs:
            hashlib.sha512(data).hexdigest()
        verify_us = (time.perf_counter() - start) / len(tarballs) * 1e6

        rows = []
        gw = Gateway(work, origin.url, "warm")
        yield threads.deferToThread(gw.wait)
        origin.reset()
        seconds, done = yield threads.deferToThread(
            timed, [sys.executable, "-m", "gateway.ops.cli", "--config", str(gw.config), "warm",
                    "--json", "--jobs", str(args.jobs), str(lock_path)], cwd=ROOT)
        summary = json.loads(done.stdout)["summary"] if done.returncode == 0 else done.stderr
        rows.append(("cachegate warm", seconds, len(origin.requests), origin.max_in_flight,
                     summary["counts"] if isinstance(summary, dict) else summary))
        origin.reset()
        seconds, done = yield threads.deferToThread(
            timed, [sys.executable, "-m", "gateway.ops.cli", "--config", str(gw.config), "warm",
                    "--json", "--jobs", str(args.jobs), str(lock_path)], cwd=ROOT)
        rows.append(("cachegate warm (again)", seconds, len(origin.requests),
                     origin.max_in_flight, json.loads(done.stdout)["summary"]["counts"]))
        stop_all([gw.proc])

        if shutil.which("npm"):
            gw = Gateway(work, origin.url, "npm")
            yield threads.deferToThread(gw.wait)
            origin.reset()
            (work / "npmrc").write_text("")
            seconds, done = yield threads.deferToThread(
                timed, ["npm", "ci", "--prefer-online", "--registry", REGISTRY + "/",
                        "--userconfig", str(work / "npmrc"), "--cache", str(work / "npm-cache"),
                        "--no-audit", "--no-fund", "--no-update-notifier", "--ignore-scripts",
                        "--loglevel", "error", "--proxy", f"http://127.0.0.1:{gw.port}",
                        "--noproxy", ""], cwd=work / "app")
            rows.append(("npm ci --prefer-online", seconds, len(origin.requests),
                         origin.max_in_flight, "ok" if done.returncode == 0 else done.stderr[-300:]))
            stop_all([gw.proc])
        yield origin.stop_serving()

        print(f"{args.packages} packages, origin delay {args.delay_ms} ms, --jobs {args.jobs}")
        print(f"{'run':<24} {'wall s':>7} {'origin req':>10} {'max in flight':>13}  result")
        for name, seconds, requests, in_flight, result in rows:
            print(f"{name:<24} {seconds:7.2f} {requests:10d} {in_flight:13d}  {result}")
        print(f"per item: parse {parse_us:.1f} us, verify (sha512 of ~{len(tarballs[0]) // 1024} KiB) "
              f"{verify_us:.1f} us")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--packages", type=int, default=500)
    parser.add_argument("--delay-ms", type=float, default=50.0)
    parser.add_argument("--jobs", type=int, default=8)
    args = parser.parse_args()
    task.react(lambda reactor: bench(reactor, args))


if __name__ == "__main__":
    main()
