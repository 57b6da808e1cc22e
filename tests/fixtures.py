"""The fixture tree: a small but real package repository of every ecosystem.

``build_fixtures(root)`` writes under ``root/<ecosystem>/`` files laid out exactly as the
real upstream lays them out, so a gateway entry whose ``origin`` is
``http://127.0.0.1:PORT/<ecosystem>`` asks for unchanged paths::

    deb.debian.org/debian/dists/bookworm/InRelease  ->  root/debian/debian/dists/bookworm/InRelease
    dl-cdn.alpinelinux.org/alpine/v3.19/main/...    ->  root/alpine/alpine/v3.19/main/...
    pypi.org/simple/x/, files.pythonhosted.org/packages/..  ->  root/pypi/simple/x/, root/pypi/packages/..
    registry.npmjs.org/@scope%2fname                ->  root/npm/@scope/name/  (a packument)
    repo1.maven.org/maven2/org/...                  ->  root/maven/maven2/org/...
    proxy.golang.org, index/static.crates.io, rubygems.org  ->  root/go, root/crates, root/rubygems
                                                       (tests/lang_fixtures.py)

Everything is what the real clients accept: a signed apt repository (``apt-get``), PEP
503/691 indexes with wheels stored under their blake2b-256 (``pip``), packuments and
tarballs with correct ``integrity`` (``npm``), a Maven repository with checksums and a
timestamped SNAPSHOT (``mvn``), an Alpine index with ``C:`` checksums.  Payloads come from
a hash stream, never repeating, so a misplaced byte shows.

A URL served in several representations (PyPI's HTML/JSON simple pages, npm's full and
abbreviated packuments) is a directory holding one ``index.*`` file per representation;
tests/origin.py (``VARIANTS``) chooses among them by ``Accept`` and answers ``Vary: Accept``.

The ``*_args``/``apt_options`` helpers at the end are the recipes that make each real
client use only a temporary directory and a given repository URL (optionally through a
proxy): tests/test_origin.py runs them against the origin, gateway tests through cachegate.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

try:
    from tests import lang_fixtures
except ImportError:  # tests/ itself on the path (python tests/origin.py)
    import lang_fixtures  # type: ignore[no-redef]

# The real hosts each part of the tree stands for (the ``Host`` a client sends).
DEBIAN_HOST = "deb.debian.org"
ALPINE_HOST = "dl-cdn.alpinelinux.org"
PYPI_HOST = "pypi.org"
FILES_HOST = "files.pythonhosted.org"
NPM_HOST = "registry.npmjs.org"
MAVEN_HOST = "repo1.maven.org"

DEBIAN_SUITE = "bookworm"
DEBIAN_PACKAGES = ("hello-cachegate", "cachegate-data")
ALPINE_BRANCH = "/alpine/v3.19/main/x86_64"
ALPINE_PACKAGES = ("cachegate-hello", "cachegate-data")
PYPI_PROJECTS = ("cachegate-fixture-a", "cachegate-fixture-b")  # a depends on b
NPM_PACKAGES = ("cachegate-fixture", "@cachegate/fixture")  # the scoped one depends on the other
MAVEN_ARTIFACT = "org.cachegate:fixture:1.0"  # depends on org.cachegate:fixture-dep:1.0
MAVEN_SNAPSHOT = "org.cachegate:fixture:1.1-SNAPSHOT"

# Fixed dates keep the tree reproducible; all in the past so no client sees "not valid yet".
EPOCH = 1707559200  # 2024-02-10 10:00:00 UTC
HTTP_DATE = "Sat, 10 Feb 2024 10:00:00 UTC"
ISO_DATE = "2024-02-10T10:00:00.000Z"
_ZIP_DATE = (2024, 2, 10, 10, 0, 0)

HTML_ACCEPT = "text/html"
PYPI_JSON_ACCEPT = "application/vnd.pypi.simple.v1+json"
NPM_FULL_ACCEPT = "application/json"
NPM_CORGI_ACCEPT = "application/vnd.npm.install-v1+json"


@dataclass(frozen=True)
class FixtureObject:
    """One object a client can fetch: ``path`` below the ecosystem's origin prefix (what
    the client asks the real ``host`` for), the sha256 and size of the body, and for a
    negotiated URL the ``accept`` header that selects this representation."""

    ecosystem: str
    path: str
    sha256: str
    size: int
    host: str
    file: Path
    accept: str | None = None

    @property
    def origin_path(self) -> str:
        """The path on the test origin: ``/<ecosystem><path>``."""
        return f"/{self.ecosystem}{self.path}"


@dataclass
class Fixtures:
    root: Path
    files_base: str
    npm_base: str
    objects: list[FixtureObject] = field(default_factory=list)
    apt_keyring: Path | None = None  # None when gpg is missing: use [trusted=yes]

    def of(self, ecosystem: str) -> list[FixtureObject]:
        return [o for o in self.objects if o.ecosystem == ecosystem]

    def get(self, ecosystem: str, path: str, accept: str | None = None) -> FixtureObject:
        for o in self.objects:
            if (o.ecosystem, o.path, o.accept) == (ecosystem, path, accept):
                return o
        raise KeyError((ecosystem, path, accept))

    def file_in(self, obj: FixtureObject, root: Path) -> Path:
        """Where ``obj`` lies in a copy of the tree at ``root`` (an origin's private copy)."""
        return Path(root) / obj.file.relative_to(self.root)

    def find(self, suffix: str) -> FixtureObject:
        """The first object whose path ends with ``suffix``."""
        return next(o for o in self.objects if o.path.endswith(suffix))


# --- payloads -------------------------------------------------------------------------

CHUNK = 1 << 20


def payload_chunks(seed: str, size: int, chunk: int = CHUNK) -> Iterator[bytes]:
    """``size`` bytes of SHAKE-256 output, chunk ``i`` seeded with ``seed/i``: never
    repeating, reproducible, and any range computable without the rest."""
    for index, offset in enumerate(range(0, size, chunk)):
        yield hashlib.shake_256(f"{seed}/{index}".encode()).digest(min(chunk, size - offset))


def payload(seed: str, size: int) -> bytes:
    return b"".join(payload_chunks(seed, size))


def counter_bytes(size: int, seed: bytes = b"x") -> bytes:
    """``size`` non-repeating bytes in memory (sha256 of a counter): a misplaced block
    shows up in the digest.  For objects tests write into an origin's tree."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


def put_object(origin_root: Path, ecosystem: str, path: str, data: bytes) -> None:
    """Place ``data`` where the origin serves ``path`` of ``ecosystem``."""
    target = origin_root / ecosystem / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)


def make_blob(path: Path, size: int, seed: str | None = None) -> str:
    """Write a ``size``-byte non-repeating object to ``path`` a chunk at a time (memory
    stays at one chunk whatever the size); returns its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        for chunk in payload_chunks(seed or path.name, size):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


# --- recording what is written --------------------------------------------------------

class _Tree:
    """Writes files below ``root/<ecosystem>`` and records each as a FixtureObject."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects: list[FixtureObject] = []

    def write(self, ecosystem: str, path: str, data: bytes, host: str) -> FixtureObject:
        file = self.root / ecosystem / path.lstrip("/")
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(data)
        return self.add(ecosystem, path, data, host, file)

    def write_variant(self, ecosystem: str, path: str, name: str, data: bytes, host: str,
                      accept: str) -> FixtureObject:
        """One representation (``index.*`` file) of the directory-URL ``path``."""
        file = self.root / ecosystem / path.strip("/") / name
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(data)
        return self.add(ecosystem, path, data, host, file, accept)

    def add(self, ecosystem: str, path: str, data: bytes, host: str, file: Path,
            accept: str | None = None) -> FixtureObject:
        obj = FixtureObject(ecosystem, path, sha256(data), len(data), host, file, accept)
        self.objects.append(obj)
        return obj


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tar_member(name: str, data: bytes, mode: int = 0o644) -> bytes:
    """One ustar header and its data padded to 512 bytes."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, EPOCH
    info.uname = info.gname = "root"
    return info.tobuf(tarfile.USTAR_FORMAT) + data + b"\0" * (-len(data) % 512)


def _tar(members: list[tuple[str, bytes]], end: bool = True) -> bytes:
    """A tar stream; ``end=False`` leaves off the end-of-archive blocks (as apk's control
    segment does, so the segments concatenate into one archive)."""
    body = b"".join(_tar_member(n, d, 0o755 if n.endswith(".sh") or "/bin/" in n else 0o644)
                    for n, d in members)
    return body + (b"\0" * 1024 if end else b"")


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


# --- Debian -------------------------------------------------------------------------

_DEB_SPECS = {  # name -> (version, depends, payload size, summary)
    "hello-cachegate": ("1.0", "cachegate-data", 96 * 1024, "greets from the cachegate fixture"),
    "cachegate-data": ("1.0", "", 40 * 1024, "data for the cachegate fixture"),
}


def publish_debian(root: Path, generation: int = 1) -> list[FixtureObject]:
    """Write the ``bookworm`` suite of generation ``generation`` below ``root/debian``.

    Generation 2 (a new ``InRelease``, as a mirror push) adds ``hello-cachegate`` 1.1 and
    drops 1.0 from ``Packages``; like Debian it keeps the older pool and by-hash files, so
    an apt client holding the old ``InRelease`` can still finish its update."""
    tree = _Tree(root)
    base = "/debian"
    stanzas = []
    for name, (version, depends, size, summary) in sorted(_DEB_SPECS.items()):
        if name == "hello-cachegate" and generation > 1:
            version = f"1.{generation - 1}"
        stanzas.append(_build_deb(tree, base, name, version, depends, size, summary))
    _write_apt_indexes(tree, root, base, stanzas, generation)
    return tree.objects


def _build_deb(tree: _Tree, base: str, name: str, version: str, depends: str, size: int,
               summary: str) -> str:
    """Build ``name_version_all.deb`` with dpkg-deb into the pool; its Packages stanza."""
    control = {"Package": name, "Version": version, "Architecture": "all",
               "Maintainer": "cachegate fixtures <fixtures@cachegate.invalid>",
               "Installed-Size": str(size // 1024 + 4), "Section": "misc",
               "Priority": "optional"}
    if depends:
        control["Depends"] = depends
    control["Description"] = f"{summary}\n a package of the cachegate test fixture repository"
    pool = f"pool/main/{name[0]}/{name}/{name}_{version}_all.deb"
    with tempfile.TemporaryDirectory(prefix="cg-deb-") as tmp:
        pkg = Path(tmp) / "pkg"
        files = {f"usr/share/{name}/payload.bin": payload(f"deb/{name}/{version}", size),
                 f"usr/share/doc/{name}/copyright": b"Public domain test fixture.\n"}
        if name == "hello-cachegate":
            files["usr/bin/hello-cachegate"] = b"#!/bin/sh\necho 'hello from cachegate'\n"
        for rel, data in files.items():
            (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
            (pkg / rel).write_bytes(data)
            (pkg / rel).chmod(0o755 if "/bin/" in rel else 0o644)
        (pkg / "DEBIAN").mkdir()
        (pkg / "DEBIAN" / "control").write_text(
            "".join(f"{k}: {v}\n" for k, v in control.items()))
        out = Path(tmp) / "out.deb"
        _run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(pkg), str(out)],
             env={**os.environ, "SOURCE_DATE_EPOCH": str(EPOCH)})
        data = out.read_bytes()
    tree.write("debian", f"{base}/{pool}", data, DEBIAN_HOST)
    fields = dict(control, Filename=pool, Size=str(len(data)),
                  MD5sum=hashlib.md5(data).hexdigest(), SHA256=sha256(data))
    description = fields.pop("Description")
    return "".join(f"{k}: {v}\n" for k, v in fields.items()) + f"Description: {description}\n"


def _write_apt_indexes(tree: _Tree, root: Path, base: str, stanzas: list[str],
                       generation: int) -> None:
    """Packages{,.gz,.xz} with by-hash copies, the Release listing them, and when gpg is
    there InRelease + Release.gpg signed with the tree's own key."""
    dists = f"{base}/dists/{DEBIAN_SUITE}"
    packages = "\n".join(stanzas).encode()
    indexes = {"main/binary-amd64/Packages": packages,
               "main/binary-amd64/Packages.gz": _gzip(packages),
               "main/binary-amd64/Packages.xz": lzma.compress(packages),
               "main/binary-amd64/Release": _component_release().encode()}
    for rel, data in indexes.items():
        tree.write("debian", f"{dists}/{rel}", data, DEBIAN_HOST)
        if "Packages" in rel:
            by_hash = rel.rsplit("/", 1)[0] + f"/by-hash/SHA256/{sha256(data)}"
            tree.write("debian", f"{dists}/{by_hash}", data, DEBIAN_HOST)
    release = _release(indexes, generation).encode()
    tree.write("debian", f"{dists}/Release", release, DEBIAN_HOST)
    signed = _sign_release(root, release)
    if signed is not None:
        tree.write("debian", f"{dists}/InRelease", signed[0], DEBIAN_HOST)
        tree.write("debian", f"{dists}/Release.gpg", signed[1], DEBIAN_HOST)


def _component_release() -> str:
    return (f"Archive: stable\nOrigin: cachegate\nLabel: cachegate fixture\n"
            f"Codename: {DEBIAN_SUITE}\nComponent: main\nArchitecture: amd64\n")


def _release(indexes: dict[str, bytes], generation: int) -> str:
    date = HTTP_DATE.replace("10:00:00", f"{10 + generation - 1:02d}:00:00")
    head = (f"Origin: cachegate\nLabel: cachegate fixture\nSuite: stable\n"
            f"Version: 12.{generation}\nCodename: {DEBIAN_SUITE}\nDate: {date}\n"
            f"Acquire-By-Hash: yes\nArchitectures: amd64\nComponents: main\n"
            f"Description: cachegate test fixture repository, generation {generation}\n")
    md5 = "".join(f" {hashlib.md5(d).hexdigest()} {len(d):8d} {n}\n" for n, d in indexes.items())
    sha = "".join(f" {sha256(d)} {len(d):8d} {n}\n" for n, d in indexes.items())
    return head + "MD5Sum:\n" + md5 + "SHA256:\n" + sha


def _signing_dir(root: Path) -> Path:
    """Where the tree keeps its throwaway archive key: a dot directory the origin never
    serves."""
    return root / ".signing"


def apt_keyring(root: Path) -> Path | None:
    path = _signing_dir(root) / "archive-keyring.gpg"
    return path if path.exists() else None


def _sign_release(root: Path, release: bytes) -> tuple[bytes, bytes] | None:
    """(InRelease, Release.gpg) signed with the tree's key (made on first use), or None
    without gpg.  Each signing uses a short-lived GNUPGHOME under /tmp: gpg-agent's socket
    path must stay under 108 bytes, which deep pytest directories exceed."""
    if shutil.which("gpg") is None:
        return None
    keys = _signing_dir(root)
    keys.mkdir(mode=0o700, parents=True, exist_ok=True)
    home = tempfile.mkdtemp(prefix="cg-gpg-")
    gpg = ["gpg", "--batch", "--quiet", "--homedir", home, "--pinentry-mode", "loopback",
           "--passphrase", ""]
    try:
        secret = keys / "secret.asc"
        if secret.exists():
            _run(gpg + ["--import", str(secret)])
        else:
            _run(gpg + ["--quick-gen-key", "cachegate fixture archive <fixtures@cachegate.invalid>",
                        "ed25519", "sign", "never"])
            secret.write_bytes(_run(gpg + ["--armor", "--export-secret-keys"]))
            (keys / "archive-keyring.gpg").write_bytes(_run(gpg + ["--export"]))
        inrelease = _run(gpg + ["--digest-algo", "SHA256", "--clearsign"], release)
        detached = _run(gpg + ["--digest-algo", "SHA256", "--armor", "--detach-sign"], release)
        return inrelease, detached
    finally:
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "gpg-agent"],
                       capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)


