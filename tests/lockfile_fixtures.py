"""Lockfiles made from the fixture tree, one per format ``cachegate warm`` reads, each
naming real fixture objects with their real digests (the hashes are computed here from
the files, independently of gateway/ecosystems).  ``lockfiles(fixtures, dir)`` writes
them and says which origin paths a warm must fetch: the artifacts, once each, and the
indexes read to resolve names without URLs."""

from __future__ import annotations

import base64
import hashlib
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.lang_fixtures import crate_index_path

NPM = "http://registry.npmjs.org"
FILES = "http://files.pythonhosted.org"


@dataclass
class LockCase:
    path: Path
    artifacts: list[str]  # origin paths fetched once each
    indexes: list[str] = field(default_factory=list)  # origin paths read to resolve


def _sri(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def go_h1(files: list[tuple[str, bytes]]) -> str:
    """dirhash Hash1, written here from its definition (golang.org/x/mod sumdb/dirhash)."""
    lines = "".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in sorted(files))
    return "h1:" + base64.b64encode(hashlib.sha256(lines.encode()).digest()).decode()


def _npm(fx, d: Path) -> dict[str, LockCase]:  # type: ignore[no-untyped-def]
    pkgs = {"@cachegate/fixture": ("1.0.0", "/@cachegate/fixture/-/fixture-1.0.0.tgz"),
            "cachegate-fixture": ("1.1.0", "/cachegate-fixture/-/cachegate-fixture-1.1.0.tgz")}
    data = {n: fx.get("npm", p).file.read_bytes() for n, (_, p) in pkgs.items()}
    artifacts = [f"/npm{p}" for _, p in pkgs.values()]
    root = {"name": "warm-check", "version": "1.0.0",
            "dependencies": {"@cachegate/fixture": "1.0.0"}}
    v3 = {"name": "warm-check", "version": "1.0.0", "lockfileVersion": 3, "requires": True,
          "packages": {"": root, **{f"node_modules/{n}": {
              "version": v, "resolved": NPM + p, "integrity": _sri(data[n]), "license": "MIT",
              **({"dependencies": {"cachegate-fixture": "^1.0.0"}} if n.startswith("@")
                 else {})} for n, (v, p) in pkgs.items()}}}
    v1 = {"name": "warm-check", "version": "1.0.0", "lockfileVersion": 1, "requires": True,
          "dependencies": {n: {"version": v, "resolved": NPM + p, "integrity": _sri(data[n])}
                           for n, (v, p) in pkgs.items()}}
    (d / "v3").mkdir()
    (d / "v3/package-lock.json").write_text(json.dumps(v3, indent=2))
    (d / "v3/package.json").write_text(json.dumps(root, indent=2))
    (d / "v1").mkdir()
    (d / "v1/package-lock.json").write_text(json.dumps(v1, indent=2))
    yarn = "# yarn lockfile v1\n\n\n" + "".join(
        f'"{n}@{v}":\n  version "{v}"\n  resolved "{NPM}{p}#{hashlib.sha1(data[n]).hexdigest()}"\n'
        f'  integrity {_sri(data[n])}\n\n' for n, (v, p) in pkgs.items())
    (d / "yarn.lock").write_text(yarn)
    pnpm = "lockfileVersion: '9.0'\n\nimporters:\n\n  .:\n    dependencies: {}\n\npackages:\n\n" + \
        "".join(f"  '{n}@{v}':\n    resolution: {{integrity: {_sri(data[n])}}}\n\n"
                for n, (v, p) in pkgs.items())
    (d / "pnpm-lock.yaml").write_text(pnpm)
    return {"package-lock": LockCase(d / "v3/package-lock.json", artifacts),
            "package-lock-v1": LockCase(d / "v1/package-lock.json", artifacts),
            "yarn": LockCase(d / "yarn.lock", artifacts),
            "pnpm": LockCase(d / "pnpm-lock.yaml", artifacts)}


def _pypi(fx, d: Path) -> dict[str, LockCase]:  # type: ignore[no-untyped-def]
    wheels = [o for o in fx.of("pypi") if o.path.endswith(".whl")]
    by_project = {}
    for o in wheels:
        project = o.path.rsplit("/", 1)[1].split("-")[0].replace("_", "-")
        by_project[project] = o
    req = "".join(f"{p}==1.0 \\\n    --hash=sha256:{o.sha256}\n" for p, o in sorted(by_project.items()))
    (d / "requirements.txt").write_text("# pip-compile --generate-hashes\n" + req)
    artifacts = [f"/pypi{o.path}" for o in wheels] + [f"/pypi{o.path}.metadata" for o in wheels]
    indexes = [f"/pypi/simple/{p}/" for p in sorted(by_project)]
    poetry = "".join(f'[[package]]\nname = "{p}"\nversion = "1.0"\noptional = false\n'
                     f'files = [\n    {{file = "{o.path.rsplit("/", 1)[1]}", hash = "sha256:{o.sha256}"}},\n]\n\n'
                     for p, o in sorted(by_project.items()))
    (d / "poetry.lock").write_text(poetry + '[metadata]\nlock-version = "2.0"\n')
    sdist = next(o for o in fx.of("pypi") if o.path.endswith(".tar.gz"))
    uv = "version = 1\n\n" + "".join(
        f'[[package]]\nname = "{p}"\nversion = "1.0"\nsource = {{ registry = "https://pypi.org/simple" }}\n'
        f'wheels = [\n    {{ url = "{FILES}{o.path}", hash = "sha256:{o.sha256}", size = {o.size} }},\n]\n'
        + (f'sdist = {{ url = "{FILES}{sdist.path}", hash = "sha256:{sdist.sha256}", '
           f'size = {sdist.size} }}\n' if p == "cachegate-fixture-b" else "") + "\n"
        for p, o in sorted(by_project.items()))
    (d / "uv.lock").write_text(uv)
    return {"requirements": LockCase(d / "requirements.txt", artifacts, indexes),
            "poetry": LockCase(d / "poetry.lock", artifacts, indexes),
            "uv": LockCase(d / "uv.lock", [f"/pypi{o.path}" for o in wheels] +
                           [f"/pypi{sdist.path}"])}


