"""The catalogue's rules against real-world paths of every ecosystem."""

import pytest

from gateway.cache.rules import Policy, find_upstream
from gateway.ecosystems.catalogue import BUILTIN

I, R, P, S = Policy.IMMUTABLE, Policy.REVALIDATE, Policy.PASS, Policy.STANDARD

CASES = [
    # Debian
    ("deb.debian.org", "/debian/pool/main/c/curl/curl_7.88.1-10+deb12u5_amd64.deb", "debian", I),
    ("deb.debian.org", "/debian/dists/bookworm/InRelease", "debian", R),
    ("deb.debian.org", "/debian/dists/bookworm/main/binary-amd64/Packages.xz", "debian", R),
    ("deb.debian.org", "/debian/dists/bookworm/main/binary-amd64/by-hash/SHA256/"
                       "4f2a8d5c0e6b7a1f3e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f", "debian", I),
    ("security.debian.org", "/debian-security/dists/bookworm-security/InRelease", "debian", R),
    ("deb.debian.org", "/debian/pool/main/h/hello/hello_2.10-3.dsc", "debian", I),
    # Ubuntu mirrors
    ("archive.ubuntu.com", "/ubuntu/pool/main/b/bash/bash_5.2.21-2ubuntu4_amd64.deb", "ubuntu", I),
    ("de.archive.ubuntu.com", "/ubuntu/dists/noble-updates/main/i18n/Translation-en.xz", "ubuntu", R),
    ("ports.ubuntu.com", "/ubuntu-ports/dists/noble/InRelease", "ubuntu", R),
    # Alpine
    ("dl-cdn.alpinelinux.org", "/alpine/v3.19/main/x86_64/APKINDEX.tar.gz", "alpine", R),
    ("dl-cdn.alpinelinux.org", "/alpine/v3.19/main/x86_64/musl-1.2.4_git20230717-r4.apk", "alpine", I),
    # PyPI
    ("pypi.org", "/simple/requests/", "pypi", R),
    ("pypi.org", "/pypi/requests/json", "pypi", R),
    ("pypi.org", "/pypi/requests/2.31.0/json", "pypi", R),
    ("files.pythonhosted.org", "/packages/70/8e/0e2d847013cb52cd35b38c009bb167a1a26b2ce6cd6965bf26b47bc0bf44/"
                               "requests-2.31.0-py3-none-any.whl", "pypi", I),
    ("files.pythonhosted.org", "/packages/source/r/requests/requests-2.31.0.tar.gz", "pypi", I),
    # npm
    ("registry.npmjs.org", "/lodash", "npm", R),
    ("registry.npmjs.org", "/@types%2fnode", "npm", R),
    ("registry.npmjs.org", "/@types/node", "npm", R),
    ("registry.npmjs.org", "/lodash/-/lodash-4.17.21.tgz", "npm", I),
    ("registry.npmjs.org", "/@types/node/-/node-20.11.0.tgz", "npm", I),
    ("registry.npmjs.org", "/-/npm/v1/security/advisories/bulk", "npm", P),
    ("registry.yarnpkg.com", "/react", "npm", R),
    # Maven
    ("repo1.maven.org", "/maven2/org/slf4j/slf4j-api/2.0.9/slf4j-api-2.0.9.jar", "maven", I),
    ("repo1.maven.org", "/maven2/org/slf4j/slf4j-api/2.0.9/slf4j-api-2.0.9.pom.sha1", "maven", I),
    ("repo.maven.apache.org", "/maven2/org/slf4j/slf4j-api/maven-metadata.xml", "maven", R),
    ("repo.maven.apache.org", "/maven2/org/slf4j/slf4j-api/maven-metadata.xml.sha1", "maven", R),
    ("repo1.maven.org", "/maven2/org/ex/lib/1.1-SNAPSHOT/lib-1.1-20240101.120000-3.jar", "maven", R),
    # Go, crates.io, RubyGems, Gradle
    ("proxy.golang.org", "/golang.org/x/text/@v/v0.14.0.zip", "go", I),
    ("proxy.golang.org", "/golang.org/x/text/@v/v0.14.0.mod", "go", I),
    ("proxy.golang.org", "/golang.org/x/text/@v/list", "go", R),
    ("proxy.golang.org", "/golang.org/x/text/@latest", "go", R),
    ("static.crates.io", "/crates/serde/serde-1.0.195.crate", "crates", I),
    ("index.crates.io", "/se/rd/serde", "crates", R),
    ("index.crates.io", "/config.json", "crates", R),
    ("rubygems.org", "/gems/rake-13.1.0.gem", "rubygems", I),
    ("index.rubygems.org", "/info/rake", "rubygems", R),
    ("rubygems.org", "/specs.4.8.gz", "rubygems", R),
    ("services.gradle.org", "/distributions/gradle-8.5-bin.zip", "gradle", I),
    # no rule: the response's own headers decide
    ("deb.debian.org", "/debian/README", "debian", S),
    ("pypi.org", "/project/requests/", "pypi", S),
]


