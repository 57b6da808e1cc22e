"""``cachegate trust``: make build images, the host and buildx builders trust the CA.

- ``trust image IMAGE…`` builds, for each image, a derived image ``FROM`` the original (by
  digest) that runs ``scripts/trust-ca.sh`` and sets the environment Node and pip need,
  tagged with the image's own name: ``docker build`` uses a local image for ``FROM`` before
  pulling, so every Dockerfile on the host trusts the CA without an edit.  The original is
  recorded in ``<state_dir>/trust/images.json`` and kept alive by a tag under
  ``cachegate-original/`` (a dangling image would go with the next ``docker image prune``).
  With no names it takes ``trust.images`` of the config (what start.sh runs at each
  start): an image still shadowed with the same CA and script is left as it is, one pulled
  or re-tagged since is shadowed afresh.  ``--restore`` tags the original back.
  ``trust images`` lists what is shadowed.
- ``trust host [--remove]``: the host's store (``update-ca-certificates`` on Debian and
  Ubuntu, ``update-ca-trust`` on the RHEL family).
- ``trust buildx``: the ``[dns]`` section of ``buildkitd.toml`` for ``docker-container``
  builders, which ignore ``daemon.json``.

Docker is driven through its CLI (``docker`` on PATH), never its socket: the CLI knows the
user's context and credentials, and tests replace it with a recording fake.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config import image_reference
from tls.store import ca_paths

EXIT_OK, EXIT_ERROR = 0, 1

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "trust-ca.sh"
# What the derived image sets; trust-ca.sh prints the same lines (a test keeps them equal).
# NODE_EXTRA_CA_CERTS adds to Node's bundled roots; PIP_CERT / REQUESTS_CA_BUNDLE reach a
# certifi installed later in the build (``pip install -U pip`` brings a fresh bundle).
IMAGE_ENV = (("NODE_EXTRA_CA_CERTS", "/usr/local/share/cachegate/ca.crt"),
             ("PIP_CERT", "/etc/ssl/certs/ca-certificates.crt"),
             ("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt"))
LABEL = "io.cachegate.trusted-from"
ORIGINAL_REPO = "cachegate-original"
# Where each host family keeps local CAs, and the command that rebuilds its bundle.
HOST_STORES = (("/usr/local/share/ca-certificates/cachegate.crt",
                ("update-ca-certificates", "--fresh")),
               ("/etc/pki/ca-trust/source/anchors/cachegate.crt", ("update-ca-trust", "extract")))
BUILDKITD_TOML = Path("~/.docker/buildx/buildkitd.default.toml")


class TrustError(Exception):
    """A known failure: one line on stderr."""


def add_parser(subparsers: Any) -> None:
    trust = subparsers.add_parser("trust", help="make images, the host or buildx trust the CA",
                                  description="Make build images, the host or buildx "
                                              "builders trust the CA.")
    which = trust.add_subparsers(dest="trust_command", required=True, metavar="WHAT")
    image = which.add_parser("image", help="shadow images with derived ones that trust the CA")
    image.add_argument("images", nargs="*", metavar="IMAGE")
    image.add_argument("--restore", action="store_true",
                       help="tag the originals back (every shadowed image when none named)")
    which.add_parser("images", help="list the images shadowed by `trust image`")
    host = which.add_parser("host", help="install the CA into this host's trust store")
    host.add_argument("--remove", action="store_true", help="take it out again")
    host.add_argument("--root", type=Path, default=Path("/"), help=argparse.SUPPRESS)
    buildx = which.add_parser("buildx", help="write [dns] of buildkitd.toml for "
                              "docker-container builders")
    buildx.add_argument("--file", type=Path, default=BUILDKITD_TOML,
                        help=f"the buildkitd config to edit (default: {BUILDKITD_TOML})")


def run(args: argparse.Namespace, config: Any) -> int:
    """``cachegate trust …``: 0 done, 1 a known error (one line on stderr)."""
    try:
        return _COMMANDS[args.trust_command](args, config)
    except TrustError as e:
        if getattr(args, "debug", False):
            raise
        print(f"cachegate: error: {e}", file=sys.stderr)
        return EXIT_ERROR


# --- images -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Shadowed:
    """One image name whose tag now points at a derived image."""

    image: str
    original_id: str
    base: str  # what the derived image is FROM: repo@digest, else the keep-alive tag
    derived_id: str
    recipe: str = ""  # sha256 of what built it (Dockerfile, CA, script)


def dockerfile(base: str, user: str, original_id: str) -> str:
    """The derived image: the CA and the script copied in, run once, the env set.  Exec-form
    RUN so an image's SHELL (or a missing bash) does not matter; root for the run, then
    the image's own user back."""
    lines = [f"FROM {base}", "USER root",
             "COPY ca.crt trust-ca.sh /tmp/cachegate-trust/",
             'RUN ["/bin/sh", "-c", "sh /tmp/cachegate-trust/trust-ca.sh '
             '/tmp/cachegate-trust/ca.crt && rm -rf /tmp/cachegate-trust"]']
    lines += [f"ENV {name}={value}" for name, value in IMAGE_ENV]
    lines.append(f'LABEL {LABEL}="{original_id}"')
    if user:
        lines.append(f"USER {user}")
    return "\n".join(lines) + "\n"


def keep_alive_tag(image: str) -> str:
    """``cachegate-original/<image>`` with an explicit tag."""
    name, tag = split_tag(image)
    return f"{ORIGINAL_REPO}/{name}:{tag}"


def split_tag(image: str) -> tuple[str, str]:
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:
        return image, "latest"
    return name, tag


class Docker:
    """The ``docker`` CLI."""

    def __init__(self, command: str = "docker") -> None:
        self.command = command

    def __call__(self, *argv: str) -> str:
        try:
            done = subprocess.run([self.command, *argv], capture_output=True, text=True)
        except FileNotFoundError:
            raise TrustError(f"{self.command}: not found (the Docker CLI is needed)") from None
        if done.returncode != 0:
            detail = (done.stderr.strip().splitlines() or ["failed"])[-1]
            raise TrustError(f"docker {' '.join(argv[:2])}: {detail}")
        return done.stdout

    def inspect(self, image: str) -> dict:
        return json.loads(self("image", "inspect", image))[0]


class ImageRecords:
    """``<state_dir>/trust/images.json``: image name → Shadowed, written by rename."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / "trust" / "images.json"

    def load(self) -> dict[str, Shadowed]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise TrustError(f"{self.path}: unreadable: {e}") from None
        return {name: Shadowed(**entry) for name, entry in raw.items()}

    def save(self, records: dict[str, Shadowed]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps({n: vars(s) for n, s in sorted(records.items())},
                                      indent=2) + "\n")
        os.replace(partial, self.path)


def shadow(docker: Docker, image: str, ca_pem: bytes, known: Shadowed | None) -> Shadowed:
    """Build and tag the derived image for ``image``.  When ``image`` is still our derived
    image it is rebuilt from the recorded original, and only if the recipe (CA, script,
    Dockerfile) changed; when it was pulled or re-tagged since, the new image becomes the
    original."""
    current = docker.inspect(image)
    if known is not None and current["Id"] == known.derived_id:
        original_id, base = known.original_id, known.base
        info = docker.inspect(original_id)
    else:
        if LABEL in ((current.get("Config") or {}).get("Labels") or {}):
            raise TrustError(f"{image}: already a derived image but not in the records: "
                             f"pull the original again first")
        info, original_id = current, current["Id"]
        docker("tag", original_id, keep_alive_tag(image))
        base = _repo_digest(image, info) or keep_alive_tag(image)
    user = (info.get("Config") or {}).get("User") or ""
    text = dockerfile(base, user, original_id)
    script = _script()
    recipe = hashlib.sha256(b"\0".join((text.encode(), ca_pem, script))).hexdigest()
    if known is not None and current["Id"] == known.derived_id and known.recipe == recipe:
        return known
    with tempfile.TemporaryDirectory(prefix="cachegate-trust-") as context:
        _write_context(Path(context), text, ca_pem, script)
        docker("build", "--tag", image, context)
    return Shadowed(image, original_id, base, docker.inspect(image)["Id"], recipe)


def _repo_digest(image: str, info: dict) -> str | None:
    """``repo@sha256:…`` of the image's own repository, when it came from a registry."""
    name = split_tag(image)[0]
    for digest in info.get("RepoDigests") or ():
        if digest.split("@")[0] in (name, f"docker.io/library/{name}", f"docker.io/{name}"):
            return digest
    return None