def _run(argv: list[str], stdin: bytes | None = None, env: dict | None = None) -> bytes:
    done = subprocess.run(argv, input=stdin, capture_output=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr.decode()}")
    return done.stdout


# --- Alpine -------------------------------------------------------------------------

_APK_SPECS = {  # name -> (version, depends, payload size)
    "cachegate-hello": ("1.0-r0", "cachegate-data", 40 * 1024),
    "cachegate-data": ("1.0-r0", "", 24 * 1024),
}


def _build_alpine(tree: _Tree) -> None:
    """``*.apk`` files (v2: control and data gzip segments) and the APKINDEX.tar.gz that
    lists them with ``C:Q1<base64 sha1 of the control segment>``."""
    entries = [_build_apk(tree, name, *spec) for name, spec in sorted(_APK_SPECS.items())]
    description = b"v3.19.1-cachegate-fixture"
    index = _tar([("DESCRIPTION", description), ("APKINDEX", "\n".join(entries).encode() + b"\n")])
    tree.write("alpine", f"{ALPINE_BRANCH}/APKINDEX.tar.gz", _gzip(index), ALPINE_HOST)


def _build_apk(tree: _Tree, name: str, version: str, depends: str, size: int) -> str:
    files = [(f"usr/share/{name}/payload.bin", payload(f"apk/{name}/{version}", size))]
    data_segment = _gzip(_tar(files))
    pkginfo = (f"# Generated by cachegate fixtures\npkgname = {name}\npkgver = {version}\n"
               f"pkgdesc = cachegate fixture {name}\nurl = https://cachegate.invalid/\n"
               f"builddate = {EPOCH}\nsize = {size}\narch = x86_64\nlicense = MIT\n"
               + (f"depend = {depends}\n" if depends else "")
               + f"datahash = {sha256(data_segment)}\n").encode()
    control_segment = _gzip(_tar([(".PKGINFO", pkginfo)], end=False))
    apk = control_segment + data_segment
    tree.write("alpine", f"{ALPINE_BRANCH}/{name}-{version}.apk", apk, ALPINE_HOST)
    checksum = "Q1" + base64.b64encode(hashlib.sha1(control_segment).digest()).decode()
    return (f"C:{checksum}\nP:{name}\nV:{version}\nA:x86_64\nS:{len(apk)}\nI:{size}\n"
            f"T:cachegate fixture {name}\nU:https://cachegate.invalid/\nL:MIT\no:{name}\n"
            f"t:{EPOCH}\n" + (f"D:{depends}\n" if depends else ""))


