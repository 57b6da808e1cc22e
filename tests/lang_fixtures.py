"""The fixture trees of the language ecosystems whose clients fetch by themselves: a Go
module proxy, a crates.io sparse index with its crate files, a RubyGems compact index
with its gems.  tests/fixtures.py calls ``build_go``, ``build_crates`` and
``build_rubygems`` with its ``_Tree``; each writes what the real hosts serve, at the same
paths, below ``root/<ecosystem>``::

    proxy.golang.org/<module>/@v/list, .info, .mod, .zip   ->  root/go/<module>/@v/...
    index.crates.io/config.json, /3/c/cgf, /ca/ch/<name>    ->  root/crates/...
    static.crates.io/crates/<name>/<version>/download        ->  root/crates/crates/...
    rubygems.org (and index.rubygems.org)/versions, /info/<gem>, /gems/<gem>-<v>.gem,
        /quick/Marshal.4.8/<gem>-<v>.gemspec.rz, specs.4.8.gz  ->  root/rubygems/...

Each has two packages, the first depending on the second, so a client must read the
first one's metadata to find the second.  Everything is deterministic: zips and tars
carry fixed dates, gzip no timestamp, payloads come from the same hash stream as the
other ecosystems'.  The gems are built by ``gem build`` (Ruby's own format, checksums
and all) under SOURCE_DATE_EPOCH and cached by recipe hash; without ``gem`` the RubyGems
tree is left out and its tests skip.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

GO_HOST = "proxy.golang.org"
CRATES_INDEX_HOST = "index.crates.io"
CRATES_STATIC_HOST = "static.crates.io"
RUBYGEMS_HOST = "rubygems.org"

# Module paths need a dot in their first element; .example never resolves anywhere.
GO_MODULES = ("cachegate.example/fixture/a", "cachegate.example/fixture/b")  # a requires b
GO_VERSION = "v1.0.0"
GO_SUMDB_SUPPORTED = "/sumdb/sum.golang.org/supported"
CRATES = ("cachegate-fixture", "cgf")  # the first depends on the second (a 3-letter name:
CRATE_VERSION = "1.0.0"                # the index's /3/c/cgf form besides /ca/ch/<name>)
GEMS = ("cachegate-fixture", "cachegate-fixture-dep")  # the first depends on the second
GEM_VERSION = "1.0.0"

CACHE = Path(os.environ.get("CACHEGATE_TEST_CACHE", "/var/cache/cachegate-tests"))
_ISO = "2024-02-10T10:00:00Z"


def _fx():  # type: ignore[no-untyped-def]
    """tests/fixtures.py (imported late: it imports this module)."""
    try:
        from tests import fixtures
    except ImportError:
        import fixtures  # type: ignore[no-redef]
    return fixtures


# --- Go module proxy -----------------------------------------------------------------

def _go_mod(module: str, requires: tuple[str, ...]) -> bytes:
    text = f"module {module}\n\ngo 1.16\n"
    if requires:
        text += "\nrequire (\n" + "".join(f"\t{r} {GO_VERSION}\n" for r in requires) + ")\n"
    return text.encode()


def _go_zip(module: str, mod: bytes, requires: tuple[str, ...]) -> bytes:
    """A module zip as golang.org/x/mod/zip makes one: every file below
    ``<module>@<version>/``, go.mod identical to the ``.mod`` file."""
    fx = _fx()
    name = module.rsplit("/", 1)[1]
    imports = "".join(f'import _ "{r}"\n' for r in requires)
    files = {
        "go.mod": mod,
        f"{name}.go": (f"// Package {name} is a cachegate test fixture.\npackage {name}\n\n"
                       f"{imports}\n// Name is this module's path.\n"
                       f'const Name = "{module}"\n').encode(),
        "LICENSE": b"Public domain test fixture.\n",
        "payload.bin": fx.payload(f"go/{module}/{GO_VERSION}", 48 * 1024),
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for rel, data in files.items():
            zf.writestr(zipfile.ZipInfo(f"{module}@{GO_VERSION}/{rel}", fx._ZIP_DATE), data)
    return buf.getvalue()


def build_go(tree) -> None:  # type: ignore[no-untyped-def]
    """``/<module>/@v/{list,<v>.info,<v>.mod,<v>.zip}`` and ``/<module>/@latest``."""
    for index, module in enumerate(GO_MODULES):
        requires = GO_MODULES[index + 1:index + 2]
        mod = _go_mod(module, requires)
        info = json.dumps({"Version": GO_VERSION, "Time": _ISO}).encode() + b"\n"
        base = f"/{module}/@v"
        tree.write("go", f"{base}/list", f"{GO_VERSION}\n".encode(), GO_HOST)
        tree.write("go", f"{base}/{GO_VERSION}.info", info, GO_HOST)
        tree.write("go", f"{base}/{GO_VERSION}.mod", mod, GO_HOST)
        tree.write("go", f"{base}/{GO_VERSION}.zip", _go_zip(module, mod, requires), GO_HOST)
        tree.write("go", f"/{module}/@latest", info, GO_HOST)
    # proxy.golang.org also serves the checksum database: go asks this first (a 200 means
    # "look up sums through me") and never contacts sum.golang.org itself then.  The
    # database's lookups and tiles are signed with sum.golang.org's key, so none is here.
    tree.write("go", GO_SUMDB_SUPPORTED, b"", GO_HOST)


# --- crates.io sparse index ----------------------------------------------------------

CRATES_CONFIG = {"dl": f"https://{CRATES_STATIC_HOST}/crates", "api": "https://crates.io"}


def crate_index_path(name: str) -> str:
    """Where the sparse index keeps ``name`` (cargo's ``make_dep_path``)."""
    name = name.lower()
    if len(name) <= 2:
        return f"/{len(name)}/{name}"
    if len(name) == 3:
        return f"/3/{name[0]}/{name}"
    return f"/{name[:2]}/{name[2:4]}/{name}"


def _crate(name: str, dependency: str | None) -> bytes:
    """``<name>-<version>.crate``: a gzipped tar of the package as ``cargo package``
    leaves it (its normalised Cargo.toml, the original, the sources)."""
    fx = _fx()
    deps = f'\n[dependencies.{dependency}]\nversion = "1.0"\n' if dependency else ""
    manifest = (f'[package]\nedition = "2018"\nname = "{name}"\nversion = "{CRATE_VERSION}"\n'
                f'description = "cachegate test fixture"\nlicense = "MIT"\n{deps}').encode()
    root = f"{name}-{CRATE_VERSION}"
    members = [(f"{root}/Cargo.toml", manifest), (f"{root}/Cargo.toml.orig", manifest),
               (f"{root}/src/lib.rs", f"//! {name}: a cachegate test fixture.\n".encode()),
               (f"{root}/payload.bin", fx.payload(f"crates/{name}/{CRATE_VERSION}", 40 * 1024))]
    return fx._gzip(fx._tar(members))


def build_crates(tree) -> None:  # type: ignore[no-untyped-def]
    """config.json, one index file per crate (one JSON line per version, ``cksum`` the
    sha256 of the .crate), the .crate at both of static.crates.io's paths (cargo asks
    ``/crates/<name>/<version>/download``, since config.json's ``dl`` has no template)."""
    tree.write("crates", "/config.json", json.dumps(CRATES_CONFIG).encode(), CRATES_INDEX_HOST)
    for index, name in enumerate(CRATES):
        dependency = CRATES[index + 1] if index + 1 < len(CRATES) else None
        data = _crate(name, dependency)
        deps = [{"name": dependency, "req": "^1.0", "features": [], "optional": False,
                 "default_features": True, "target": None, "kind": "normal"}] if dependency else []
        entry = {"name": name, "vers": CRATE_VERSION, "deps": deps,
                 "cksum": hashlib.sha256(data).hexdigest(), "features": {}, "yanked": False}
        tree.write("crates", crate_index_path(name),
                   json.dumps(entry, separators=(",", ":")).encode() + b"\n", CRATES_INDEX_HOST)
        tree.write("crates", f"/crates/{name}/{CRATE_VERSION}/download", data, CRATES_STATIC_HOST)
        tree.write("crates", f"/crates/{name}/{name}-{CRATE_VERSION}.crate", data,
                   CRATES_STATIC_HOST)


# --- RubyGems ------------------------------------------------------------------------

def _gemspec(name: str, dependency: str | None) -> str:
    dep = f'  s.add_runtime_dependency "{dependency}", ">= 1.0"\n' if dependency else ""
    return (f'Gem::Specification.new do |s|\n  s.name = "{name}"\n  s.version = "{GEM_VERSION}"\n'
            f'  s.summary = "cachegate test fixture"\n  s.authors = ["cachegate fixtures"]\n'
            f'  s.license = "MIT"\n  s.required_ruby_version = ">= 2.0"\n'
            f'  s.files = ["lib/{name.replace("-", "_")}.rb", "data/payload.bin"]\n{dep}end\n')


# The Marshal files gem install reads besides the compact index: each gem's spec
# (quick/Marshal.4.8/*.gemspec.rz) and the full indexes it falls back to.
_RUBY_INDEXES = r"""
require "rubygems/package"
require "zlib"
out = ARGV.shift
specs = ARGV.map { |path| Gem::Package.new(path).spec }
specs.each do |spec|
  File.binwrite(File.join(out, "#{spec.full_name}.gemspec.rz"), Gem.deflate(Marshal.dump(spec)))
end
tuples = specs.map { |s| [s.name, s.version, s.platform.to_s] }.sort
{"specs.4.8.gz" => tuples, "latest_specs.4.8.gz" => tuples, "prerelease_specs.4.8.gz" => []}.each do |file, list|
  io = StringIO.new
  gz = Zlib::GzipWriter.new(io)
  gz.mtime = 1
  gz.write(Marshal.dump(list))
  gz.close
  File.binwrite(File.join(out, file), io.string)
end
"""


def _gem_recipe() -> str:
    fx = _fx()
    parts = [_RUBY_INDEXES, str(fx.EPOCH)] + [_gemspec(n, d) for n, d in _gem_pairs()]
    version = subprocess.run(["gem", "--version"], capture_output=True, text=True).stdout
    return hashlib.sha256("\n".join(parts + [version]).encode()).hexdigest()[:16]


def _gem_pairs() -> list[tuple[str, str | None]]:
    return [(name, GEMS[i + 1] if i + 1 < len(GEMS) else None) for i, name in enumerate(GEMS)]


def _build_gems(out: Path) -> None:
    """``gem build`` each gem into ``out``, then the Marshal files beside them."""
    fx = _fx()
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(fx.EPOCH), "HOME": str(out)}
    built = []
    for name, dependency in _gem_pairs():
        with tempfile.TemporaryDirectory(prefix="cg-gem-") as tmp:
            src = Path(tmp)
            (src / "lib").mkdir()
            (src / "data").mkdir()
            (src / "lib" / f"{name.replace('-', '_')}.rb").write_text(
                f"# {name}: a cachegate test fixture\nmodule CachegateFixture; end\n")
            (src / "data" / "payload.bin").write_bytes(
                fx.payload(f"rubygems/{name}/{GEM_VERSION}", 40 * 1024))
            (src / f"{name}.gemspec").write_text(_gemspec(name, dependency))
            _run(["gem", "build", f"{name}.gemspec", "--output",
                  str(out / f"{name}-{GEM_VERSION}.gem")], env, src)
        built.append(str(out / f"{name}-{GEM_VERSION}.gem"))
    _run(["ruby", "-e", _RUBY_INDEXES, str(out), *built], env, out)


