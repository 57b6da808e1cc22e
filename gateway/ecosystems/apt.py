"""Debian and Ubuntu (apt): catalogue rows, and index consistency within a suite.

A suite's indexes belong to one generation of its ``InRelease``.

Mirrors replace ``dists/<suite>/`` in place.  If we served a new ``InRelease`` with a
``Packages`` cached from the previous generation, apt would report "Hash Sum mismatch".
So when a suite's ``InRelease`` (or ``Release``) changes, every index of that suite stored
before the change is revalidated before it is served again.
"""

from __future__ import annotations

import re

from gateway.cache.rules import Ecosystem, Policy, Rule, Upstream

_SUITE = re.compile(r"^(.*/dists/[^/]+/)(.*)$")
_RELEASE_FILES = frozenset({"InRelease", "Release", "Release.gpg"})


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

    def index_group(self, key: str) -> str | None:
        return None if is_release_file(key) else suite_of(key)

    def marked_group(self, key: str) -> str | None:
        return suite_of(key) if is_release_file(key) else None


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
                        "ftp.debian.org", "debian.map.fastlydns.net"), _RULES, ecosystem=Apt()),
    # Country mirrors (*.archive.ubuntu.com) and ports often lack HTTPS; apt verifies
    # signatures either way.
    Upstream("ubuntu", ("archive.ubuntu.com", "*.archive.ubuntu.com", "security.ubuntu.com",
                        "ports.ubuntu.com"), _RULES, "http", ecosystem=Apt()),
)
