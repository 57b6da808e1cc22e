"""Test images for the registry mirror: deterministic OCI layouts written by a few lines of
Python, pushed with Debian's ``skopeo`` into Debian's ``docker-registry`` (distribution 2.8),
the real upstream the mirror tests run against.

Three shapes, as real registries hold them:

- ``single``: one platform, an OCI manifest;
- ``oci-index``: an OCI image index over two platforms (``skopeo copy --all``);
- ``docker-list``: the same two platforms as a Docker schema-2 manifest list
  (``--all --format v2s2``).

Layers are small non-repeating payloads (a misplaced byte shows), tarred with fixed
metadata and gzipped with ``mtime=0``, so every digest is the same on every run.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
# What a client accepts when it takes any of them (dockerd and containerd send these).
ACCEPT_ALL = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))

PLATFORMS = (("amd64", ""), ("arm64", "v8"))


def payload(seed: str, size: int) -> bytes:
    """``size`` non-repeating bytes: a SHA-256 chain from ``seed``."""
    out = bytearray()
    block = seed.encode()
    counter = 0
    while len(out) < size:
        block = hashlib.sha256(block + counter.to_bytes(8, "big")).digest()
        out += block
        counter += 1
    return bytes(out[:size])


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass(frozen=True)
class Blob:
    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()

    def descriptor(self, **extra: object) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data),
                **extra}


def _json(value: dict) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


@dataclass
class Layout:
    """An OCI image layout being written: blobs by digest plus tagged top descriptors."""

    blobs: dict[str, Blob] = field(default_factory=dict)
    refs: list[dict] = field(default_factory=list)
    level: int = 9  # gzip level of the layers (the benchmark's 200 MB use 1)

    def add(self, blob: Blob) -> Blob:
        self.blobs[blob.digest] = blob
        return blob

    def image(self, name: str, arch: str = "amd64", variant: str = "",
              layer_sizes: tuple[int, ...] = (3000, 70000)) -> Blob:
        """A platform image: its layers, config and manifest; returns the manifest."""
        layers, diff_ids = [], []
        for i, size in enumerate(layer_sizes):
            tar = _tar({f"data/{name}-{arch}-{i}.bin": payload(f"{name}/{arch}/{i}", size)})
            diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
            layers.append(self.add(Blob(OCI_LAYER, gzip.compress(tar, self.level, mtime=0))))
        platform = {"architecture": arch, "os": "linux", **({"variant": variant} if variant else {})}
        config = self.add(Blob(OCI_CONFIG, _json({
            **platform, "created": "2024-01-01T00:00:00Z",
            "config": {"Cmd": ["/data"], "Labels": {"test.image": name}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids}})))
        return self.add(Blob(OCI_MANIFEST, _json({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config.descriptor(),
            "layers": [layer.descriptor() for layer in layers]})))

    def index(self, name: str, platforms=PLATFORMS) -> Blob:  # type: ignore[no-untyped-def]
        manifests = []
        for arch, variant in platforms:
            manifest = self.image(name, arch, variant)
            platform = {"architecture": arch, "os": "linux", **({"variant": variant} if variant else {})}
            manifests.append(manifest.descriptor(platform=platform))
        return self.add(Blob(OCI_INDEX, _json({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                               "manifests": manifests})))

    def tag(self, top: Blob, ref: str) -> None:
        self.refs.append(top.descriptor(annotations={"org.opencontainers.image.ref.name": ref}))

    def write(self, directory: Path) -> Path:
        (directory / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (directory / "oci-layout").write_bytes(_json({"imageLayoutVersion": "1.0.0"}))
        for blob in self.blobs.values():
            (directory / "blobs" / "sha256" / blob.digest.split(":")[1]).write_bytes(blob.data)
        (directory / "index.json").write_bytes(_json({"schemaVersion": 2, "manifests": self.refs}))
        return directory


@dataclass(frozen=True)
class TestImage:
    """One image pushed to the upstream: where, in which shape, and its local layout."""

    repo: str  # e.g. "library/single"
    tag: str
    shape: str  # "single", "oci-index" or "docker-list"
    layout: Path
    top: Blob  # the top manifest or index as written locally (skopeo may convert it)


def build_layout(directory: Path, name: str, shape: str) -> tuple[Path, Blob]:
    layout = Layout()
    top = layout.image(name) if shape == "single" else layout.index(name)
    layout.tag(top, "latest")
    return layout.write(directory), top


# -- skopeo ----------------------------------------------------------------------------

def skopeo(*args: str, env: dict[str, str] | None = None, timeout: float = 120,
           pin: str | None = None) -> str:
    """Run skopeo in a private mount namespace: containers/image writes a blob-info cache
    to ``/var/lib/containers`` as root, which must not appear on the host.  ``pin``: the
    CPU core(s) to run it on (taskset)."""
    script = 'mount -t tmpfs tmpfs /var/lib && exec skopeo "$@"'
    taskset = ["taskset", "-c", pin] if pin is not None else []
    result = subprocess.run([*taskset, "unshare", "-m", "--propagation", "private", "sh", "-c", script,
                             "skopeo", "--insecure-policy", *args],
                            capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **(env or {})})
    if result.returncode != 0:
        raise RuntimeError(f"skopeo {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def push(image_layout: Path, shape: str, dest: str) -> None:
    """Copy the layout's ``latest`` to ``dest`` (``host:port/repo:tag``) over plain HTTP."""
    args = ["copy", "--dest-tls-verify=false"]
    if shape != "single":
        args.append("--all")
    if shape == "docker-list":
        args += ["--format", "v2s2"]
    else:
        args.append("--preserve-digests")
    skopeo(*args, f"oci:{image_layout}:latest", f"docker://{dest}")