def _run(argv: list[str], env: dict[str, str], cwd: Path) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:2])} failed ({done.returncode}): {done.stderr}")


def _gem_files() -> Path:
    """The built gems and Marshal files, cached under CACHE by recipe (or in a fresh
    temporary directory when CACHE is not writable)."""
    try:
        target = CACHE / f"rubygems-fixtures-{_gem_recipe()}"
        if (target / "done").exists():
            return target
        CACHE.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix="rubygems-fixtures.", dir=CACHE))
        partial.chmod(0o755)  # readable by runs as another user
    except OSError:
        partial = Path(tempfile.mkdtemp(prefix="cg-rubygems-"))
        _build_gems(partial)
        return partial
    try:
        _build_gems(partial)
        (partial / "done").touch()
        os.replace(partial, target)
    except OSError:  # another process put it there first
        shutil.rmtree(partial, ignore_errors=True)
    return target


def _info_line(spec_deps: str, checksum: str) -> str:
    return f"{GEM_VERSION} {spec_deps}|checksum:{checksum},ruby:>= 2.0\n"


def build_rubygems(tree) -> None:  # type: ignore[no-untyped-def]
    """The compact index (``/versions``, ``/info/<gem>``, ``/names``), the gems, their
    Marshal specs and the full Marshal indexes.  Nothing without ``gem``."""
    if shutil.which("gem") is None or shutil.which("ruby") is None:
        return
    built = _gem_files()
    versions = ["created_at: 2024-02-10T10:00:00+00:00", "---"]
    for name, dependency in _gem_pairs():
        gem = (built / f"{name}-{GEM_VERSION}.gem").read_bytes()
        tree.write("rubygems", f"/gems/{name}-{GEM_VERSION}.gem", gem, RUBYGEMS_HOST)
        spec = (built / f"{name}-{GEM_VERSION}.gemspec.rz").read_bytes()
        tree.write("rubygems", f"/quick/Marshal.4.8/{name}-{GEM_VERSION}.gemspec.rz", spec,
                   RUBYGEMS_HOST)
        deps = f"{dependency}:>= 1.0" if dependency else ""
        info = ("---\n" + _info_line(deps, hashlib.sha256(gem).hexdigest())).encode()
        tree.write("rubygems", f"/info/{name}", info, RUBYGEMS_HOST)
        versions.append(f"{name} {GEM_VERSION} {hashlib.md5(info).hexdigest()}")
    tree.write("rubygems", "/versions", ("\n".join(versions) + "\n").encode(), RUBYGEMS_HOST)
    # gem install asks HEAD index.rubygems.org/ first: a 200 there means "compact index".
    tree.write_variant("rubygems", "/", "index.html", b"<!DOCTYPE html>\n<p>rubygems.org "
                       b"compact index (cachegate fixture)</p>\n", RUBYGEMS_HOST, "text/html")
    tree.write("rubygems", "/names", ("---\n" + "\n".join(sorted(GEMS)) + "\n").encode(),
               RUBYGEMS_HOST)
    for index in ("specs.4.8.gz", "latest_specs.4.8.gz", "prerelease_specs.4.8.gz"):
        tree.write("rubygems", f"/{index}", (built / index).read_bytes(), RUBYGEMS_HOST)