# --- PyPI ---------------------------------------------------------------------------

_WHEEL_SPECS = {  # project -> (version, requires, payload size)
    "cachegate-fixture-a": ("1.0", "cachegate-fixture-b>=1.0", 48 * 1024),
    "cachegate-fixture-b": ("1.0", "", 32 * 1024),
}


@dataclass(frozen=True)
class _Dist:
    filename: str
    url: str
    sha256: str
    blake2b: str
    size: int
    metadata_sha256: str | None  # PEP 658 ``<file>.metadata`` beside wheels


def _build_pypi(tree: _Tree, files_base: str) -> None:
    dists_of = {}
    for project, (version, requires, size) in _WHEEL_SPECS.items():
        dists = [_build_wheel(tree, files_base, project, version, requires, size)]
        if project == "cachegate-fixture-b":
            dists.append(_build_sdist(tree, files_base, project, version))
        dists_of[project] = (version, dists)
        _write_simple_page(tree, project, dists)
        _write_json_api(tree, project, version, dists)
    root_html = "".join(f'    <a href="/simple/{p}/">{p}</a>\n' for p in dists_of)
    tree.write_variant("pypi", "/simple/", "index.html", _html("Simple index", root_html),
                       PYPI_HOST, HTML_ACCEPT)
    root_json = {"meta": {"api-version": "1.1", "_last-serial": 2},
                 "projects": [{"name": p, "_last-serial": 1} for p in dists_of]}
    tree.write_variant("pypi", "/simple/", "index.pypi.json", _json(root_json), PYPI_HOST,
                       PYPI_JSON_ACCEPT)


