"""``cachegate images setup``: point containerd (and Docker >= 28, whose image store and
BuildKit read the same files) at the registry mirror for every registry of the catalogue.

One ``hosts.toml`` per registry, in ``/etc/docker/certs.d/<registry>/`` (Docker) or
``/etc/containerd/certs.d/<registry>/`` (containerd, Kubernetes nodes: ``--dir``)::

    server = "https://ghcr.io"

    [host."http://127.0.0.1:5000"]
      capabilities = ["pull", "resolve"]

containerd tries the mirror first, sending ``?ns=ghcr.io``, and falls back to ``server``
when the mirror fails.  Wildcard entries (``*.gcr.io``, ``*-docker.pkg.dev``) have no one
directory name and are skipped.  A ``hosts.toml`` cachegate did not write is left alone;
``--remove`` deletes only the ones it wrote.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from gateway.config import Config
from gateway.ecosystems.images import Registry
from gateway.ops.hostsetup import mirror_url

DOCKER_CERTS_D = Path("/etc/docker/certs.d")
MARKER = "# written by `cachegate images setup`; `cachegate images setup --remove` deletes it"


def hosts_toml(server: str, mirror: str) -> str:
    return (f"{MARKER}\nserver = \"{server}\"\n\n[host.\"{mirror}\"]\n"
            "  capabilities = [\"pull\", \"resolve\"]\n")


def targets(registries: tuple[Registry, ...]) -> list[tuple[str, str]]:
    """(directory name, real server) for each registry with an exact name."""
    out = []
    for registry in registries:
        host = registry.hosts[0] if registry.hosts else ""
        if host and "*" not in host:
            out.append((host, f"https://{registry.api_host or host}"))
    return out


def setup(config: Config, directory: Path) -> list[str]:
    """Write the files; one line per registry saying what was done."""
    mirror = mirror_url(config)
    if not mirror:
        raise SetupError("images.listen is off: there is no mirror to point at")
    lines = []
    for host, server in targets(config.images.registries):
        path = directory / host / "hosts.toml"
        wanted = hosts_toml(server, mirror)
        if path.exists() and not _ours(path):
            lines.append(f"{path}: not written by cachegate, left as it is")
            continue
        if path.exists() and path.read_text() == wanted:
            lines.append(f"{path}: already points at {mirror}")
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_text(wanted)
        os.replace(partial, path)
        lines.append(f"{path}: {host} through {mirror}, then {server}")
    return lines


def remove(config: Config, directory: Path) -> list[str]:
    lines = []
    for host, _ in targets(config.images.registries):
        path = directory / host / "hosts.toml"
        if path.exists() and _ours(path):
            path.unlink()
            try:
                path.parent.rmdir()
            except OSError:
                pass  # other files (certificates) live there too
            lines.append(f"{path}: removed")
    return lines or ["nothing written by cachegate to remove"]


def _ours(path: Path) -> bool:
    try:
        return path.read_text().startswith(MARKER)
    except OSError:
        return False


class SetupError(Exception):
    pass


def add_parser(subparsers: Any) -> None:
    images = subparsers.add_parser("images", help="point containerd/Docker at the registry "
                                   "mirror", description=__doc__.split("\n\n")[0])
    which = images.add_subparsers(dest="images_command", required=True, metavar="ACTION")
    setup_parser = which.add_parser("setup", help="write hosts.toml for every registry")
    setup_parser.add_argument("--dir", type=Path, default=DOCKER_CERTS_D,
                              help=f"the certs.d directory (default {DOCKER_CERTS_D}; "
                                   "containerd: /etc/containerd/certs.d)")
    setup_parser.add_argument("--remove", action="store_true",
                              help="delete the hosts.toml files cachegate wrote")


def run(args: argparse.Namespace, config: Config) -> int:
    try:
        lines = remove(config, args.dir) if args.remove else setup(config, args.dir)
    except (SetupError, OSError) as e:
        print(f"cachegate: error: {e}", file=sys.stderr)
        return 1
    for line in lines:
        print(line)
    return 0
