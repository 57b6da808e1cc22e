"""Gradle distributions: immutable zips and their checksums."""

from __future__ import annotations

from gateway.cache.rules import Policy, Rule, Upstream

ROWS = (
    Upstream("gradle", ("services.gradle.org",), (
        Rule(r"^/distributions/[^/]+\.(zip|sha256)$", Policy.IMMUTABLE),
    )),
)
