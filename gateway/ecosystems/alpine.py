"""Alpine (apk): packages are immutable, ``APKINDEX.tar.gz`` is a signed snapshot, and
each package is checked against the index that listed it.

An index entry's ``C:`` is ``Q1`` + base64 of the SHA-1 of the package's *control*
gzip stream (an ``.apk`` is concatenated gzip streams: signature, control, data), which
is what apk itself checks a downloaded package against (apk-tools src/package.c,
``APK_SIGN_VERIFY_IDENTITY``).  When cachegate stores an ``APKINDEX.tar.gz``, the
integrity engine (gateway/cache/integrity.py) records the ``C:`` of every package it
lists in that directory (``digests_in``); a later fill of one of them is checked once its
last byte is in (``file_digest``: the SHA-1 of the control stream of the file), and a
body that disagrees is never stored nor served whole.  A package no stored index lists
is stored "unverified".
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import io
import re
import tarfile
import zlib
from typing import Callable, Iterator

from gateway.cache.rules import Digest, Ecosystem, Package, Policy, Rule, Upstream
from gateway.ecosystems.apt import APT_INDEX_TTL

APK_IDENTITY = "apk-control-sha1"  # the algorithm of an index's C: digests
_INDEX = re.compile(r"^(.*/)APKINDEX\.tar\.gz$")
MAX_INDEX_BYTES = 64 * 2**20  # decompressed: Alpine's largest (community) is ~15 MB
_SIGNATURE_PREFIX = b".SIGN."
_READ = 64 * 1024
# <branch>/<repo>/<arch>/<name>-<version>-r<N>.apk (a name may hold "-" and digits)
_APK = re.compile(r"/([^/]+)/([^/]+)-([0-9][^/-]*-r[0-9]+)\.apk$")


def q1_to_hex(checksum: str) -> str | None:
    """The hex SHA-1 of a ``Q1<base64>`` checksum, or None for another form."""
    if not checksum.startswith("Q1"):
        return None
    try:
        raw = base64.b64decode(checksum[2:], validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == 20 else None


def parse_apkindex(text: str) -> dict[str, str]:
    """``{"<name>-<version>.apk": hex sha1}`` from an APKINDEX's text."""
    out: dict[str, str] = {}
    for block in text.split("\n\n"):
        fields = dict(line.split(":", 1) for line in block.splitlines() if line[1:2] == ":")
        name, version, checksum = fields.get("P"), fields.get("V"), fields.get("C")
        sha1 = q1_to_hex(checksum) if checksum else None
        if name and version and sha1:
            out[f"{name}-{version}.apk"] = sha1
    return out


def read_index(body: bytes) -> dict[str, str]:
    """The package checksums an ``APKINDEX.tar.gz`` body lists ({} if unreadable)."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(body)) as stream:
            data = stream.read(MAX_INDEX_BYTES + 1)
        if len(data) > MAX_INDEX_BYTES:
            return {}
        # The signature's tar has no end-of-archive blocks: the members read as one tar.
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                if member.name == "APKINDEX" and member.isfile():
                    text = tar.extractfile(member).read()  # type: ignore[union-attr]
                    return parse_apkindex(text.decode("utf-8", "replace"))
    except (OSError, EOFError, tarfile.TarError, zlib.error):
        return {}
    return {}


class ControlStreamSha1:
    """A hasher (``update``/``hexdigest``) of the SHA-1 apk identifies a package by: that
    of its control gzip stream, the first one that is not a signature."""

    def __init__(self) -> None:
        self._members = [hashlib.sha1(), hashlib.sha1()]  # the first two streams
        self._first_bytes = b""  # the first stream's first file name: a signature?
        self._index = 0
        self._inflate = zlib.decompressobj(31)
        self._broken = False

    def update(self, data: bytes) -> None:
        while data and self._index < 2 and not self._broken:
            try:  # inflated a bounded piece at a time, only to find where the stream ends
                self._keep(self._inflate.decompress(data, _READ))
                while self._inflate.unconsumed_tail and not self._inflate.eof:
                    self._keep(self._inflate.decompress(self._inflate.unconsumed_tail, _READ))
            except zlib.error:
                self._broken = True
                return
            if not self._inflate.eof:
                self._members[self._index].update(data)
                return
            rest = self._inflate.unused_data
            self._members[self._index].update(data[:len(data) - len(rest)])
            self._index += 1
            self._inflate = zlib.decompressobj(31)
            data = rest

    @property
    def complete(self) -> bool:
        """Whether the streams that decide the digest have all been read."""
        return self._index >= 2 or self._broken

    def _keep(self, inflated: bytes) -> None:
        if self._index == 0 and len(self._first_bytes) < len(_SIGNATURE_PREFIX):
            self._first_bytes += inflated[:len(_SIGNATURE_PREFIX)]

    def hexdigest(self) -> str:
        if self._broken or self._index == 0:
            return "not an apk package"
        signed = self._first_bytes[:len(_SIGNATURE_PREFIX)] == _SIGNATURE_PREFIX
        if signed and self._index < 2:
            return "no control stream"
        return self._members[1 if signed else 0].hexdigest()


def control_stream_sha1(file: str) -> str:
    """``ControlStreamSha1`` of a complete ``.apk`` file: reads only up to the end of
    its control stream."""
    hasher = ControlStreamSha1()
    with open(file, "rb") as body:
        while not hasher.complete and (chunk := body.read(_READ)):
            hasher.update(chunk)
    return hasher.hexdigest()


class Alpine(Ecosystem):
    """Packages are checked against the ``C:`` of the stored index that lists them."""

    def publishes_digests(self, path: str) -> bool:
        return path.endswith(".apk")

    def learns_from(self, path: str) -> bool:
        return _INDEX.match(path) is not None

    def digests_in(self, path: str, body: bytes) -> Iterator[tuple[str, Digest]]:
        m = _INDEX.match(path)
        if m is None:
            return
        for filename, sha1 in read_index(body).items():
            yield m.group(1) + filename, Digest(APK_IDENTITY, sha1, path, control_stream_sha1)

    def file_digest(self, algorithm: str, path: str) -> Callable[[str], str] | None:
        return control_stream_sha1 if algorithm == APK_IDENTITY else None

    def package_of(self, path: str) -> Package | None:
        m = _APK.search(path.partition("?")[0])
        if m is None:
            return None
        arch, name, version = m.groups()
        return Package("apk", name, version, "alpine", (("arch", arch),))


ROWS = (
    Upstream("alpine", ("dl-cdn.alpinelinux.org",), (
        Rule(r"/APKINDEX\.tar\.gz$", Policy.REVALIDATE, APT_INDEX_TTL),
        Rule(r"\.apk$", Policy.IMMUTABLE),
    ), ecosystem=Alpine()),
)
