"""Go, cargo, gem and bundler as a build container runs them: unconfigured (default
hosts proxy.golang.org, index.crates.io + static.crates.io, rubygems.org), their state in
a fresh directory, the CA trusted the way a trusted image has it: in the system bundle
``/etc/ssl/certs/ca-certificates.crt``, which all four read (Go's crypto/x509, cargo's
libcurl, Ruby's OpenSSL).  ``in_trusting_image`` bind-mounts a bundle with the CA over it
in a private mount namespace, as ``update-ca-certificates`` in the image would leave it.

The only settings: ``GOSUMDB=off`` (the checksum database cannot be faked here; see the
README for what a real build does with sum.golang.org) and ``-modcacherw`` so the test's
temporary directory can be removed.  Debian's cargo is ``/usr/bin/cargo`` (cargo-web);
a rustup cargo earlier on a developer's PATH is not the one tested.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from tests import fixtures as fx
from tests import lang_fixtures as lf
from tests.netns import SYSTEM_BUNDLE, Step, base_env

CLIENTS = ("go", "cargo", "gem", "bundle")
CARGO = "/usr/bin/cargo"  # Debian's (cargo-web); not a rustup cargo earlier on PATH
BINARIES = {"go": "go", "cargo": CARGO, "gem": "gem", "bundle": "bundle"}
PACKAGES = {"go": "golang-go", "cargo": "cargo-web", "gem": "ruby", "bundle": "ruby-bundler"}
ECOSYSTEM = {"go": "go", "cargo": "crates", "gem": "rubygems", "bundle": "rubygems"}
# The names each client asks for, left to its defaults.
DEFAULT_HOSTS = {
    "go": {lf.GO_HOST}, "cargo": {lf.CRATES_INDEX_HOST, lf.CRATES_STATIC_HOST},
    "gem": {"index.rubygems.org"}, "bundle": {"index.rubygems.org", "rubygems.org"},
}


def missing(client: str) -> str | None:
    """Why ``client`` cannot run here, or None."""
    binary = BINARIES[client]
    if shutil.which(binary) is None:
        return f"{binary} not installed (Debian package {PACKAGES[client]})"
    if client == "cargo" and shutil.which("/usr/bin/rustc") is None:
        return "/usr/bin/rustc not installed (Debian package rustc-web)"
    if client in ("gem", "bundle") and shutil.which("ruby") is None:
        return "ruby not installed"
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "unshare/mount not installed (util-linux, mount)"
    return None


def in_trusting_image(argv: list[str], bundle: Path) -> list[str]:
    """``argv`` in a private mount namespace where the system CA bundle is ``bundle``."""
    script = 'mount --bind "$0" "$1" && shift && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
            str(bundle), str(SYSTEM_BUNDLE), *argv]


def build_steps(client: str, work: Path) -> list[Step]:
    """The commands of ``client``'s build, its state below ``work`` (fresh each time)."""
    work.mkdir(parents=True, exist_ok=True)
    return _RECIPES[client](work)


def _go(work: Path) -> list[Step]:
    project = work / "app"
    project.mkdir(parents=True, exist_ok=True)
    # go 1.16: `go mod download` fetches the whole build list, so b is found only
    # through a's go.mod (a dependency the client must resolve itself).
    (project / "go.mod").write_text(f"module cachegate.example/build\n\ngo 1.16\n\n"
                                    f"require {lf.GO_MODULES[0]} {lf.GO_VERSION}\n")
    env = base_env(work / "home", GOPATH=str(work / "gopath"), GOCACHE=str(work / "gocache"),
                   GOSUMDB="off", GOFLAGS="-modcacherw")
    return [Step(["go", "mod", "download"], env, project)]


def _cargo(work: Path) -> list[Step]:
    project = work / "app"
    (project / "src").mkdir(parents=True, exist_ok=True)
    (project / "src" / "lib.rs").write_text("")
    (project / "Cargo.toml").write_text(
        '[package]\nname = "cachegate-build"\nversion = "0.1.0"\nedition = "2018"\n\n'
        f'[dependencies]\n{lf.CRATES[0]} = "1.0"\n')
    env = base_env(work / "home", CARGO_HOME=str(work / "cargo-home"),
                   CARGO_TERM_COLOR="never")
    return [Step([CARGO, "fetch"], env, project)]


def _gem(work: Path) -> list[Step]:
    env = base_env(work / "home")
    return [Step(["gem", "install", "--install-dir", str(work / "gems"), "--no-document",
                  lf.GEMS[0]], env, work)]


def _bundle(work: Path) -> list[Step]:
    project = work / "app"
    project.mkdir(parents=True, exist_ok=True)
    (project / "Gemfile").write_text(f'source "https://rubygems.org"\n\ngem "{lf.GEMS[0]}"\n')
    env = base_env(work / "home", BUNDLE_PATH=str(work / "bundle"),
                   BUNDLE_APP_CONFIG=str(project / ".bundle"),
                   BUNDLE_USER_HOME=str(work / "home" / ".bundle"))
    return [Step(["bundle", "install"], env, project)]


_RECIPES = {"go": _go, "cargo": _cargo, "gem": _gem, "bundle": _bundle}


@dataclass(frozen=True)
class Expected:
    """A file the build must leave (``pattern`` globbed below its work directory) and
    the fixture object whose bytes it must hold."""

    pattern: str
    obj: fx.FixtureObject


def expected_files(client: str, tree: fx.Fixtures) -> list[Expected]:
    """The packages each build stores, byte for byte as the origin has them."""
    if client == "go":
        return [Expected(f"gopath/pkg/mod/cache/download/{m}/@v/{lf.GO_VERSION}.{ext}",
                         tree.get("go", f"/{m}/@v/{lf.GO_VERSION}.{ext}"))
                for m in lf.GO_MODULES for ext in ("mod", "zip")]
    if client == "cargo":
        return [Expected(f"cargo-home/registry/cache/index.crates.io-*/{n}-{lf.CRATE_VERSION}.crate",
                         tree.get("crates", f"/crates/{n}/{lf.CRATE_VERSION}/download"))
                for n in lf.CRATES]
    where = "gems/cache" if client == "gem" else "bundle/ruby/*/cache"
    return [Expected(f"{where}/{g}-{lf.GEM_VERSION}.gem",
                     tree.get("rubygems", f"/gems/{g}-{lf.GEM_VERSION}.gem"))
            for g in lf.GEMS]


def key_origin_paths(client: str, tree: fx.Fixtures) -> list[str]:
    """Origin paths a cold build must have caused: each package and its metadata."""
    paths = [e.obj.origin_path for e in expected_files(client, tree)]
    if client == "cargo":
        paths += [f"/crates{lf.crate_index_path(n)}" for n in lf.CRATES]
    if client == "gem":  # RubyGems 3.3 reads the Marshal specs, not the compact index
        paths += [f"/rubygems/quick/Marshal.4.8/{g}-{lf.GEM_VERSION}.gemspec.rz" for g in lf.GEMS]
    if client == "bundle":
        paths += [f"/rubygems/info/{g}" for g in lf.GEMS]
    return paths
