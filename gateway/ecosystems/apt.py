"""Debian and Ubuntu (apt): catalogue rows, and index consistency within a suite.

A suite's indexes belong to one generation of its ``InRelease``.

Mirrors replace ``dists/<suite>/`` in place.  If we served a new ``InRelease`` with a
``Packages`` cached from the previous generation, apt would report "Hash Sum mismatch".
So when a suite's ``InRelease`` (or ``Release``) changes, every index of that suite stored
before the change is revalidated before it is served again.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import re
import zlib
from typing import Iterable, Iterator
from urllib.parse import unquote

from gateway.cache.rules import Digest, Ecosystem, Package, Policy, Rule, Upstream

_SUITE = re.compile(r"^(.*/dists/[^/]+/)(.*)$")
_RELEASE_FILES = frozenset({"InRelease", "Release", "Release.gpg"})
# A binary component's Packages index, plain or compressed, or its by-hash copy.
_PACKAGES = re.compile(r"^(.*?)/dists/.+/binary-[^/]+/(Packages(\.(gz|xz|bz2))?|"
                       r"by-hash/SHA256/[0-9a-f]{64})$")
_POOL = re.compile(r"/pool/.+\.u?deb$")
# pool/<component>/<p>/<source>/<name>_<version>_<arch>.deb (an epoch's ":" as %3a)
_DEB = re.compile(r"/pool/.*/([^/_]+)_([^/_]+)_([^/_.]+)\.u?deb$")


def suite_of(base_key: str) -> str | None:
    """``host/…/dists/<suite>/`` for a key inside a suite, else None."""
    m = _SUITE.match(base_key.partition("?")[0])
    return m.group(1) if m else None


def is_release_file(base_key: str) -> bool:
    """Whether the key is the suite's signed release file (its generation marker)."""
    m = _SUITE.match(base_key.partition("?")[0])
    return bool(m) and m.group(2) in _RELEASE_FILES


class Apt(Ecosystem):
    """A suite's indexes are one group; its release file is the group's marker."""

    def __init__(self, distro: str = "debian") -> None:
        self.distro = distro  # the purl namespace: pkg:deb/debian/..., pkg:deb/ubuntu/...

    def package_of(self, path: str) -> Package | None:
        m = _DEB.search(path.partition("?")[0])
        if m is None:
            return None
        name, version, arch = (unquote(part) for part in m.groups())
        return Package("deb", name, version, self.distro, (("arch", arch),))

    def index_group(self, key: str) -> str | None:
        return None if is_release_file(key) else suite_of(key)

    def marked_group(self, key: str) -> str | None:
        return suite_of(key) if is_release_file(key) else None

    # A .deb is checked against the SHA256 of the Packages index that listed it (the
    # newest stored): "never store a .deb that disagrees with its index".
    def publishes_digests(self, path: str) -> bool:
        return _POOL.search(path) is not None

    def learns_from(self, path: str) -> bool:
        return _PACKAGES.match(path) is not None

    def digests_in(self, path: str, body: bytes) -> Iterable[tuple[str, Digest]]:
        m = _PACKAGES.match(path)
        text = decompress(body) if m else None
        if text is None:
            return
        source = path.rsplit("/by-hash/", 1)[0] + "/Packages" if "/by-hash/" in path else path
        for filename, sha256 in packages_digests(text):
            yield f"{m.group(1)}/{filename}", Digest("sha256", sha256, source)


def decompress(body: bytes) -> bytes | None:
    """A Packages index's text, whatever its compression (told by its magic bytes)."""
    try:
        if body[:2] == b"\x1f\x8b":
            return gzip.decompress(body)
        if body[:6] == b"\xfd7zXZ\x00":
            return lzma.decompress(body)
        if body[:3] == b"BZh":
            return bz2.decompress(body)
    except (OSError, EOFError, lzma.LZMAError, zlib.error, ValueError):
        return None
    return body


def packages_digests(text: bytes) -> Iterator[tuple[str, str]]:
    """(Filename, SHA256) of each stanza of a Packages index."""
    filename = sha256 = None
    for line in text.splitlines() + [b""]:
        if not line.strip():
            if filename and sha256:
                yield filename, sha256
            filename = sha256 = None
        elif line.startswith(b"Filename:"):
            filename = line[9:].strip().decode("utf-8", "replace")
        elif line.startswith(b"SHA256:"):
            sha256 = line[7:].strip().decode("ascii", "replace").lower()


# Signed snapshots that mirrors replace in place: five minutes stale at most.
APT_INDEX_TTL = 300

_RULES = (
    Rule(r"/by-hash/", Policy.IMMUTABLE),
    Rule(r"/pool/.*\.(deb|udeb|dsc|tar\.[a-z0-9]+|diff\.gz|buildinfo|changes)$",
         Policy.IMMUTABLE),
    Rule(r"/dists/", Policy.REVALIDATE, APT_INDEX_TTL),
)

ROWS = (
    Upstream("debian", ("deb.debian.org", "security.debian.org", "cdn-fastly.deb.debian.org",
                        "ftp.debian.org", "debian.map.fastlydns.net"), _RULES,
             ecosystem=Apt("debian")),
    # Country mirrors (*.archive.ubuntu.com) and ports often lack HTTPS; apt verifies
    # signatures either way.
    Upstream("ubuntu", ("archive.ubuntu.com", "*.archive.ubuntu.com", "security.ubuntu.com",
                        "ports.ubuntu.com"), _RULES, "http", ecosystem=Apt("ubuntu")),
)
