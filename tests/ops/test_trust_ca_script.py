"""``scripts/trust-ca.sh`` on fake root filesystems (``TRUST_ROOT``): the layouts of
Debian/Ubuntu, Alpine, an image with no package manager, a JDK and certifi bundles.  The
script runs under ``sh`` (dash here), never bash.  The chroot test on a real debootstrap
rootfs is in ``test_trust_rootfs.py``."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.clients import need

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "trust-ca.sh"
EXPECTED_ENV = {"NODE_EXTRA_CA_CERTS": "/usr/local/share/cachegate/ca.crt",
                "PIP_CERT": "/etc/ssl/certs/ca-certificates.crt",
                "REQUESTS_CA_BUNDLE": "/etc/ssl/certs/ca-certificates.crt"}


# What the script may run (busybox has each of them).
TOOLS = ("sh", "sed", "grep", "cat", "cp", "mkdir", "find", "head", "tail", "sort")


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A CA certificate and a leaf for ``name`` signed by it, with the openssl CLI."""
    need(shutil.which("openssl"), "openssl not installed")
    ca_key, ca = directory / f"{name}-ca.key", directory / f"{name}-ca.crt"
    leaf_key, csr, leaf = directory / f"{name}.key", directory / f"{name}.csr", \
        directory / f"{name}.crt"
    sh = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
    sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
       "-nodes", "-keyout", ca_key, "-out", ca, "-subj", f"/CN={name} CA", "-days", "2",
       "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=keyCertSign")
    sh("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
       "-keyout", leaf_key, "-out", csr, "-subj", f"/CN={name}")
    sh("openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-out", leaf,
       "-days", "1", "-CAcreateserial")
    return ca, leaf


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    return make_ca(tmp_path_factory.mktemp("ca"), "cachegate")


@pytest.fixture(scope="module")
def other(tmp_path_factory) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    return make_ca(tmp_path_factory.mktemp("other"), "public-root")


def trust(root: Path, ca: Path, **env: str) -> subprocess.CompletedProcess:
    done = subprocess.run(["sh", str(SCRIPT), str(ca)], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "TRUST_ROOT": str(root), **env},
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done


def verifies(bundle: Path, leaf: Path) -> bool:
    return subprocess.run(["openssl", "verify", "-CAfile", str(bundle), str(leaf)],
                          capture_output=True).returncode == 0


def copies(path: Path, ca: Path) -> int:
    return path.read_text().count(ca.read_text().strip())


def test_debian_bundle_keeps_its_roots_and_gains_ours(tmp_path, ca, other):
    bundle = tmp_path / "etc/ssl/certs/ca-certificates.crt"
    bundle.parent.mkdir(parents=True)
    bundle.write_text(other[0].read_text().rstrip("\n"))  # no final newline: still a PEM
    (tmp_path / "usr/local/share/ca-certificates").mkdir(parents=True)
    trust(tmp_path, ca[0])
    assert verifies(bundle, ca[1]) and verifies(bundle, other[1])
    assert (tmp_path / "usr/local/share/ca-certificates/cachegate.crt").read_text() == \
        ca[0].read_text()


def test_twice_is_one_copy_everywhere(tmp_path, ca, other):
    (tmp_path / "etc/ssl/certs").mkdir(parents=True)
    (tmp_path / "etc/ssl/cert.pem").write_text(other[0].read_text())
    certifi = tmp_path / "usr/local/lib/python3.12/site-packages/certifi/cacert.pem"
    certifi.parent.mkdir(parents=True)
    certifi.write_text(other[0].read_text())
    first = trust(tmp_path, ca[0])
    second = trust(tmp_path, ca[0])
    for path in (tmp_path / "etc/ssl/certs/ca-certificates.crt", tmp_path / "etc/ssl/cert.pem",
                 certifi):
        assert copies(path, ca[0]) == 1, path
    assert "already trusted" in second.stderr and "already trusted" not in first.stderr
    assert first.stdout == second.stdout