@pytest.mark.parametrize("host,path,ecosystem,policy", CASES)
def test_real_world_paths(host, path, ecosystem, policy):
    upstream = find_upstream(BUILTIN, host)
    assert upstream is not None and upstream.name == ecosystem
    assert upstream.rule_for(path).policy is policy


def test_pypi_digest_rule_only_for_content_addressed_paths():
    pypi = find_upstream(BUILTIN, "files.pythonhosted.org")
    path = "/packages/70/8e/0e2d847013cb52cd35b38c009bb167a1a26b2ce6cd6965bf26b47bc0bf44/x.whl"
    assert pypi.rule_for(path).digest == "pypi-blake2b"
    assert pypi.rule_for("/packages/source/r/requests/requests-2.31.0.tar.gz").digest == ""
    assert pypi.rule_for(path + ".metadata").digest == ""
    assert pypi.rule_for(path + ".metadata").policy is Policy.IMMUTABLE


def test_apt_indexes_are_grouped_by_suite_and_marked_by_its_release_file():
    apt = find_upstream(BUILTIN, "deb.debian.org").ecosystem
    suite = "deb.debian.org/debian/dists/bookworm/"
    assert apt.index_group(suite + "main/binary-amd64/Packages.gz") == suite
    assert apt.index_group("deb.debian.org/debian/pool/main/h/hello/hello_2.10-3_amd64.deb") is None
    assert apt.index_group(suite + "InRelease") is None
    assert apt.marked_group(suite + "InRelease") == suite
    assert apt.marked_group(suite + "main/binary-amd64/Packages.gz") is None


def test_pypi_digest_comes_from_the_path_and_other_entries_know_none():
    pypi = find_upstream(BUILTIN, "files.pythonhosted.org")
    path = "/packages/70/8e/0e2d847013cb52cd35b38c009bb167a1a26b2ce6cd6965bf26b47bc0bf44/x.whl"
    digest = pypi.ecosystem.expected_digest(pypi.rule_for(path), path)
    assert digest is not None and digest.algorithm == "blake2b-256"
    assert digest.hex == "708e0e2d847013cb52cd35b38c009bb167a1a26b2ce6cd6965bf26b47bc0bf44"
    assert pypi.ecosystem.expected_digest(pypi.rule_for(path + ".metadata"), path) is None
    npm = find_upstream(BUILTIN, "registry.npmjs.org")
    assert npm.ecosystem.expected_digest(npm.rule_for("/-/x-1.0.0.tgz"), "/-/x-1.0.0.tgz") is None


@pytest.mark.parametrize("host", ["DEB.Debian.ORG", "deb.debian.org.", "fr.archive.ubuntu.com"])
def test_host_matching_is_case_insensitive_and_wildcards_match_below(host):
    assert find_upstream(BUILTIN, host) is not None


@pytest.mark.parametrize("host", ["archive.ubuntu.com.evil.net", "evil-pypi.org", "example.com",
                                  "xarchive.ubuntu.com"])
def test_other_hosts_are_not_served(host):
    assert find_upstream(BUILTIN, host) is None


def test_upstream_url_uses_origin_prefix_or_real_host():
    pypi = find_upstream(BUILTIN, "pypi.org")
    assert pypi.upstream_url("pypi.org", "/simple/x/") == "https://pypi.org/simple/x/"
    from dataclasses import replace
    mirrored = replace(pypi, origin="http://127.0.0.1:9000/pypi")
    assert mirrored.upstream_url("pypi.org", "/simple/x/?a=1") == \
        "http://127.0.0.1:9000/pypi/simple/x/?a=1"
    debian = find_upstream(BUILTIN, "deb.debian.org")
    assert debian.upstream_url("deb.debian.org", "/debian/x") == "https://deb.debian.org/debian/x"
