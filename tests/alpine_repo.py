"""A signed Alpine repository in apk-tools' real formats, made deterministically.

``publish_alpine(root)`` writes ``v3.20/main/x86_64/`` below ``root/alpine/alpine`` (the
origin serves ``dl-cdn.alpinelinux.org/alpine/...`` from ``/alpine/alpine/...``, as
tests/fixtures.py lays out every ecosystem): a few ``.apk`` packages with dependencies
between them and the ``APKINDEX.tar.gz`` listing them, both signed as Alpine's abuild
signs them, with a test RSA key whose public half a client root carries in
``/etc/apk/keys`` (``AlpineRepo.install_key``), so ``apk`` runs without
``--allow-untrusted``.

The formats, as apk-tools 2.14 reads them (src/package.c, src/io_archive.c):

- a package is three concatenated gzip streams: the *signature* (a tar holding
  ``.SIGN.RSA.<keyname>``, an RSA PKCS#1 v1.5 signature with SHA-1 over the compressed
  bytes of the control stream), the *control* (a tar holding ``.PKGINFO``, whose
  ``datahash`` is the SHA-256 of the compressed data stream) and the *data* (the files,
  each with a PAX ``APK-TOOLS.checksum.SHA1`` header).  The first two tars have no
  end-of-archive blocks (abuild-tar --cut), so the three read as one archive;
- the index is two: the signature (over the second stream) and a tar of
  ``DESCRIPTION`` and ``APKINDEX``, whose ``C:`` field is ``Q1`` + base64 of the SHA-1
  of the package's control stream (what apk checks a downloaded package against).

The signing key is derived from a fixed seed (primes found by a seeded search), so the
whole tree is byte-for-byte the same on every run and no key is stored anywhere.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests import fixtures as fx

HOST = fx.ALPINE_HOST  # dl-cdn.alpinelinux.org
ECOSYSTEM = "alpine"
REPOSITORY = "/alpine/v3.20/main"  # below https://dl-cdn.alpinelinux.org, as /etc/apk/repositories names it
ARCH = "x86_64"
INDEX = f"{REPOSITORY}/{ARCH}/APKINDEX.tar.gz"
DESCRIPTION = b"v3.20.3-cachegate-fixture"
EPOCH = fx.EPOCH
KEY_SEED = b"cachegate alpine fixture signing key v1"

# name -> (version, depends, payload size).  ``apk add cachegate-hello`` installs all
# three: hello needs lib and data, lib needs data.
PACKAGES = {
    "cachegate-hello": ("1.0-r0", ("cachegate-lib", "cachegate-data"), 40 * 1024),
    "cachegate-lib": ("2.1-r1", ("cachegate-data",), 32 * 1024),
    "cachegate-data": ("1.0-r0", (), 24 * 1024),
}
TOP = "cachegate-hello"


# --- the signing key ---------------------------------------------------------------

_SMALL_PRIMES = [p for p in range(3, 2000) if all(p % d for d in range(2, int(p ** 0.5) + 1))]


def _probably_prime(n: int) -> bool:
    if any(n % p == 0 for p in _SMALL_PRIMES):
        return n in _SMALL_PRIMES
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in _SMALL_PRIMES[:24]:  # Miller-Rabin, 24 rounds
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def _seeded_prime(seed: bytes, bits: int, e: int) -> int:
    start = int.from_bytes(hashlib.shake_256(seed).digest(bits // 8), "big")
    candidate = start | (3 << (bits - 2)) | 1  # top two bits set: p*q has 2*bits bits
    while not (_probably_prime(candidate) and (candidate - 1) % e != 0):
        candidate += 2
    return candidate


@dataclass(frozen=True)
class SigningKey:
    name: str  # the file name in /etc/apk/keys, e.g. cachegate-fixtures-1a2b3c4d.rsa.pub
    private: rsa.RSAPrivateKey
    public_pem: bytes

    def sign(self, data: bytes) -> bytes:
        """What ``openssl dgst -sha1 -sign`` (abuild-sign) writes for ``data``."""
        return self.private.sign(data, padding.PKCS1v15(), hashes.SHA1())


@functools.lru_cache(maxsize=None)
def signing_key(seed: bytes = KEY_SEED) -> SigningKey:
    """A 2048-bit RSA key derived from ``seed``: the same key on every run."""
    e = 65537
    p = _seeded_prime(seed + b"/p", 1024, e)
    q = _seeded_prime(seed + b"/q", 1024, e)
    d = pow(e, -1, (p - 1) * (q - 1))
    numbers = rsa.RSAPrivateNumbers(p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q),
                                    rsa.rsa_crt_iqmp(p, q), rsa.RSAPublicNumbers(e, p * q))
    private = numbers.private_key()
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    name = f"cachegate-fixtures-{hashlib.sha256(public_pem).hexdigest()[:8]}.rsa.pub"
    return SigningKey(name, private, public_pem)


# --- archives ----------------------------------------------------------------------

def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9, mtime=0)


def _member(info: tarfile.TarInfo, data: bytes = b"", pax: dict[str, str] | None = None) -> bytes:
    info.mtime, info.uname, info.gname, info.uid, info.gid = EPOCH, "root", "root", 0, 0
    if pax:
        info.pax_headers = pax
        head = info.tobuf(tarfile.PAX_FORMAT)
    else:
        head = info.tobuf(tarfile.USTAR_FORMAT)
    return head + data + b"\0" * (-len(data) % 512)


def _file(name: str, data: bytes, mode: int = 0o644, checksum: bool = False) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    pax = {"APK-TOOLS.checksum.SHA1": hashlib.sha1(data).hexdigest()} if checksum else None
    return _member(info, data, pax)


def _directory(name: str) -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    return _member(info)


END = b"\0" * 1024  # a tar's end-of-archive blocks


def signature_stream(signed_stream: bytes, key: SigningKey) -> bytes:
    """The gzip stream holding ``.SIGN.RSA.<keyname>`` over ``signed_stream`` (the
    compressed bytes of the stream that follows it), no end-of-archive blocks."""
    return _gzip(_file(f".SIGN.RSA.{key.name}", key.sign(signed_stream)))


def identity(control_stream: bytes) -> str:
    """The index's ``C:`` for a package with this control stream."""
    return "Q1" + base64.b64encode(hashlib.sha1(control_stream).digest()).decode()


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    depends: tuple[str, ...]
    data: bytes  # the whole .apk
    control_stream: bytes
    installed_size: int
    files: dict[str, bytes]  # path in the root -> content

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}.apk"

    @property
    def path(self) -> str:
        """Below the host: ``/alpine/v3.20/main/x86_64/<name>-<version>.apk``."""
        return f"{REPOSITORY}/{ARCH}/{self.filename}"

    @property
    def checksum(self) -> str:
        return identity(self.control_stream)

    def index_entry(self) -> str:
        fields = [("C", self.checksum), ("P", self.name), ("V", self.version), ("A", ARCH),
                  ("S", str(len(self.data))), ("I", str(self.installed_size)),
                  ("T", f"cachegate fixture {self.name}"), ("U", "https://cachegate.invalid/"),
                  ("L", "MIT"), ("o", self.name),
                  ("m", "cachegate fixtures <fixtures@cachegate.invalid>"),
                  ("t", str(EPOCH)), ("c", "0" * 40)]
        if self.depends:
            fields.append(("D", " ".join(self.depends)))
        return "".join(f"{k}:{v}\n" for k, v in fields)


