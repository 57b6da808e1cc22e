"""Alpine (apk): packages are immutable, ``APKINDEX.tar.gz`` is a signed snapshot."""

from __future__ import annotations

from gateway.cache.rules import Policy, Rule, Upstream
from gateway.ecosystems.apt import APT_INDEX_TTL

ROWS = (
    Upstream("alpine", ("dl-cdn.alpinelinux.org",), (
        Rule(r"/APKINDEX\.tar\.gz$", Policy.REVALIDATE, APT_INDEX_TTL),
        Rule(r"\.apk$", Policy.IMMUTABLE),
    )),
)
