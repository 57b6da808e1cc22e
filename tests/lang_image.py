"""A base image with Go, cargo, gem and bundler, for Docker builds of the language
clients (tests/e2e/test_docker_lang.py): the debootstrap rootfs image of tests/rootfs.py
with Debian's ``golang-go``, ``cargo-web``, ``ruby`` and ``ruby-bundler`` added as one
layer (``ADD overlay.tar /``).

The overlay is made once and cached under ``/var/cache/cachegate-tests/`` keyed by its
recipe: the rootfs tarball unpacked, ``apt-get install`` run in it by chroot over the
host's network, and the files of the packages that install added (``dpkg -L``, plus
their dpkg records, so ``dpkg -s`` in the image knows them).  Kept apart from the rootfs
recipe so the other Docker and trust tests keep their image (and its cache) as it is.
Needs root, the Debian mirror for the first build (about 150 MB) and a few minutes.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from tests import rootfs

PACKAGES = ("golang-go", "cargo-web", "ruby", "ruby-bundler")
RECIPE = f"{rootfs.RECIPE} + {' '.join(PACKAGES)}"
RECIPE_HASH = hashlib.sha256(RECIPE.encode()).hexdigest()[:12]
OVERLAY = rootfs.CACHE / f"bookworm-lang-{RECIPE_HASH}.tar"
IMAGE = f"cachegate-test/bookworm-lang:{RECIPE_HASH}"
BUILD_SECONDS = 1200


def build_overlay() -> Path:
    """The cached overlay tarball, built under a lock if missing."""
    rootfs.CACHE.mkdir(parents=True, exist_ok=True)
    with open(rootfs.CACHE / ".lang-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if OVERLAY.exists():
            return OVERLAY
        for old in rootfs.CACHE.glob("bookworm-lang-*.tar"):  # another recipe's
            old.unlink()
        base = rootfs.build_tarball()
        work = rootfs.CACHE / "bookworm-lang.partial"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        try:
            subprocess.run(["tar", "-C", str(work), "-xf", str(base)], check=True)
            before = _installed(work)
            _install(work)
            added = sorted(_installed(work) - before)
            listing = rootfs.CACHE / "bookworm-lang.files"
            listing.write_text("".join(f"{p}\n" for p in _files_of(work, added)))
            partial = OVERLAY.with_suffix(".tar.partial")
            subprocess.run(["tar", "-C", str(work), "--no-recursion", "-T", str(listing),
                            "-cf", str(partial)], check=True)
            os.replace(partial, OVERLAY)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return OVERLAY


def _chroot(root: Path, *argv: str) -> str:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(["chroot", str(root), *argv], capture_output=True, text=True,
                          env=env, timeout=BUILD_SECONDS)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} in {root}: {done.stdout[-2000:]}"
                           f"{done.stderr[-2000:]}")
    return done.stdout


def _installed(root: Path) -> set[str]:
    out = _chroot(root, "dpkg-query", "-W", "-f", "${Package}:${Architecture}\\n")
    return set(out.split())


def _install(root: Path) -> None:
    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
    subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
    try:
        _chroot(root, "apt-get", "update", "-q")
        _chroot(root, "apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES)
    finally:
        subprocess.run(["umount", str(root / "proc")], check=True)


def _files_of(root: Path, packages: list[str]) -> list[str]:
    """Every file and link the ``packages`` installed, their dpkg records and dpkg's
    status file (relative paths, parents first), plus /etc/alternatives links."""
    paths: set[str] = set()
    for package in packages:
        for line in _chroot(root, "dpkg", "-L", package).splitlines():
            if line.startswith("/") and not line.startswith("/."):
                paths.add(line)
        info = root / "var/lib/dpkg/info"
        name = package.split(":")[0]
        paths |= {f"/var/lib/dpkg/info/{p.name}" for p in info.glob(f"{name}.*")}
        paths |= {f"/var/lib/dpkg/info/{p.name}" for p in info.glob(f"{package}.*")}
    paths |= {f"/etc/alternatives/{p.name}" for p in (root / "etc/alternatives").iterdir()}
    paths |= {f"/var/lib/dpkg/alternatives/{p.name}"
              for p in (root / "var/lib/dpkg/alternatives").iterdir()}
    paths.add("/var/lib/dpkg/status")
    kept = set()
    for path in paths:
        target = root / path.lstrip("/")
        if target.is_symlink() or target.is_file():
            kept.add(path)
            parent = Path(path).parent
            while str(parent) != "/":  # directories too, so their modes travel
                kept.add(str(parent))
                parent = parent.parent
    return ["." + p for p in sorted(kept)]


def lang_image(daemon) -> str:  # type: ignore[no-untyped-def]  # docker_daemon.DockerDaemon
    """``IMAGE`` in ``daemon``: the rootfs image plus the overlay (built first if
    missing), unless the daemon has it already."""
    if daemon.docker("image", "inspect", IMAGE, check=False).returncode == 0:
        return IMAGE
    base = rootfs.base_image(daemon)
    overlay = build_overlay()
    context = rootfs.CACHE / f"bookworm-lang-context.{os.getpid()}"
    shutil.rmtree(context, ignore_errors=True)
    context.mkdir()
    try:
        os.link(overlay, context / "overlay.tar")  # same filesystem: no copy
        (context / "Dockerfile").write_text(f"FROM {base}\nADD overlay.tar /\n")
        daemon.docker("build", "--tag", IMAGE, str(context), buildkit=False)
    finally:
        shutil.rmtree(context, ignore_errors=True)
    return IMAGE


if __name__ == "__main__":  # python -m tests.lang_image: build the overlay ahead of time
    print(build_overlay())