def _script() -> bytes:
    try:
        return SCRIPT.read_bytes()
    except OSError as e:  # installed without the checkout's scripts/
        raise TrustError(f"{SCRIPT}: {e.strerror} (run cachegate from its checkout, "
                         f"installed with pip install -e)") from None


def _write_context(context: Path, text: str, ca_pem: bytes, script: bytes) -> None:
    (context / "Dockerfile").write_text(text)
    (context / "ca.crt").write_bytes(ca_pem)
    (context / "trust-ca.sh").write_bytes(script)


def restore(docker: Docker, record: Shadowed) -> None:
    docker("tag", record.original_id, record.image)
    docker("image", "rm", keep_alive_tag(record.image))


def ca_pem(config: Any) -> bytes:
    cert = ca_paths(config.server.state_dir)[0]
    try:
        return cert.read_bytes()
    except OSError as e:
        raise TrustError(f"{cert}: {e.strerror} (start the gateway once to create the "
                         f"CA)") from None


def cmd_image(args: argparse.Namespace, config: Any) -> int:
    """Shadow the images named, else those of ``trust.images`` in the config; restore the
    named ones, else every shadowed image."""
    records = ImageRecords(config.server.state_dir)
    known = records.load()
    docker = Docker()
    if args.restore:
        wanted = args.images or sorted(known)
    else:
        wanted = args.images or list(config.trust.images)
        if not wanted:
            raise TrustError(f"name at least one image (e.g. trust image debian:bookworm) or "
                             f"list them in trust.images of {config.source}")
    for image in wanted:
        try:
            image_reference(image)
        except ValueError as e:
            raise TrustError(f"{image}: {e}") from None
        if args.restore:
            if image not in known:
                raise TrustError(f"{image}: not shadowed by cachegate (see `cachegate trust "
                                 f"images`)")
            record = known.pop(image)
            restore(docker, record)
            print(f"{image}: restored to the original {record.original_id[:19]}")
        else:
            before = known.get(image)
            known[image] = shadow(docker, image, ca_pem(config), before)
            original = f"{known[image].original_id[:19]} kept as {keep_alive_tag(image)}"
            if known[image] is before:
                print(f"{image}: already trusts the cachegate CA (original {original})")
                continue
            print(f"{image}: now trusts the cachegate CA (original {original})")
        records.save(known)
    return EXIT_OK


TRUSTED, MOVED, PENDING = "trusted", "pulled or re-tagged since", "not shadowed yet"


def image_states(config: Any, docker: Docker) -> list[tuple[str, str, Shadowed | None]]:
    """(name, state, record) for each shadowed image and each of ``trust.images``: TRUSTED
    (its tag is our derived image), MOVED (its tag moved since: it lacks the CA now) or
    PENDING (listed, never shadowed)."""
    known = ImageRecords(config.server.state_dir).load()
    states = []
    for name, record in sorted(known.items()):
        try:
            current = docker.inspect(name)["Id"]
        except TrustError:
            current = ""
        states.append((name, TRUSTED if current == record.derived_id else MOVED, record))
    return states + [(name, PENDING, None) for name in config.trust.images if name not in known]


def cmd_images(args: argparse.Namespace, config: Any) -> int:
    """What is shadowed, and what ``trust.images`` lists that is not (yet)."""
    states = image_states(config, Docker())
    if not states:
        print("no images shadowed")
    for name, state, record in states:
        if record is None:
            print(f"{name}\t{state} (in trust.images: run `cachegate trust image`)")
        else:
            print(f"{name}\t{state}\tFROM {record.base}\toriginal {record.original_id}")
    return EXIT_OK


# --- host -------------------------------------------------------------------------------

def cmd_host(args: argparse.Namespace, config: Any) -> int:
    """Copy the CA into the first store family this host has and rebuild its bundle."""
    for path, update in HOST_STORES:
        target = args.root / path.lstrip("/")
        if not target.parent.is_dir() or shutil.which(update[0]) is None:
            continue
        if args.remove:
            target.unlink(missing_ok=True)
        else:
            target.write_bytes(ca_pem(config))
        done = subprocess.run(update, capture_output=True, text=True)
        if done.returncode != 0:
            raise TrustError(f"{update[0]} failed: {done.stderr.strip() or done.returncode}")
        print(f"{target}: {'removed' if args.remove else 'installed'}; ran {' '.join(update)}")
        return EXIT_OK
    raise TrustError("no known trust store on this host (need update-ca-certificates and "
                     "/usr/local/share/ca-certificates, or update-ca-trust)")


# --- buildx -----------------------------------------------------------------------------

def dns_section(nameservers: list[str]) -> str:
    quoted = ", ".join(f'"{ns}"' for ns in nameservers)
    return f"[dns]\n  nameservers = [{quoted}]\n"


def with_dns_section(text: str, section: str) -> str:
    """``text`` (a buildkitd.toml) with its ``[dns]`` table replaced by ``section``, or
    ``section`` appended.  Textual, since the table is ours to own: the rest of the file is
    kept byte for byte (a TOML writer would drop comments)."""
    return with_table(text, "dns", section)


def mirror_sections(mirror: str) -> list[tuple[str, str]]:
    """(table name, table) for BuildKit to pull Docker Hub through ``mirror`` (HOST:PORT)
    over plain http (the ``http`` key sits on the mirror's own table: moby/buildkit#2514)."""
    return [('registry."docker.io"', f'[registry."docker.io"]\n  mirrors = ["{mirror}"]\n'),
            (f'registry."{mirror}"', f'[registry."{mirror}"]\n  http = true\n')]


def with_table(text: str, name: str, section: str) -> str:
    """``text`` with its ``[name]`` table replaced by ``section``, or ``section`` appended."""
    pattern = re.compile(rf"^\[{re.escape(name)}\][^\n]*\n(?:(?!\[).*\n?)*", re.MULTILINE)
    if pattern.search(text):
        return pattern.sub(lambda _: section + "\n", text, count=1).rstrip("\n") + "\n"
    if text and not text.endswith("\n"):
        text += "\n"
    return text + ("\n" if text else "") + section


def cmd_buildx(args: argparse.Namespace, config: Any) -> int:
    from gateway.addresses import advertised_ipv4, listen_addresses

    address = advertised_ipv4(config.dns.advertise_ipv4, listen_addresses(config.server.listen))
    if address.startswith("127."):
        raise TrustError("the gateway has no non-loopback address (BuildKit ignores loopback "
                         "nameservers): is docker0 up, or set dns.advertise_ipv4")
    path = args.file.expanduser()
    text = with_dns_section(path.read_text() if path.exists() else "", dns_section([address]))
    done = [f"[dns] nameservers = [{address}]"]
    mirror = _builder_mirror(config, address)
    if mirror:
        for name, section in mirror_sections(mirror):
            text = with_table(text, name, section)
        done.append(f"Docker Hub through the registry mirror at {mirror}")
    elif config.images.listen is not None:
        done.append(f"no registry mirror: images.listen ({config.images.listen[0]}) is not "
                    f"reachable from builder containers; listen on {address} for that")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"{path}: " + "; ".join(done) + "\n"
          f"recreate docker-container builders to use it: docker buildx create "
          f"--driver docker-container --buildkitd-config {path} …")
    return EXIT_OK


def _builder_mirror(config: Any, bridge: str) -> str:
    """HOST:PORT of the registry mirror as a builder container reaches it, or "" when it
    listens on loopback only (or is off)."""
    if config.images.listen is None:
        return ""
    host, port = config.images.listen
    if host in ("0.0.0.0", "::"):
        host = bridge
    if host.startswith("127.") or host == "::1":
        return ""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_COMMANDS = {"image": cmd_image, "images": cmd_images, "host": cmd_host, "buildx": cmd_buildx}