def build_package(name: str, version: str, depends: tuple[str, ...], size: int,
                  key: SigningKey, seed: str | None = None) -> Package:
    """One signed ``.apk``; ``seed`` varies the payload (a different package under the
    same name and version, for the integrity tests)."""
    payload = fx.payload(seed or f"apk320/{name}/{version}", size)
    files = {f"usr/share/{name}/payload.bin": payload,
             f"usr/share/{name}/VERSION": f"{name} {version}\n".encode()}
    if name == TOP:
        files["usr/bin/cachegate-hello"] = b"#!/bin/sh\necho 'hello from cachegate'\n"
    dirs = sorted({"/".join(p.split("/")[:i]) + "/" for p in files
                   for i in range(1, p.count("/") + 1)})
    body = b"".join(_directory(d) for d in dirs) + b"".join(
        _file(p, d, 0o755 if "/bin/" in p else 0o644, checksum=True)
        for p, d in sorted(files.items()))
    data_stream = _gzip(body + END)
    installed = sum(len(d) for d in files.values())
    pkginfo = (f"# Generated by cachegate tests/alpine_repo.py\n# using fakeroot version 1.31\n"
               f"pkgname = {name}\npkgver = {version}\npkgdesc = cachegate fixture {name}\n"
               f"url = https://cachegate.invalid/\nbuilddate = {EPOCH}\n"
               f"packager = cachegate fixtures <fixtures@cachegate.invalid>\n"
               f"size = {installed}\narch = {ARCH}\norigin = {name}\ncommit = {'0' * 40}\n"
               f"maintainer = cachegate fixtures <fixtures@cachegate.invalid>\nlicense = MIT\n"
               + "".join(f"depend = {d}\n" for d in depends)
               + f"datahash = {hashlib.sha256(data_stream).hexdigest()}\n").encode()
    control_stream = _gzip(_file(".PKGINFO", pkginfo))
    apk = signature_stream(control_stream, key) + control_stream + data_stream
    return Package(name, version, depends, apk, control_stream, installed, files)


