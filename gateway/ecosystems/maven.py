"""Maven: release artifacts and their checksums are immutable; metadata and SNAPSHOTs
are revalidated."""

from __future__ import annotations

from gateway.cache.rules import Policy, Rule, Upstream
from gateway.ecosystems import INDEX_TTL

ROWS = (
    Upstream("maven", ("repo1.maven.org", "repo.maven.apache.org"), (
        Rule(r"/maven-metadata\.xml(\.[a-z0-9]+)?$", Policy.REVALIDATE, INDEX_TTL),
        Rule(r"-SNAPSHOT/", Policy.REVALIDATE, INDEX_TTL),
        Rule(r"\.(jar|pom|war|aar|module|zip|tar\.gz|asc|md5|sha1|sha256|sha512)$",
             Policy.IMMUTABLE),
    )),
)