def _cargo(fx, d: Path) -> dict[str, LockCase]:  # type: ignore[no-untyped-def]
    crates = [o for o in fx.of("crates") if o.path.endswith("/download")]
    text = "version = 3\n\n" + "".join(
        f'[[package]]\nname = "{o.path.split("/")[2]}"\nversion = "{o.path.split("/")[3]}"\n'
        f'source = "registry+https://github.com/rust-lang/crates.io-index"\n'
        f'checksum = "{o.sha256}"\n\n' for o in crates)
    text += '[[package]]\nname = "warm-check"\nversion = "0.1.0"\n'
    (d / "Cargo.lock").write_text(text)
    index = ["/crates/config.json"] + [f"/crates{crate_index_path(o.path.split('/')[2])}"
                                       for o in crates]
    return {"cargo": LockCase(d / "Cargo.lock", [f"/crates{o.path}" for o in crates] + index)}


def _go(fx, d: Path) -> dict[str, LockCase]:  # type: ignore[no-untyped-def]
    lines, artifacts = [], []
    for o in fx.of("go"):
        if o.path.endswith(".zip"):
            module = o.path[1:].split("/@v/")[0]
            with zipfile.ZipFile(o.file) as z:
                h1 = go_h1([(i.filename, z.read(i)) for i in z.infolist() if not i.is_dir()])
            mod = fx.get("go", o.path[:-4] + ".mod").file.read_bytes()
            lines += [f"{module} v1.0.0 {h1}", f"{module} v1.0.0/go.mod {go_h1([('go.mod', mod)])}"]
            artifacts += [f"/go{o.path}", f"/go{o.path[:-4]}.mod", f"/go{o.path[:-4]}.info"]
    (d / "go").mkdir()
    (d / "go/go.sum").write_text("\n".join(sorted(lines)) + "\n")
    return {"go.sum": LockCase(d / "go/go.sum", artifacts)}


def _gems(fx, d: Path) -> dict[str, LockCase]:  # type: ignore[no-untyped-def]
    gems = [o for o in fx.of("rubygems") if o.path.startswith("/gems/")]
    if not gems:
        return {}
    specs = {o.path[6:-4].rsplit("-", 1)[0]: o for o in gems}
    text = ("GEM\n  remote: https://rubygems.org/\n  specs:\n" +
            "".join(f"    {n} (1.0.0)\n" for n in sorted(specs)) +
            "\nPLATFORMS\n  ruby\n\nDEPENDENCIES\n  cachegate-fixture\n\nCHECKSUMS\n" +
            "".join(f"  {n} (1.0.0) sha256={o.sha256}\n" for n, o in sorted(specs.items())) +
            "\nBUNDLED WITH\n   2.6.2\n")
    (d / "Gemfile.lock").write_text(text)
    return {"gemfile": LockCase(d / "Gemfile.lock", [f"/rubygems{o.path}" for o in gems])}


def _apt(fx, d: Path) -> dict[str, LockCase]:  # type: ignore[no-untyped-def]
    debs = [o for o in fx.of("debian") if o.path.endswith(".deb")]
    text = "".join(f"'http://deb.debian.org{o.path}' {o.path.rsplit('/', 1)[1]} {o.size} "
                   f"SHA256:{o.sha256}\n" for o in debs)
    (d / "apt.uris").write_text(text)
    return {"apt": LockCase(d / "apt.uris", [f"/debian{o.path}" for o in debs])}


def _maven(fx, d: Path) -> dict[str, LockCase]:  # type: ignore[no-untyped-def]
    (d / "maven.gav").write_text("# what the build needs\norg.cachegate:fixture:1.0\n"
                                 "org.cachegate:fixture-dep:1.0\n")
    artifacts = []
    for a in ("fixture", "fixture-dep"):
        base = f"/maven/maven2/org/cachegate/{a}/1.0/{a}-1.0"
        artifacts += [f"{base}.pom", f"{base}.pom.sha1", f"{base}.jar", f"{base}.jar.sha1"]
    return {"maven": LockCase(d / "maven.gav", artifacts)}


def lockfiles(fx, directory: Path) -> dict[str, LockCase]:  # type: ignore[no-untyped-def]
    directory.mkdir(parents=True, exist_ok=True)
    cases: dict[str, LockCase] = {}
    for make in (_npm, _pypi, _cargo, _go, _gems, _apt, _maven):
        cases.update(make(fx, directory))
    return cases