def build_index(packages: list[Package], key: SigningKey,
                description: bytes = DESCRIPTION) -> bytes:
    """The signed ``APKINDEX.tar.gz`` listing ``packages``."""
    text = "\n".join(p.index_entry() for p in packages).encode() + b"\n"
    body = _gzip(_file("DESCRIPTION", description) + _file("APKINDEX", text) + END)
    return signature_stream(body, key) + body


# --- the repository ------------------------------------------------------------------

@dataclass
class AlpineRepo:
    root: Path  # the origin's tree (root/alpine/... is served as /alpine/...)
    key: SigningKey
    packages: dict[str, Package]
    index: fx.FixtureObject
    objects: list[fx.FixtureObject] = field(default_factory=list)

    def object(self, name: str) -> fx.FixtureObject:
        """The FixtureObject of package ``name``."""
        path = self.packages[name].path
        return next(o for o in self.objects if o.path == path)

    def install_key(self, client_root: Path) -> Path:
        """Put the public key where apk looks for trusted keys: ``/etc/apk/keys``."""
        keys = Path(client_root) / "etc/apk/keys"
        keys.mkdir(parents=True, exist_ok=True)
        (keys / self.key.name).write_bytes(self.key.public_pem)
        return keys / self.key.name

    def url(self, base: str = f"https://{HOST}") -> str:
        """The repository line for /etc/apk/repositories."""
        return base.rstrip("/") + REPOSITORY

    def installed_files(self, name: str = TOP) -> dict[str, bytes]:
        """Files ``apk add name`` leaves in a root (with its dependencies')."""
        out: dict[str, bytes] = {}
        todo = [name]
        while todo:
            package = self.packages[todo.pop()]
            out.update(package.files)
            todo += list(package.depends)
        return out


def publish_alpine(root: Path, key: SigningKey | None = None) -> AlpineRepo:
    """Write the v3.20 ``main`` repository for x86_64 below ``root/alpine``."""
    key = key or signing_key()
    tree = fx._Tree(Path(root))
    packages = {name: build_package(name, version, depends, size, key)
                for name, (version, depends, size) in PACKAGES.items()}
    objects = [tree.write(ECOSYSTEM, p.path, p.data, HOST) for p in packages.values()]
    index = tree.write(ECOSYSTEM, INDEX, build_index(list(packages.values()), key), HOST)
    return AlpineRepo(Path(root), key, packages, index, [index, *objects])


def tampered(repo: AlpineRepo, name: str) -> bytes:
    """A validly signed package with ``name``'s name and version but other content: its
    control stream (datahash) differs, so it disagrees with the index's ``C:``."""
    version, depends, size = PACKAGES[name]
    return build_package(name, version, depends, size, repo.key, seed=f"tampered/{name}").data


# --- the client side: an Alpine image's root filesystem --------------------------------

BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static
BUILD_APK = Path(__file__).resolve().parents[1] / "scripts" / "build-apk.sh"


def find_apk() -> tuple[Path | None, str]:
    """apk.static: ``$CACHEGATE_APK_STATIC`` (scripts/test.sh sets it), else what
    scripts/build-apk.sh finds cached or builds (about 10 s, once)."""
    named = os.environ.get("CACHEGATE_APK_STATIC")
    if named:
        return (Path(named), "") if os.access(named, os.X_OK) else \
            (None, f"CACHEGATE_APK_STATIC={named}: not an executable")
    try:
        done = subprocess.run([str(BUILD_APK)], capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"scripts/build-apk.sh: {e}"
    if done.returncode != 0:
        return None, f"scripts/build-apk.sh failed: {done.stderr.strip()[-500:]}"
    return Path(done.stdout.strip().splitlines()[-1]), ""


def alpine_root(path: Path, apk: Path, repo: AlpineRepo, repository: str,
                roots: list[Path], apk_ca_pem: bool = False) -> Path:
    """An Alpine image's filesystem as far as apk is concerned: ``/sbin/apk`` (the
    static build), busybox with its applet links (``/bin/sh``...) when this machine has
    it, ``repository`` in ``/etc/apk/repositories`` and the repository's key in
    ``/etc/apk/keys``, an empty installed-database, and Alpine's CA layout holding
    ``roots`` (the public roots a stock image trusts): the bundle
    ``/etc/ssl/certs/ca-certificates.crt`` with ``/etc/ssl/cert.pem`` a link to it.
    ``apk_ca_pem``: the roots also in ``/etc/apk/ca.pem``, which apk then reads alone.

    This apk.static is linked with Debian's libssl.a, whose OpenSSL directory is
    ``/usr/lib/ssl``; Alpine's is ``/etc/ssl``.  ``/usr/lib/ssl`` links to ``/etc/ssl``
    here, so the binary reads the very files Alpine's apk reads."""
    for sub in ("sbin", "bin", "tmp", "dev", "etc/apk", "etc/ssl/certs", "usr/lib", "root"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy(apk, path / "sbin/apk")
    if BUSYBOX.exists():
        shutil.copy(BUSYBOX, path / "bin/busybox")
        applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True,
                                 check=True).stdout.split()
        for applet in applets:
            link = path / "bin" / applet
            if not link.exists():
                link.symlink_to("busybox")
    (path / "etc/apk/repositories").write_text(repository + "\n")
    repo.install_key(path)
    bundle = b"".join(r.read_bytes() for r in roots)
    (path / "etc/ssl/certs/ca-certificates.crt").write_bytes(bundle)
    (path / "etc/ssl/cert.pem").symlink_to("certs/ca-certificates.crt")
    if apk_ca_pem:
        (path / "etc/apk/ca.pem").write_bytes(bundle)
    (path / "usr/lib/ssl").symlink_to("../../etc/ssl")
    (path / "etc/hosts").write_text("127.0.0.1 localhost\n")
    (path / "etc/nsswitch.conf").write_text("hosts: files dns\n")
    # As alpine-baselayout has them (``USER root`` in a Dockerfile needs them).
    (path / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                     "nobody:x:65534:65534:nobody:/:/sbin/nologin\n")
    (path / "etc/group").write_text("root:x:0:root\nnogroup:x:65533:\nnobody:x:65534:\n")
    done = subprocess.run([str(apk), "--root", str(path), "add", "--initdb", "--quiet",
                           "--repositories-file", "/dev/null"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return path


def installed(root: Path, repo: AlpineRepo, name: str = TOP) -> list[str]:
    """What is wrong with ``root`` after ``apk add name`` (empty: all is well)."""
    problems = []
    for rel, data in repo.installed_files(name).items():
        file = root / rel
        if not file.is_file() or file.read_bytes() != data:
            problems.append(f"{rel}: {'wrong content' if file.is_file() else 'missing'}")
    db = (root / "lib/apk/db/installed").read_text()
    problems += [f"{name} not in the installed database" for name in repo.packages
                 if f"\nP:{name}\n" not in "\n" + db]
    return problems