def test_alpine_cert_pem(tmp_path, ca, other):
    (tmp_path / "etc/ssl").mkdir(parents=True)
    cert_pem = tmp_path / "etc/ssl/cert.pem"
    cert_pem.write_text(other[0].read_text())
    trust(tmp_path, ca[0])
    assert verifies(cert_pem, ca[1]) and verifies(cert_pem, other[1])


def test_apk_ca_pem_gains_ours_when_an_image_has_one(tmp_path, ca, other):
    """apk reads /etc/apk/ca.pem *instead of* the system store when it exists (apk-tools'
    libfetch CA_CERT_FILE); real apk with it: tests/ecosystems/test_apk_client.py."""
    (tmp_path / "etc/apk").mkdir(parents=True)
    apk_ca = tmp_path / "etc/apk/ca.pem"
    apk_ca.write_text(other[0].read_text())
    trust(tmp_path, ca[0])
    trust(tmp_path, ca[0])
    assert copies(apk_ca, ca[0]) == 1
    assert verifies(apk_ca, ca[1]) and verifies(apk_ca, other[1])
    empty = tmp_path / "no-apk-ca"
    empty.mkdir()
    trust(empty, ca[0])
    assert not (empty / "etc/apk/ca.pem").exists()  # never created: apk would read it alone


def test_alpine_layout_with_busybox_alone(tmp_path, ca, other):
    """Alpine's layout (cert.pem a relative link to the bundle) and Alpine's tools: busybox
    sh and applets, nothing else on PATH."""
    busybox = shutil.which("busybox")
    need(busybox, "busybox not installed (Debian package busybox-static)")
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in TOOLS:
        (tools / tool).symlink_to(busybox)  # type: ignore[arg-type]
    root = tmp_path / "root"
    bundle = root / "etc/ssl/certs/ca-certificates.crt"
    bundle.parent.mkdir(parents=True)
    bundle.write_text(other[0].read_text())
    (root / "etc/ssl/cert.pem").symlink_to("certs/ca-certificates.crt")
    for _ in range(2):
        done = subprocess.run([str(tools / "sh"), str(SCRIPT), str(ca[0])], capture_output=True,
                              text=True, env={"PATH": str(tools), "TRUST_ROOT": str(root)})
        assert done.returncode == 0, done.stderr
    assert copies(bundle, ca[0]) == 1 and (root / "etc/ssl/cert.pem").is_symlink()
    assert verifies(root / "etc/ssl/cert.pem", ca[1]) and verifies(bundle, other[1])
    assert (root / "usr/local/share/cachegate/ca.crt").read_bytes() == ca[0].read_bytes()


def test_rhel_bundle_gains_ours_and_seeds_the_debian_path(tmp_path, ca, other):
    rhel = tmp_path / "etc/pki/tls/certs/ca-bundle.crt"
    rhel.parent.mkdir(parents=True)
    rhel.write_text(other[0].read_text())
    trust(tmp_path, ca[0])
    debian = tmp_path / "etc/ssl/certs/ca-certificates.crt"
    for bundle in (rhel, debian):
        assert verifies(bundle, ca[1]) and verifies(bundle, other[1]), bundle
        assert copies(bundle, ca[0]) == 1


def test_no_package_manager_creates_the_bundle(tmp_path, ca):
    """An image with nothing at all (no /etc/ssl): the bundle is created with our CA."""
    trust(tmp_path, ca[0])
    bundle = tmp_path / "etc/ssl/certs/ca-certificates.crt"
    assert verifies(bundle, ca[1])
    assert (tmp_path / "usr/local/share/cachegate/ca.crt").read_text() == ca[0].read_text()


def test_created_bundle_is_seeded_with_certifi_roots(tmp_path, ca, other):
    """PIP_CERT points at the bundle: created from nothing it would lose pip's roots, so
    it starts as a copy of a certifi bundle (pip's vendored one here)."""
    vendored = tmp_path / "usr/lib/python3/dist-packages/pip/_vendor/certifi/cacert.pem"
    vendored.parent.mkdir(parents=True)
    vendored.write_text(other[0].read_text())
    trust(tmp_path, ca[0])
    bundle = tmp_path / "etc/ssl/certs/ca-certificates.crt"
    assert verifies(bundle, other[1]) and verifies(bundle, ca[1])
    assert verifies(vendored, ca[1]) and copies(vendored, ca[0]) == 1