# -- the registry ----------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_ACCESS = re.compile(r'^\S+ - \S+ \[[^]]+\] "([A-Z]+) (\S+) HTTP/[0-9.]+"', re.M)


class Registry:
    """Debian's ``docker-registry`` (distribution 2.8) on a free loopback port, filesystem
    storage under ``root``; ``proxy`` makes it a pull-through cache of that URL (the
    benchmark's anchor)."""

    def __init__(self, root: Path, proxy: str = "") -> None:
        self.root = root
        self.port = free_port()
        root.mkdir(parents=True, exist_ok=True)
        self.config = root / "config.yml"
        lines = ["version: 0.1", "log:", "  level: error", "  accesslog:", "    disabled: false",
                 "storage:", "  filesystem:", f"    rootdirectory: {root / 'data'}",
                 "  delete:", "    enabled: true", "http:", f"  addr: 127.0.0.1:{self.port}"]
        if proxy:
            lines += ["proxy:", f"  remoteurl: {proxy}"]
        self.config.write_text("\n".join(lines) + "\n")
        self.log = root / "registry.log"
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def start(self, timeout: float = 20) -> "Registry":
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(["docker-registry", "serve", str(self.config)],
                                         stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {self.log.read_text()[-2000:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        raise TimeoutError("docker-registry did not start listening")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None

    def requests(self) -> list[tuple[str, str]]:
        """Every request so far as (method, path), from its access log."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return []
        return _ACCESS.findall(text)

    def count(self, method: str | None = None, part: str = "") -> int:
        return sum(1 for m, path in self.requests()
                   if (method is None or m == method) and part in path)

    def blob_path(self, digest: str) -> Path:
        hex_ = digest.split(":")[1]
        return self.root / "data/docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data"


# The images every registry test finds upstream: (repository, shape).
IMAGES = (("library/single", "single"), ("library/multi", "oci-index"),
          ("library/dlist", "docker-list"), ("team/tool", "single"))


def populate(registry: Registry, work: Path) -> dict[str, TestImage]:
    """Write and push ``IMAGES`` (tag ``latest``); by repository."""
    pushed = {}
    for repo, shape in IMAGES:
        name = repo.replace("/", "-")
        layout, top = build_layout(work / name, name, shape)
        push(layout, shape, f"{registry.address}/{repo}:latest")
        pushed[repo] = TestImage(repo, "latest", shape, layout, top)
    return pushed
