"""The lockfile parsers as pure functions: text in, plan out (tests/ops/test_warm.py runs
them against a gateway with lockfiles made from the fixture tree)."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from gateway.ecosystems.go import escape
from gateway.ecosystems.lockfiles import LockfileError, detect, parse
from gateway.ecosystems.npm import sri_digest

SHA = "ab" * 32


@pytest.mark.parametrize("name, fmt", [
    ("package-lock.json", "package-lock"), ("npm-shrinkwrap.json", "package-lock"),
    ("yarn.lock", "yarn"), ("pnpm-lock.yaml", "pnpm"), ("requirements-dev.txt", "requirements"),
    ("poetry.lock", "poetry"), ("uv.lock", "uv"), ("Cargo.lock", "cargo"), ("go.sum", "go.sum"),
    ("Gemfile.lock", "gemfile"), ("build.uris", "apt"), ("deps.gav", "maven")])
def test_the_format_is_told_by_the_file_name(name, fmt):
    assert detect(Path(name)) == fmt


def test_an_unknown_name_is_a_usage_error():
    with pytest.raises(LockfileError, match="--format"):
        detect(Path("deps.lockish"))


def test_package_lock_skips_links_and_non_registry_sources():
    text = ('{"lockfileVersion": 3, "packages": {"": {}, '
            '"node_modules/a": {"version": "1.0.0", "resolved": "https://registry.npmjs.org/a/-/a-1.0.0.tgz", '
            '"integrity": "sha1-AAAAAAAAAAAAAAAAAAAAAAAAAAA= sha512-' + "A" * 86 + '=="}, '
            '"node_modules/b": {"link": true}, '
            '"node_modules/c": {"version": "1.0.0", "resolved": "git+ssh://git@example/c.git"}}}')
    a, b, c = parse(Path("package-lock.json"), text)
    assert a.url.endswith("/a-1.0.0.tgz") and a.digest.algorithm == "sha512"  # strongest
    assert b.skipped and c.skipped.startswith("not from a registry")


def test_yarn_v1_takes_the_sha1_fragment_when_there_is_no_integrity():
    sha1 = hashlib.sha1(b"x").hexdigest()
    text = f'"a@^1.0.0", a@~1.0:\n  version "1.0.1"\n  resolved "https://registry.yarnpkg.com/a/-/a-1.0.1.tgz#{sha1}"\n'
    [item] = parse(Path("yarn.lock"), text)
    assert item.name == "a@1.0.1" and item.url == "https://registry.yarnpkg.com/a/-/a-1.0.1.tgz"
    assert (item.digest.algorithm, item.digest.hex) == ("sha1", sha1)
    with pytest.raises(LockfileError, match="Berry"):
        parse(Path("yarn.lock"), "__metadata:\n  version: 6\n")


def test_pnpm_v6_and_v9_keys_and_scoped_tarball_urls():
    sri = "sha512-" + base64.b64encode(b"\1" * 64).decode()
    text = (f"lockfileVersion: '6.0'\n\npackages:\n\n  /@s/p@2.0.0:\n"
            f"    resolution: {{integrity: {sri}}}\n    dev: false\n\n"
            f"  q@1.0.0(react@18.0.0):\n    resolution: {{integrity: {sri}}}\n")
    p, q = parse(Path("pnpm-lock.yaml"), text)
    assert p.url == "https://registry.npmjs.org/@s/p/-/p-2.0.0.tgz"
    assert q.url == "https://registry.npmjs.org/q/-/q-1.0.0.tgz"
    assert p.digest == sri_digest(sri, "lockfile")


def test_requirements_resolve_through_the_index_and_skip_what_cannot_be_checked():
    text = (f"--index-url https://pypi.org/simple\nFoo_Bar==1.0 \\\n    --hash=sha256:{SHA}\n"
            "plain==2.0\nloose>=1\n"
            f"direct @ https://example.org/direct-1.0.whl --hash=sha256:{SHA}\n")
    foo, plain, loose, direct = parse(Path("requirements.txt"), text)
    assert foo.resolve.url == "https://pypi.org/simple/foo-bar/"
    page = ('{"files": [{"filename": "f.whl", "url": "../../packages/f.whl", '
            f'"hashes": {{"sha256": "{SHA}"}}, "core-metadata": {{"sha256": "{"cd" * 32}"}}}},'
            '{"filename": "g.whl", "url": "https://files.example/g.whl", "hashes": {"sha256": "00"}}]}')
    wheel, metadata = foo.resolve.pick(page.encode())
    assert wheel.url == "https://pypi.org/packages/f.whl" and wheel.digest.hex == SHA
    assert metadata.url.endswith("f.whl.metadata") and metadata.digest.hex == "cd" * 32
    assert plain.skipped.startswith("no --hash") and loose.skipped
    assert direct.url == "https://example.org/direct-1.0.whl" and direct.digest.hex == SHA


def test_cargo_lock_skips_workspace_members_and_git_sources():
    text = ('[[package]]\nname = "app"\nversion = "0.1.0"\n\n'
            '[[package]]\nname = "serde"\nversion = "1.0.0"\n'
            'source = "registry+https://github.com/rust-lang/crates.io-index"\n'
            f'checksum = "{SHA}"\n\n[[package]]\nname = "g"\nversion = "0.1.0"\n'
            'source = "git+https://example/g#abc"\n')
    config, index, serde, git = parse(Path("Cargo.lock"), text)
    assert config.url == "https://index.crates.io/config.json" and config.phase == 0
    assert index.url == "https://index.crates.io/se/rd/serde" and index.phase == 0
    assert serde.url == "https://static.crates.io/crates/serde/1.0.0/download"
    assert serde.digest.hex == SHA and git.skipped.startswith("not from crates.io")


def test_go_sum_escapes_capitals_and_a_go_mod_beside_it_limits_the_zips(tmp_path):
    (tmp_path / "go.mod").write_text("module m\n\nrequire (\n\tgithub.com/A/b v1.0.0\n)\n")
    text = ("github.com/A/b v1.0.0 h1:aaa=\ngithub.com/A/b v1.0.0/go.mod h1:bbb=\n"
            "example.com/unused v0.1.0/go.mod h1:ccc=\nexample.com/unused v0.1.0 h1:ddd=\n")
    urls = [i.url for i in parse(tmp_path / "go.sum", text)]
    assert urls == ["https://proxy.golang.org/github.com/!a/b/@v/v1.0.0.info",
                    "https://proxy.golang.org/github.com/!a/b/@v/v1.0.0.zip",
                    "https://proxy.golang.org/github.com/!a/b/@v/v1.0.0.mod",
                    "https://proxy.golang.org/example.com/unused/@v/v0.1.0.mod"]
    assert escape("github.com/BurntSushi/toml") == "github.com/!burnt!sushi/toml"


def test_gemfile_lock_takes_checksums_and_skips_git_and_path_gems():
    text = ("GIT\n  remote: https://example/g.git\n  specs:\n    g (0.1.0)\n\n"
            "GEM\n  remote: https://rubygems.org/\n  specs:\n    rack (3.0.0)\n"
            "    nokogiri (1.16.0-x86_64-linux)\n\nCHECKSUMS\n"
            f"  rack (3.0.0) sha256={SHA}\n")
    g, rack, nokogiri = parse(Path("Gemfile.lock"), text)
    assert g.skipped == "from a GIT source"
    assert rack.url == "https://rubygems.org/gems/rack-3.0.0.gem" and rack.digest.hex == SHA
    assert nokogiri.url.endswith("nokogiri-1.16.0-x86_64-linux.gem") and nokogiri.digest is None


def test_apt_print_uris_and_maven_coordinates():
    text = (f"'http://deb.debian.org/debian/pool/main/h/h/h_1_all.deb' h_1_all.deb 10 SHA256:{SHA}\n"
            "'http://deb.debian.org/debian/pool/main/o/o/o_1_all.deb' o_1_all.deb 10 MD5Sum:00ff\n")
    new, old = parse(Path("x.uris"), text)
    assert new.digest.algorithm == "sha256" and old.digest.algorithm == "md5"
    items = parse(Path("x.gav"), "g.h:a:1\ng:b:war:tests:2\n")
    assert [i.url for i in items if i.phase == 0][0].endswith("/g/h/a/1/a-1.pom.sha1")
    assert items[-1].url == "https://repo1.maven.org/maven2/g/b/2/b-2-tests.war"
    with pytest.raises(LockfileError, match="group:artifact"):
        parse(Path("x.gav"), "just-a-name\n")