def test_certifi_bundles_in_site_packages_and_venvs(tmp_path, ca, other):
    bundles = [tmp_path / p / "certifi/cacert.pem" for p in (
        "usr/lib/python3/dist-packages", "opt/venv/lib/python3.11/site-packages",
        "root/.local/lib/python3.12/site-packages")]
    for bundle in bundles:
        bundle.parent.mkdir(parents=True)
        bundle.write_text(other[0].read_text())
    trust(tmp_path, ca[0])
    for bundle in bundles:
        assert verifies(bundle, ca[1]) and verifies(bundle, other[1]), bundle


def test_jvm_cacerts_through_keytool(tmp_path, ca, other):
    keytool = shutil.which("keytool")
    need(keytool, "keytool not installed (a JRE: Debian package default-jre-headless)")
    store = tmp_path / "opt/java/openjdk/lib/security/cacerts"
    store.parent.mkdir(parents=True)
    subprocess.run([keytool, "-importcert", "-noprompt", "-keystore", str(store),
                    "-storepass", "changeit", "-alias", "other", "-file", str(other[0])],
                   check=True, capture_output=True)
    path = f"{Path(keytool).resolve().parent}:/usr/bin:/bin"
    trust(tmp_path, ca[0], PATH=path)
    trust(tmp_path, ca[0], PATH=path)  # the alias replaced, not duplicated
    listing = subprocess.run([keytool, "-list", "-keystore", str(store), "-storepass",
                              "changeit"], capture_output=True, text=True, check=True).stdout
    assert "cachegate," in listing and "other," in listing
    assert "2 entries" in listing


def test_jvm_without_keytool_is_left_alone(tmp_path, ca):
    store = tmp_path / "usr/lib/jvm/jre/lib/security/cacerts"
    store.parent.mkdir(parents=True)
    store.write_bytes(b"not touched")
    done = trust(tmp_path, ca[0], PATH=str(minimal_bin(tmp_path / "bin")))
    assert store.read_bytes() == b"not touched" and "no keytool" in done.stderr
    assert verifies(tmp_path / "etc/ssl/certs/ca-certificates.crt", ca[1])


def test_unreadable_keystore_is_a_warning(tmp_path, ca):
    need(shutil.which("keytool"), "keytool not installed")
    store = tmp_path / "etc/ssl/certs/java/cacerts"
    store.parent.mkdir(parents=True)
    store.write_bytes(b"corrupt")
    done = trust(tmp_path, ca[0], PATH=f"{Path(shutil.which('keytool')).parent}:/usr/bin:/bin")
    assert "warning:" in done.stderr and store.read_bytes() == b"corrupt"


def minimal_bin(directory: Path) -> Path:
    """A PATH with only the tools the script may use (busybox has each of them)."""
    directory.mkdir()
    for tool in TOOLS:
        (directory / tool).symlink_to(shutil.which(tool))  # type: ignore[arg-type]
    return directory


def test_prints_the_environment_the_derived_image_sets(tmp_path, ca):
    from gateway.ops.trust import IMAGE_ENV
    env = dict(line.split("=", 1) for line in trust(tmp_path, ca[0]).stdout.splitlines())
    assert env == EXPECTED_ENV == dict(IMAGE_ENV)


@pytest.mark.parametrize("content", ["", "not a certificate\n"])
def test_refuses_what_is_not_a_certificate(tmp_path, content):
    bad = tmp_path / "bad.crt"
    bad.write_text(content)
    done = subprocess.run(["sh", str(SCRIPT), str(bad)], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "TRUST_ROOT": str(tmp_path / "r")})
    assert done.returncode != 0 and done.stderr.startswith("error: ")
    assert not (tmp_path / "r").exists()


def test_shellcheck_clean():
    shellcheck = shutil.which("shellcheck")
    need(shellcheck, "shellcheck not installed")
    done = subprocess.run([shellcheck, "--shell=sh", str(SCRIPT)], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout
