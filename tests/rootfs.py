"""The Debian bookworm root filesystem the trust and Docker tests run their clients in:
built once with debootstrap and cached as a tarball under ``/var/cache/cachegate-tests/``
(rebuilt only when missing or when its recipe changes), with the pinned pip wheel beside
it.  tests/e2e/test_trust_rootfs.py unpacks it for ``chroot``; tests/docker_daemon.py's
daemon gets it as a base image by ``docker import`` (``base_image``).  Needs root,
debootstrap, the Debian mirror and PyPI for the first build (about 130 MB downloaded,
a few minutes)."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CACHE = Path(os.environ.get("CACHEGATE_TEST_CACHE", "/var/cache/cachegate-tests"))
MIRROR = os.environ.get("CACHEGATE_TEST_MIRROR", "http://deb.debian.org/debian")
# What the image holds: Debian's curl, pip (certifi, which Debian points at the system
# bundle), node and npm, a JRE (keytool) with Maven and the dependency plugin (Maven
# Central is a fixture, the plugin comes from Debian's /usr/share/maven-repo);
# ca-certificates for update-ca-certificates.  debootstrap makes the base, apt-get inside
# it adds the rest (its dependency resolution handles the JRE's virtual packages).
BASE = ("ca-certificates", "openssl", "python3-certifi", "python3-pip", "curl")
EXTRA = ("nodejs", "npm", "openjdk-17-jre-headless", "maven",
         "libmaven-dependency-plugin-java", "junit4")
RECIPE = f"bookworm minbase {MIRROR} {' '.join(BASE)} + {' '.join(EXTRA)}"
RECIPE_HASH = hashlib.sha256(RECIPE.encode()).hexdigest()[:12]
TARBALL = CACHE / f"bookworm-{RECIPE_HASH}.tar"
# The tarball as a Docker image (tests/docker_daemon.py): named by the recipe, so a
# daemon that has it never imports it again.
IMAGE = f"cachegate-test/bookworm-rootfs:{RECIPE_HASH}"
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# A pip recent enough to trust the system store by itself (truststore, pip >= 24.2), run
# from its wheel as `python3 pip.whl/pip`: its vendored certifi stays inside the zip.
PIP_WHEEL = CACHE / "pip-24.3.1-py3-none-any.whl"
BUILD_SECONDS = 1200
# Left out of the tarball: downloaded .debs, apt's lists, documentation.
TAR_EXCLUDES = ("./var/cache/apt/archives/*.deb", "./var/cache/apt/*.bin",
                "./var/lib/apt/lists/*", "./usr/share/doc/*", "./usr/share/man/*")


def build_tarball() -> Path:
    """The cached rootfs tarball, built under a lock if missing."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if TARBALL.exists():
            return TARBALL
        for old in CACHE.glob("bookworm-*.tar"):  # another recipe's
            old.unlink()
        work = CACHE / "bookworm.partial"
        shutil.rmtree(work, ignore_errors=True)
        subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE)}",
                        "bookworm", str(work), MIRROR], check=True, capture_output=True,
                       timeout=BUILD_SECONDS)
        _install_extra(work)
        partial = TARBALL.with_suffix(".tar.partial")
        subprocess.run(["tar", "-C", str(work), *(f"--exclude={x}" for x in TAR_EXCLUDES),
                        "-cf", str(partial), "."], check=True)
        os.replace(partial, TARBALL)
        shutil.rmtree(work, ignore_errors=True)
        return TARBALL


def _install_extra(root: Path) -> None:
    """``apt-get install EXTRA`` inside ``root`` (the JRE's scripts need /proc)."""
    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
    subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
    try:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive"}
        for argv in (["apt-get", "update", "-q"],
                     ["apt-get", "install", "-y", "-q", "--no-install-recommends", *EXTRA]):
            done = subprocess.run(["chroot", str(root), *argv], capture_output=True,
                                  text=True, env=env, timeout=BUILD_SECONDS)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(argv)} in {root}: {done.stdout[-2000:]}"
                                   f"{done.stderr[-2000:]}")
    finally:
        subprocess.run(["umount", str(root / "proc")], check=True)


def fetch_pip_wheel() -> Path:
    """The pinned pip wheel, downloaded once from PyPI (by this machine's pip)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not PIP_WHEEL.exists():
            version = PIP_WHEEL.name.split("-")[1]
            with tempfile.TemporaryDirectory(dir=CACHE) as partial:
                subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                                "--only-binary=:all:", "--disable-pip-version-check",
                                "-d", partial, f"pip=={version}"], check=True,
                               capture_output=True, timeout=300)
                os.replace(Path(partial) / PIP_WHEEL.name, PIP_WHEEL)
        return PIP_WHEEL


def base_image(daemon) -> str:  # type: ignore[no-untyped-def]  # docker_daemon.DockerDaemon
    """``IMAGE`` in ``daemon``: the tarball imported (built first if missing) unless the
    daemon has it already."""
    if daemon.docker("image", "inspect", IMAGE, check=False).returncode != 0:
        # What the official debian images set; an imported image has no config at all.
        daemon.docker("import", "--message", RECIPE, "--change", f"ENV PATH={IMAGE_PATH}",
                      "--change", 'CMD ["bash"]', str(build_tarball()), IMAGE)
    return IMAGE