def _content_path(data: bytes, filename: str) -> tuple[str, str]:
    """files.pythonhosted.org's layout: ``/packages/xx/yy/<rest>/name`` spelling the
    blake2b-256 of the file; returns (path, blake2b hex)."""
    digest = hashlib.blake2b(data, digest_size=32).hexdigest()
    return f"/packages/{digest[:2]}/{digest[2:4]}/{digest[4:]}/{filename}", digest


def _build_wheel(tree: _Tree, files_base: str, project: str, version: str, requires: str,
                 size: int) -> _Dist:
    module = project.replace("-", "_")
    metadata = (f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n"
                f"Summary: cachegate test fixture {project}\nLicense: MIT\n"
                f"Requires-Python: >=3.8\n"
                + (f"Requires-Dist: {requires}\n" if requires else "")).encode()
    info = f"{module}-{version}.dist-info"
    files = {f"{module}/__init__.py": f'"""cachegate fixture"""\nVERSION = "{version}"\n'.encode(),
             f"{module}/payload.bin": payload(f"wheel/{project}/{version}", size),
             f"{info}/METADATA": metadata,
             f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: cachegate-fixtures\n"
                              b"Root-Is-Purelib: true\nTag: py3-none-any\n"}
    data = _wheel_zip(files, f"{info}/RECORD")
    filename = f"{module}-{version}-py3-none-any.whl"
    path, blake = _content_path(data, filename)
    tree.write("pypi", path, data, FILES_HOST)
    tree.write("pypi", path + ".metadata", metadata, FILES_HOST)
    return _Dist(filename, files_base + path, sha256(data), blake, len(data), sha256(metadata))


def _wheel_zip(files: dict[str, bytes], record_name: str) -> bytes:
    def digest(data: bytes) -> str:
        raw = hashlib.sha256(data).digest()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    record = "".join(f"{n},sha256={digest(d)},{len(d)}\n" for n, d in files.items())
    files = dict(files, **{record_name: (record + f"{record_name},,\n").encode()})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(zipfile.ZipInfo(name, _ZIP_DATE), data, zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def _build_sdist(tree: _Tree, files_base: str, project: str, version: str) -> _Dist:
    module = project.replace("-", "_")
    top = f"{module}-{version}"
    pkg_info = f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n".encode()
    data = _gzip(_tar([(f"{top}/PKG-INFO", pkg_info),
                       (f"{top}/pyproject.toml", b'[build-system]\nrequires = ["setuptools"]\n'),
                       (f"{top}/{module}/__init__.py", b'"""cachegate fixture"""\n')]))
    filename = f"{top}.tar.gz"
    path, blake = _content_path(data, filename)
    tree.write("pypi", path, data, FILES_HOST)
    return _Dist(filename, files_base + path, sha256(data), blake, len(data), None)


def _html(title: str, body: str) -> bytes:
    return (f'<!DOCTYPE html>\n<html>\n  <head>\n'
            f'    <meta name="pypi:repository-version" content="1.1">\n'
            f"    <title>{title}</title>\n  </head>\n  <body>\n    <h1>{title}</h1>\n"
            f"{body}  </body>\n</html>\n").encode()


def _json(doc: object) -> bytes:
    return json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"


def _write_simple_page(tree: _Tree, project: str, dists: list[_Dist]) -> None:
    """PEP 503 HTML and PEP 691 JSON of one project, with PEP 658/714 metadata hashes."""
    links = ""
    for d in dists:
        meta = (f' data-dist-info-metadata="sha256={d.metadata_sha256}"'
                f' data-core-metadata="sha256={d.metadata_sha256}"') if d.metadata_sha256 else ""
        links += (f'    <a href="{d.url}#sha256={d.sha256}" data-requires-python="&gt;=3.8"'
                  f"{meta}>{d.filename}</a><br />\n")
    path = f"/simple/{project}/"
    tree.write_variant("pypi", path, "index.html", _html(f"Links for {project}", links),
                       PYPI_HOST, HTML_ACCEPT)
    files = []
    for d in dists:
        entry = {"filename": d.filename, "url": d.url, "hashes": {"sha256": d.sha256},
                 "requires-python": ">=3.8", "size": d.size, "upload-time": ISO_DATE,
                 "yanked": False}
        if d.metadata_sha256:
            entry["core-metadata"] = entry["data-dist-info-metadata"] = {
                "sha256": d.metadata_sha256}
        files.append(entry)
    doc = {"meta": {"api-version": "1.1", "_last-serial": 1}, "name": project,
           "versions": sorted({_version_of(d.filename) for d in dists}), "files": files}
    tree.write_variant("pypi", path, "index.pypi.json", _json(doc), PYPI_HOST,
                       PYPI_JSON_ACCEPT)


def _version_of(filename: str) -> str:
    return filename.split("-")[1].removesuffix(".tar.gz")


def _write_json_api(tree: _Tree, project: str, version: str, dists: list[_Dist]) -> None:
    """pypi.org's ``/pypi/<project>/json`` and ``/pypi/<project>/<version>/json``."""
    urls = [{"filename": d.filename, "url": d.url, "size": d.size,
             "digests": {"sha256": d.sha256, "blake2b_256": d.blake2b},
             "packagetype": "bdist_wheel" if d.filename.endswith(".whl") else "sdist",
             "python_version": "py3" if d.filename.endswith(".whl") else "source",
             "requires_python": ">=3.8", "upload_time_iso_8601": ISO_DATE, "yanked": False}
            for d in dists]
    info = {"name": project, "version": version, "summary": f"cachegate test fixture {project}",
            "requires_python": ">=3.8", "license": "MIT"}
    tree.write("pypi", f"/pypi/{project}/json",
               _json({"info": info, "releases": {version: urls}, "urls": urls}), PYPI_HOST)
    tree.write("pypi", f"/pypi/{project}/{version}/json",
               _json({"info": info, "urls": urls}), PYPI_HOST)


# --- npm ----------------------------------------------------------------------------

_NPM_SPECS = {  # name -> {version: (dependencies, payload size)}
    "cachegate-fixture": {"1.0.0": ({}, 24 * 1024), "1.1.0": ({}, 28 * 1024)},
    "@cachegate/fixture": {"1.0.0": ({"cachegate-fixture": "^1.0.0"}, 20 * 1024)},
}


def _build_npm(tree: _Tree, npm_base: str) -> None:
    for name, versions in _NPM_SPECS.items():
        manifests = {v: _build_npm_tarball(tree, npm_base, name, v, deps, size)
                     for v, (deps, size) in versions.items()}
        _write_packument(tree, name, manifests)


def _build_npm_tarball(tree: _Tree, npm_base: str, name: str, version: str,
                       deps: dict[str, str], size: int) -> dict:
    """``package/`` tarball; returns the version's manifest (package.json + dist)."""
    manifest = {"name": name, "version": version, "description": f"cachegate fixture {name}",
                "main": "index.js", "license": "MIT", "dependencies": deps}
    files = [("package/package.json", json.dumps(manifest, indent=2).encode() + b"\n"),
             ("package/index.js", f"module.exports = {json.dumps(name + '@' + version)};\n".encode()),
             ("package/payload.bin", payload(f"npm/{name}/{version}", size))]
    data = _gzip(_tar(files))
    basename = name.rsplit("/", 1)[-1]
    path = f"/{name}/-/{basename}-{version}.tgz"
    tree.write("npm", path, data, NPM_HOST)
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    dist = {"integrity": integrity, "shasum": hashlib.sha1(data).hexdigest(),
            "tarball": npm_base.rstrip("/") + path, "fileCount": len(files),
            "unpackedSize": sum(len(d) for _, d in files)}
    return dict(manifest, _id=f"{name}@{version}", _nodeVersion="20.11.0",
                _npmVersion="10.2.4", dist=dist, engines={"node": ">=14"})


def _write_packument(tree: _Tree, name: str, manifests: dict[str, dict]) -> None:
    """The full packument and the abbreviated one npm install asks for ("corgi")."""
    latest = max(manifests, key=lambda v: tuple(map(int, v.split("."))))
    times = {v: ISO_DATE for v in manifests}
    full = {"_id": name, "_rev": f"{len(manifests)}-cachegate", "name": name,
            "description": f"cachegate fixture {name}", "dist-tags": {"latest": latest},
            "versions": manifests, "time": dict(times, created=ISO_DATE, modified=ISO_DATE),
            "maintainers": [{"name": "cachegate", "email": "fixtures@cachegate.invalid"}],
            "license": "MIT", "readme": f"# {name}\n", "readmeFilename": "README.md"}
    corgi = {"name": name, "dist-tags": {"latest": latest}, "modified": ISO_DATE,
             "versions": {v: {k: m[k] for k in ("name", "version", "dependencies", "dist",
                                                "engines")}
                          for v, m in manifests.items()}}
    path = f"/{name}"
    tree.write_variant("npm", path, "index.json", _json(full), NPM_HOST, NPM_FULL_ACCEPT)
    tree.write_variant("npm", path, "index.corgi.json", _json(corgi), NPM_HOST,
                       NPM_CORGI_ACCEPT)
    if name.startswith("@"):  # npm itself asks for /@scope%2fname: the same directory
        scoped = "/" + name.replace("/", "%2f")
        for obj in tree.objects[-2:]:
            tree.add("npm", scoped, obj.file.read_bytes(), NPM_HOST, obj.file, obj.accept)


# --- Maven --------------------------------------------------------------------------

_MAVEN_BASE = "/maven2/org/cachegate"
_SNAPSHOT_BUILDS = (("20240210.090000", 1), ("20240210.100000", 2))


def _build_maven(tree: _Tree) -> None:
    _maven_release(tree, "fixture-dep", "1.0", None, 16 * 1024)
    _maven_release(tree, "fixture", "1.0", ("fixture-dep", "1.0"), 64 * 1024)
    _maven_metadata(tree, "fixture-dep", ["1.0"])
    _maven_metadata(tree, "fixture", ["1.0", "1.1-SNAPSHOT"])
    _maven_snapshot(tree, "fixture", "1.1")


def _maven_write(tree: _Tree, path: str, data: bytes) -> None:
    """A file and its .sha1/.md5, as Central has them."""
    tree.write("maven", path, data, MAVEN_HOST)
    tree.write("maven", path + ".sha1", hashlib.sha1(data).hexdigest().encode(), MAVEN_HOST)
    tree.write("maven", path + ".md5", hashlib.md5(data).hexdigest().encode(), MAVEN_HOST)


def _pom(artifact: str, version: str, dependency: tuple[str, str] | None) -> bytes:
    deps = ""
    if dependency:
        deps = (f"  <dependencies>\n    <dependency>\n      <groupId>org.cachegate</groupId>\n"
                f"      <artifactId>{dependency[0]}</artifactId>\n"
                f"      <version>{dependency[1]}</version>\n    </dependency>\n"
                f"  </dependencies>\n")
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<project xmlns="http://maven.apache.org/POM/4.0.0">\n'
            f"  <modelVersion>4.0.0</modelVersion>\n  <groupId>org.cachegate</groupId>\n"
            f"  <artifactId>{artifact}</artifactId>\n  <version>{version}</version>\n"
            f"  <packaging>jar</packaging>\n{deps}</project>\n").encode()


def _jar(artifact: str, version: str, size: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        manifest = f"Manifest-Version: 1.0\nImplementation-Title: {artifact}\n" \
                   f"Implementation-Version: {version}\n\n"
        zf.writestr(zipfile.ZipInfo("META-INF/MANIFEST.MF", _ZIP_DATE), manifest)
        zf.writestr(zipfile.ZipInfo(f"org/cachegate/{artifact}/payload.bin", _ZIP_DATE),
                    payload(f"maven/{artifact}/{version}", size))
    return buf.getvalue()


def _maven_release(tree: _Tree, artifact: str, version: str,
                   dependency: tuple[str, str] | None, size: int) -> None:
    base = f"{_MAVEN_BASE}/{artifact}/{version}/{artifact}-{version}"
    _maven_write(tree, base + ".pom", _pom(artifact, version, dependency))
    _maven_write(tree, base + ".jar", _jar(artifact, version, size))


def _maven_metadata(tree: _Tree, artifact: str, versions: list[str]) -> None:
    releases = [v for v in versions if not v.endswith("-SNAPSHOT")]
    listed = "".join(f"      <version>{v}</version>\n" for v in versions)
    xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<metadata>\n'
           f"  <groupId>org.cachegate</groupId>\n  <artifactId>{artifact}</artifactId>\n"
           f"  <versioning>\n    <latest>{versions[-1]}</latest>\n"
           f"    <release>{releases[-1]}</release>\n    <versions>\n{listed}    </versions>\n"
           f"    <lastUpdated>20240210100000</lastUpdated>\n  </versioning>\n</metadata>\n")
    _maven_write(tree, f"{_MAVEN_BASE}/{artifact}/maven-metadata.xml", xml.encode())


def _maven_snapshot(tree: _Tree, artifact: str, base_version: str) -> None:
    """Two timestamped builds of ``<base_version>-SNAPSHOT`` and the metadata naming the
    second, as a repository that keeps older snapshot builds has them."""
    version = f"{base_version}-SNAPSHOT"
    directory = f"{_MAVEN_BASE}/{artifact}/{version}"
    for stamp, build in _SNAPSHOT_BUILDS:
        unique = f"{base_version}-{stamp}-{build}"
        _maven_write(tree, f"{directory}/{artifact}-{unique}.pom", _pom(artifact, version, None))
        _maven_write(tree, f"{directory}/{artifact}-{unique}.jar",
                     _jar(artifact, unique, 32 * 1024))
    stamp, build = _SNAPSHOT_BUILDS[-1]
    updated = stamp.replace(".", "")
    entries = "".join(
        f"      <snapshotVersion>\n        <extension>{ext}</extension>\n"
        f"        <value>{base_version}-{stamp}-{build}</value>\n"
        f"        <updated>{updated}</updated>\n      </snapshotVersion>\n"
        for ext in ("jar", "pom"))
    xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<metadata modelVersion="1.1.0">\n'
           f"  <groupId>org.cachegate</groupId>\n  <artifactId>{artifact}</artifactId>\n"
           f"  <version>{version}</version>\n  <versioning>\n    <snapshot>\n"
           f"      <timestamp>{stamp}</timestamp>\n      <buildNumber>{build}</buildNumber>\n"
           f"    </snapshot>\n    <lastUpdated>{updated}</lastUpdated>\n"
           f"    <snapshotVersions>\n{entries}    </snapshotVersions>\n  </versioning>\n"
           f"</metadata>\n")
    _maven_write(tree, f"{directory}/maven-metadata.xml", xml.encode())


# --- the whole tree -----------------------------------------------------------------

def build_fixtures(root: Path, files_base: str = "http://files.pythonhosted.org",
                   npm_base: str = "http://registry.npmjs.org") -> Fixtures:
    """Write every ecosystem's tree below ``root``; ``files_base``/``npm_base`` are the
    URL prefixes that PyPI pages and npm packuments link their files with (the real
    hosts for clients going through the gateway; the origin's ``/pypi``/``/npm`` prefix
    for clients talking to it directly)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tree = _Tree(root)
    tree.objects.extend(publish_debian(root))
    _build_alpine(tree)
    _build_pypi(tree, files_base.rstrip("/"))
    _build_npm(tree, npm_base.rstrip("/"))
    _build_maven(tree)
    lang_fixtures.build_go(tree)
    lang_fixtures.build_crates(tree)
    lang_fixtures.build_rubygems(tree)
    return Fixtures(root, files_base, npm_base, tree.objects, apt_keyring(root))


# --- real-client recipes ------------------------------------------------------------

def apt_options(tmpdir: Path, base_url: str, keyring: Path | None = None,
                proxy: str | None = None) -> list[str]:
    """Options that make ``apt-get`` use only ``tmpdir`` (state, cache, sources, status)
    and the repository at ``base_url`` (``http://127.0.0.1:P/debian/debian`` direct, or
    ``http://deb.debian.org/debian`` with ``proxy="http://127.0.0.1:GW"``).

    Signed repositories are checked against ``keyring`` (``Fixtures.apt_keyring``); without
    one the source is ``[trusted=yes]``.  The options name a config file written here;
    set ``APT_CONFIG`` to the same file (``apt_env``) to also keep the host's
    ``/etc/apt/apt.conf.d`` out (its hooks and proxies)."""
    tmpdir = Path(tmpdir)
    for sub in ("state/lists/partial", "cache/archives/partial", "etc/parts",
                "etc/sources.list.d", "etc/preferences.d", "etc/trusted.gpg.d"):
        (tmpdir / sub).mkdir(parents=True, exist_ok=True)
    (tmpdir / "state/status").touch()
    option = f"signed-by={keyring}" if keyring else "trusted=yes"
    (tmpdir / "etc/sources.list").write_text(
        f"deb [{option}] {base_url} {DEBIAN_SUITE} main\n")
    settings = {
        "Dir::State": tmpdir / "state", "Dir::State::status": tmpdir / "state/status",
        "Dir::Cache": tmpdir / "cache", "Dir::Etc": tmpdir / "etc",
        "Dir::Etc::SourceList": tmpdir / "etc/sources.list",
        "Dir::Etc::SourceParts": tmpdir / "etc/sources.list.d",
        "Dir::Etc::Parts": tmpdir / "etc/parts", "Dir::Etc::Main": "/dev/null",
        "Dir::Etc::Preferences": "/dev/null",
        "Dir::Etc::PreferencesParts": tmpdir / "etc/preferences.d",
        "Dir::Etc::Trusted": tmpdir / "etc/trusted.gpg",
        "Dir::Etc::TrustedParts": tmpdir / "etc/trusted.gpg.d",
        "Dir::Log": tmpdir, "Debug::NoLocking": "1", "APT::Sandbox::User": "root",
        "APT::Architecture": "amd64", "APT::Architectures": "amd64",
        "Acquire::Languages": "none", "Acquire::Retries": "0",
        "Acquire::http::Proxy": proxy or "DIRECT", "Acquire::http::Timeout": "20",
        "Acquire::Check-Valid-Until": "false",
    }
    lines = [f'{key} "{value}";' for key, value in settings.items()]
    clear = ["APT::Update::Post-Invoke-Success", "APT::Update::Post-Invoke",
             "DPkg::Post-Invoke", "Acquire::IndexTargets::deb::DEP-11",
             "Acquire::IndexTargets::deb::Contents-deb"]
    conf = tmpdir / "apt.conf"
    conf.write_text("".join(f"#clear {c};\n" for c in clear) + "\n".join(lines) + "\n")
    return ["-c", str(conf), "-q"]


def apt_env(tmpdir: Path) -> dict[str, str]:
    """The environment for ``apt-get`` with ``apt_options(tmpdir, ...)``: the same config
    read first, so the host's configuration parts are never read at all."""
    return {**os.environ, "APT_CONFIG": str(Path(tmpdir) / "apt.conf")}


def pip_download_args(index_url: str, dest: Path, requirements: list[str],
                      proxy: str | None = None, trusted_hosts: tuple[str, ...] = ()) -> list[str]:
    """``pip download`` of ``requirements`` (with their dependencies) from ``index_url``
    into ``dest``, with no cache and no user configuration.  Loopback index URLs need no
    ``trusted_hosts``; plain-http real names (through the gateway) do."""
    argv = [sys.executable, "-m", "pip", "download", "--isolated", "--no-cache-dir",
            "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
            "--index-url", index_url, "--dest", str(dest), "--timeout", "20", "--retries", "0"]
    for host in trusted_hosts:
        argv += ["--trusted-host", host]
    if proxy:
        argv += ["--proxy", proxy]
    return argv + list(requirements)


def npm_install_args(project: Path, registry: str, packages: list[str],
                     proxy: str | None = None) -> list[str]:
    """``npm install`` of ``packages`` into a fresh ``project`` with its own empty cache
    and user config (the machine's ``~/.npmrc`` stays out), from ``registry``."""
    project = Path(project)
    project.mkdir(parents=True, exist_ok=True)
    (project / "package.json").write_text('{"name": "cachegate-npm-check", "version": "1.0.0",'
                                          ' "private": true}\n')
    (project / "npmrc").write_text("")
    argv = ["npm", "install", "--prefix", str(project), "--registry", registry,
            "--userconfig", str(project / "npmrc"), "--cache", str(project / "npm-cache"),
            "--no-audit", "--no-fund", "--no-update-notifier", "--prefer-online",
            "--fetch-retries", "0", "--loglevel", "error", "--no-save"]
    if proxy:
        argv += ["--proxy", proxy, "--noproxy", ""]
    return argv + list(packages)


MAVEN_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin"


MAVEN_REPO = Path("/usr/share/maven-repo")
# What Debian's maven-dependency-plugin needs beyond its own Depends: its poms name
# junit 4.x (packaged as junit4) as a runtime dependency.
_MAVEN_PLUGIN_NEEDS = ("junit/junit/4.x/junit-4.x.jar",)


def maven_plugin_repo(repo: Path = MAVEN_REPO) -> tuple[Path, str] | None:
    """Debian's ``/usr/share/maven-repo`` and the maven-dependency-plugin version in it
    (Debian packages libmaven-dependency-plugin-java and junit4), or None.

    Maven Central is not reachable here, so the plugin comes from a local directory in
    repository layout.  This machine's ``~/.m2/repository`` was tried first and rejected:
    it holds poms of every dependency-plugin version but not the jars of their
    dependencies (commons-beanutils, maven-core 2.0.6, ...), so none of them resolves."""
    plugin = repo / "org/apache/maven/plugins/maven-dependency-plugin"
    if not plugin.is_dir() or not all((repo / need).exists() for need in _MAVEN_PLUGIN_NEEDS):
        return None
    versions = [p.name for p in plugin.iterdir()
                if (p / f"maven-dependency-plugin-{p.name}.jar").exists()]
    if not versions:
        return None
    return repo, max(versions, key=_maven_version_key)


def plugin_repository_settings(plugin_url: str) -> str:
    """Maven settings naming only a plugin repository (Debian's, as ``file://``): the
    artifacts come from the super POM's Central, as in an unconfigured build."""
    return ("<settings><profiles><profile><id>plugins</id><pluginRepositories>"
            f"<pluginRepository><id>central</id><url>{plugin_url}</url>"
            "<releases><updatePolicy>never</updatePolicy><checksumPolicy>ignore</checksumPolicy>"
            "</releases></pluginRepository></pluginRepositories></profile></profiles>"
            "<activeProfiles><activeProfile>plugins</activeProfile></activeProfiles></settings>\n")


def _maven_version_key(version: str) -> tuple:
    return tuple(int(p) if p.isdigit() else -1 for p in version.replace("-", ".").split("."))


def mvn_get_args(tmpdir: Path, repo_url: str, artifact: str = MAVEN_ARTIFACT,
                 proxy: tuple[str, int] | None = None) -> list[str]:
    """``mvn dependency:get`` of ``artifact`` (and its dependencies) from ``repo_url``
    (``http://127.0.0.1:P/maven/maven2`` direct, or ``http://repo1.maven.org/maven2`` with
    ``proxy=("127.0.0.1", GW)``) into an empty local repository in ``tmpdir``.

    The plugin comes from ``maven_plugin_repo()`` as a ``file://`` plugin repository
    (never proxied); the global settings are replaced by an empty file so
    Maven's default mirror that blocks plain-http repositories stays out.  Checksums of
    the fixture repository are strict (``checksumPolicy`` fail), so a wrong ``.sha1``
    fails the run; the plugin directory has none and is not checked."""
    found = maven_plugin_repo()
    if found is None:
        raise FileNotFoundError(f"no maven-dependency-plugin in {MAVEN_REPO}: apt-get install "
                                "libmaven-dependency-plugin-java junit4")
    plugins, version = found
    tmpdir = Path(tmpdir)
    tmpdir.mkdir(parents=True, exist_ok=True)
    (tmpdir / "global-settings.xml").write_text("<settings/>\n")
    (tmpdir / "settings.xml").write_text(_maven_settings(repo_url, plugins.as_uri(), proxy))
    return ["mvn", "-B", "-q", "-s", str(tmpdir / "settings.xml"),
            "-gs", str(tmpdir / "global-settings.xml"),
            f"-Dmaven.repo.local={tmpdir / 'repository'}",
            f"{MAVEN_PLUGIN}:{version}:get", f"-Dartifact={artifact}"]


def mvn_env() -> dict[str, str]:
    """The environment for ``mvn_get_args``: a JVM tuned for a short run (C1 only and
    class-data sharing start it in about two thirds of the time)."""
    opts = "-XX:+TieredCompilation -XX:TieredStopAtLevel=1 -Xshare:auto"
    return {**os.environ, "MAVEN_OPTS": f"{os.environ.get('MAVEN_OPTS', '')} {opts}".strip()}


def _maven_settings(repo_url: str, plugin_url: str, proxy: tuple[str, int] | None) -> str:
    proxies = ""
    if proxy:
        proxies = (f"  <proxies><proxy><id>gateway</id><active>true</active>"
                   f"<protocol>http</protocol><host>{proxy[0]}</host><port>{proxy[1]}</port>"
                   f"</proxy></proxies>\n")
    def policies(checksums: str, update: str) -> str:
        return "".join(f"<{kind}><enabled>true</enabled><updatePolicy>{update}</updatePolicy>"
                       f"<checksumPolicy>{checksums}</checksumPolicy></{kind}>"
                       for kind in ("releases", "snapshots"))
    return (f"<settings>\n  <offline>false</offline>\n{proxies}"
            f"  <profiles><profile><id>fixture</id>\n"
            f"    <repositories><repository><id>central</id><url>{repo_url}</url>"
            f"{policies('fail', 'always')}</repository></repositories>\n"
            f"    <pluginRepositories><pluginRepository><id>central</id>"
            f"<url>{plugin_url}</url>{policies('ignore', 'never')}</pluginRepository></pluginRepositories>\n"
            f"  </profile></profiles>\n"
            f"  <activeProfiles><activeProfile>fixture</activeProfile></activeProfiles>\n"
            f"</settings>\n")
