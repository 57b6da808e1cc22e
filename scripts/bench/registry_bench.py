#!/usr/bin/env python3
"""cachegate's registry mirror vs Debian's docker-registry (distribution 2.8) in proxy mode,
in front of the same upstream (a plain docker-registry), same run, loopback.

Both mirrors are pinned to the same single core; the upstream and the clients (skopeo
copying the image to an OCI directory, a real registry client) to the other.  The image:
``--layers`` layers of ``--layer-mib`` MiB of non-repeating data (gzip level 1), cached
under /var/cache/cachegate-tests.  Measures, for each mirror from an empty cache:

- a cold pull: wall time and the bytes the upstream sent (its access log);
- a warm pull of the same image;
- ``--herd`` concurrent cold pulls (another empty cache): upstream bytes and wall time.

Run as root (skopeo runs in a private mount namespace):
    .venv/bin/python scripts/bench/registry_bench.py [--layers 4] [--layer-mib 50] [--herd 10]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.oci_images import Layout, Registry, push, skopeo  # noqa: E402
from tests.processes import free_port, serve, stop_all  # noqa: E402

MIRROR_CORE, OTHER_CORE = "1", "0"
CACHE = Path("/var/cache/cachegate-tests")
REPO = "library/big"
_ACCESS_BYTES = re.compile(r'^\S+ - \S+ \[[^]]+\] "GET (\S+) HTTP/[0-9.]+" 200 (\d+)', re.M)


def layout_for(layers: int, mib: int) -> tuple[Path, int]:
    """The benchmark image's OCI layout (built once per recipe) and its blob bytes."""
    recipe = hashlib.sha256(f"registry-bench v1 {layers} {mib}".encode()).hexdigest()[:16]
    directory = CACHE / f"registry-bench-{recipe}"
    if not (directory / "index.json").exists():
        print(f"building a {layers} x {mib} MiB image in {directory}…", file=sys.stderr)
        layout = Layout(level=1)
        top = layout.image("big", layer_sizes=tuple(mib * 2**20 for _ in range(layers)))
        layout.tag(top, "latest")
        partial = directory.with_suffix(".partial")
        shutil.rmtree(partial, ignore_errors=True)
        layout.write(partial)
        partial.rename(directory)
    size = sum(p.stat().st_size for p in (directory / "blobs" / "sha256").iterdir())
    return directory, size


def upstream_bytes(registry: Registry) -> int:
    """Bytes of 200 answers to blob and manifest GETs so far (the access log)."""
    text = registry.log.read_text(errors="replace")
    return sum(int(n) for path, n in _ACCESS_BYTES.findall(text) if "/v2/" in path)


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    sys.exit(f"error: nothing listens on {port}")


def pull(port: int, out: Path) -> float:
    start = time.monotonic()
    skopeo("copy", "--src-tls-verify=false", f"docker://127.0.0.1:{port}/{REPO}:latest",
           f"oci:{out}:latest", pin=OTHER_CORE, timeout=600)
    return time.monotonic() - start


def herd(port: int, work: Path, n: int) -> float:
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            pull(port, work / f"herd-{port}-{i}")
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
    start = time.monotonic()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.monotonic() - start


class Cachegate:
    def __init__(self, work: Path, upstream: str) -> None:
        self.port = free_port()
        state = work / f"cachegate-{self.port}"
        state.mkdir()
        config = state / "cachegate.toml"
        config.write_text("\n".join([
            "[server]", f'state_dir = "{state}"', 'listen = ["127.0.0.1"]',
            f"http_port = {free_port()}", "https_port = 0", f'admin = "127.0.0.1:{free_port()}"',
            "[images]", f'listen = "127.0.0.1:{self.port}"',
            "[dns]", "port = 0", 'forwarders = ["127.0.0.1:9"]',
            "[upstreams.dockerhub]", f'origin = "{upstream}"', ""]))
        self.proc = serve(config, state / "cachegate.log", core=MIRROR_CORE)
        wait_port(self.port)

    def stop(self) -> None:
        stop_all([self.proc])


class Distribution:
    def __init__(self, work: Path, upstream: str) -> None:
        self.registry = Registry(work / f"distribution-{free_port()}", proxy=upstream)
        self.registry.start()
        pid = self.registry.proc.pid  # type: ignore[union-attr]
        subprocess.run(["taskset", "-a", "-p", "-c", MIRROR_CORE, str(pid)], check=True,
                       capture_output=True)
        self.port = self.registry.port

    def stop(self) -> None:
        self.registry.stop()


def measure(kind, work: Path, upstream: Registry, herd_size: int) -> dict:  # type: ignore[no-untyped-def]
    mirror = kind(work, upstream.url)
    try:
        before = upstream_bytes(upstream)
        cold = pull(mirror.port, work / f"cold-{mirror.port}")
        cold_bytes = upstream_bytes(upstream) - before
        warm = min(pull(mirror.port, work / f"warm-{mirror.port}-{i}") for i in range(3))
    finally:
        mirror.stop()
    mirror = kind(work, upstream.url)
    try:
        before = upstream_bytes(upstream)
        wall = herd(mirror.port, work, herd_size)
        herd_bytes = upstream_bytes(upstream) - before
    finally:
        mirror.stop()
    return {"cold_s": cold, "cold_upstream_bytes": cold_bytes, "warm_s": warm,
            "herd_s": wall, "herd_upstream_bytes": herd_bytes}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--layer-mib", type=int, default=50)
    parser.add_argument("--herd", type=int, default=10)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    for tool in ("docker-registry", "skopeo", "taskset", "unshare"):
        if shutil.which(tool) is None:
            sys.exit(f"error: {tool} not installed (Debian packages docker-registry skopeo "
                     "util-linux)")
    layout, size = layout_for(args.layers, args.layer_mib)
    work = Path(tempfile.mkdtemp(prefix="registry-bench-"))
    upstream = Registry(work / "upstream").start()
    try:
        subprocess.run(["taskset", "-a", "-p", "-c", OTHER_CORE,
                        str(upstream.proc.pid)], check=True, capture_output=True)  # type: ignore[union-attr]
        push(layout, "single", f"{upstream.address}/{REPO}:latest")
        results = {name: measure(kind, work, upstream, args.herd)
                   for name, kind in (("cachegate", Cachegate),
                                      ("distribution", Distribution))}
    finally:
        upstream.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"image_bytes": size, **results}), file=sys.stderr)
    report(size, args.herd, results)
    return 0


def report(size: int, herd_size: int, results: dict) -> None:
    a, b = results["cachegate"], results["distribution"]
    rows = [("cold pull, s", "cold_s", "{:.2f}"),
            ("cold pull, upstream bytes / image", "cold_upstream_bytes", "{:.2f}x"),
            ("warm pull, s", "warm_s", "{:.2f}"),
            (f"{herd_size} concurrent cold pulls, s", "herd_s", "{:.2f}"),
            (f"{herd_size} concurrent cold pulls, upstream bytes / image",
             "herd_upstream_bytes", "{:.2f}x")]
    print(f"image: {size / 1e6:.0f} MB\n")
    print("| measure | cachegate | distribution 2.8 proxy | ratio |\n|---|---|---|---|")
    for label, key, fmt in rows:
        x, y = a[key], b[key]
        if key.endswith("bytes"):
            x, y = x / size, y / size
        ratio = f"{x / y:.2f}" if y else "–"
        print(f"| {label} | {fmt.format(x)} | {fmt.format(y)} | {ratio} |")


if __name__ == "__main__":
    sys.exit(main())
