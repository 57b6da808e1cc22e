"""The CA, leaf certificates and the CA's files: pure builders and the store, no sockets."""

from __future__ import annotations

import ipaddress
import os
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from twisted.internet.task import Clock

from gateway.cache.rules import Upstream
from gateway.ecosystems.catalogue import BUILTIN
from tls.ca import CA_LIFETIME, CAError, create_ca, missing_domains, permitted_domains
from tls.leaf import LEAF_LIFETIME, LeafCache, issue_leaf, new_leaf_key
from tls.store import ca_paths, export_pem, load_or_create_ca, rotate_ca

from tests.clients import need

NOW = 1_780_000_000.0  # 2026-05-28, a fixed clock: nothing here reads the wall clock
DOMAINS = permitted_domains(BUILTIN, ("cachegate.internal",))
DAY = 86400.0


@pytest.fixture(scope="module", params=["ecdsa", "rsa"])
def ca(request):  # type: ignore[no-untyped-def]
    return create_ca(DOMAINS, request.param, True, NOW)


@pytest.fixture(scope="module")
def leaf_key():  # type: ignore[no-untyped-def]
    return new_leaf_key("ecdsa")


def verify(ca, leaf, name, at=NOW):  # type: ignore[no-untyped-def]
    """cryptography's RFC 5280 / CA/B path validation, trusting only ``ca``."""
    verifier = (PolicyBuilder().store(Store([ca.cert]))
                .time(datetime.fromtimestamp(at, timezone.utc))
                .build_server_verifier(x509.DNSName(name)))
    return verifier.verify(leaf, [])


def openssl_verify(tmp_path: Path, ca, leaf, at=NOW) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    need(os.path.exists("/usr/bin/openssl"), "openssl is not installed")
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem())
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(Encoding.PEM))
    return subprocess.run(
        ["openssl", "verify", "-attime", str(int(at)), "-purpose", "sslserver",
         "-CAfile", str(tmp_path / "ca.crt"), str(tmp_path / "leaf.pem")],
        capture_output=True, text=True, check=False)


# -- permitted domains -------------------------------------------------------------------

def test_permitted_domains_are_registrable_domains_of_the_catalogue_and_local_names() -> None:
    assert {"debian.org", "ubuntu.com", "pythonhosted.org", "pypi.org", "npmjs.org",
            "maven.org", "apache.org", "alpinelinux.org", "cachegate.internal"} <= set(DOMAINS)
    assert list(DOMAINS) == sorted(set(DOMAINS))
    assert not any(d.startswith("*") or d.count(".") != 1 for d in DOMAINS)


def test_permitted_domains_knows_two_label_suffixes_and_drops_covered_names() -> None:
    upstreams = (Upstream("x", ("mirror.example.co.uk", "*.archive.ubuntu.com")),)
    assert permitted_domains(upstreams, ("gw.ubuntu.com", "cachegate.internal")) == (
        "cachegate.internal", "example.co.uk", "ubuntu.com")


# -- the CA certificate ------------------------------------------------------------------

def test_ca_extensions(ca) -> None:  # type: ignore[no-untyped-def]
    ext = ca.cert.extensions
    bc = ext.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = ext.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert not ku.value.digital_signature
    nc = ext.get_extension_for_class(x509.NameConstraints)
    assert nc.critical
    assert [n.value for n in nc.value.permitted_subtrees] == list(DOMAINS)
    assert {n.value for n in nc.value.excluded_subtrees} == {
        ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")}
    ski = ext.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert ca.cert.not_valid_after_utc - ca.cert.not_valid_before_utc >= CA_LIFETIME
    assert ca.cert.subject == ca.cert.issuer


def test_ca_key_sizes() -> None:
    assert create_ca(DOMAINS, "rsa", True, NOW).key.key_size == 3072
    assert create_ca(DOMAINS, "ecdsa", True, NOW).key.curve.name == "secp256r1"


def test_name_constraints_can_be_switched_off() -> None:
    ca = create_ca(DOMAINS, "ecdsa", False, NOW)
    assert ca.permitted is None
    with pytest.raises(x509.ExtensionNotFound):
        ca.cert.extensions.get_extension_for_class(x509.NameConstraints)
    leaf = issue_leaf(ca, "www.google.com", new_leaf_key("ecdsa"), NOW)
    verify(ca, leaf, "www.google.com")  # unconstrained: anything goes (the twin below)


def test_missing_domains() -> None:
    ca = create_ca(("debian.org",), "ecdsa", True, NOW)
    assert missing_domains(ca, ("debian.org", "deb.debian.org", "npmjs.org")) == ("npmjs.org",)
    assert missing_domains(create_ca(("debian.org",), "ecdsa", False, NOW), ("x.org",)) == ()


# -- leaves ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["pypi.org", "deb.debian.org", "de.archive.ubuntu.com",
                                  "cachegate.internal"])
def test_leaf_verifies_as_a_chain(ca, leaf_key, name, tmp_path) -> None:  # type: ignore[no-untyped-def]
    leaf = issue_leaf(ca, name, leaf_key, NOW)
    chain = verify(ca, leaf, name)
    assert chain[-1] == ca.cert
    result = openssl_verify(tmp_path, ca, leaf)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "leaf.pem: OK" in result.stdout


def test_name_constraint_rejects_a_leaf_outside_it(ca, leaf_key, tmp_path) -> None:  # type: ignore[no-untyped-def]
    leaf = issue_leaf(ca, "www.google.com", leaf_key, NOW)  # what a leaked key could sign
    with pytest.raises(VerificationError, match="name constraint"):
        verify(ca, leaf, "www.google.com")
    result = openssl_verify(tmp_path, ca, leaf)
    assert result.returncode != 0
    assert "permitted subtree violation" in result.stdout + result.stderr


def test_leaf_for_the_wrong_name_does_not_verify(ca, leaf_key) -> None:  # type: ignore[no-untyped-def]
    leaf = issue_leaf(ca, "pypi.org", leaf_key, NOW)
    with pytest.raises(VerificationError):
        verify(ca, leaf, "files.pythonhosted.org")


def test_leaf_extensions_and_lifetime(ca, leaf_key) -> None:  # type: ignore[no-untyped-def]
    leaf = issue_leaf(ca, "registry.npmjs.org", leaf_key, NOW)
    ext = leaf.extensions
    san = ext.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["registry.npmjs.org"]
    assert ext.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH])
    ku = ext.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    assert not ext.get_extension_for_class(x509.BasicConstraints).value.ca
    now = datetime.fromtimestamp(NOW, timezone.utc)
    assert leaf.not_valid_before_utc == now - timedelta(hours=1)
    assert leaf.not_valid_after_utc == now + LEAF_LIFETIME
    assert leaf.not_valid_after_utc < ca.cert.not_valid_after_utc
    # the hour of backdating: a client whose clock is 30 minutes slow still accepts it
    verify(ca, leaf, "registry.npmjs.org", at=NOW - 1800)


def test_rsa_leaf_allows_key_encipherment(ca) -> None:  # type: ignore[no-untyped-def]
    leaf = issue_leaf(ca, "pypi.org", new_leaf_key("rsa"), NOW)
    assert leaf.extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment
    verify(ca, leaf, "pypi.org")


def test_leaf_for_a_name_too_long_for_a_common_name(ca, leaf_key, tmp_path) -> None:  # type: ignore[no-untyped-def]
    name = "a" * 60 + ".archive.ubuntu.com"
    leaf = issue_leaf(ca, name, leaf_key, NOW)
    assert len(leaf.subject) == 0
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical
    verify(ca, leaf, name)
    assert openssl_verify(tmp_path, ca, leaf).returncode == 0


def test_leaf_never_outlives_the_ca(ca, leaf_key) -> None:  # type: ignore[no-untyped-def]
    late = NOW + CA_LIFETIME.total_seconds() - 100 * DAY
    leaf = issue_leaf(ca, "pypi.org", leaf_key, late)
    assert leaf.not_valid_after_utc == ca.cert.not_valid_after_utc
    verify(ca, leaf, "pypi.org", at=late)


def test_leaf_cache_signs_once_per_name_and_renews_before_expiry() -> None:
    ca = create_ca(DOMAINS, "ecdsa", True, NOW)
    clock = Clock()
    clock.advance(NOW)
    leaves = LeafCache(ca, clock)
    first = leaves.certificate("pypi.org")
    assert leaves.certificate("pypi.org") is first
    leaves.certificate("files.pythonhosted.org")
    assert leaves.minted == 2
    clock.advance(LEAF_LIFETIME.total_seconds() - 10 * DAY)  # inside the renewal window
    renewed = leaves.certificate("pypi.org")
    assert renewed is not first and leaves.minted == 3
    assert renewed.public_key() == first.public_key()  # one leaf key per process
    verify(ca, renewed, "pypi.org", at=clock.seconds())


def test_leaf_cache_is_bounded() -> None:
    ca = create_ca(DOMAINS, "ecdsa", True, NOW)
    clock = Clock()
    clock.advance(NOW)
    leaves = LeafCache(ca, clock, max_names=2)
    for name in ("a.archive.ubuntu.com", "b.archive.ubuntu.com", "a.archive.ubuntu.com",
                 "c.archive.ubuntu.com", "a.archive.ubuntu.com", "b.archive.ubuntu.com"):
        leaves.certificate(name)
    assert leaves.minted == 4  # a, b, c, then b again: evicted as least recently used


# -- the store ---------------------------------------------------------------------------

def load(state: Path, domains=DOMAINS, constraints=True, now=NOW):  # type: ignore[no-untyped-def]
    return load_or_create_ca(state, domains, "ecdsa", constraints, now)


def test_store_creates_private_files_and_reuses_them(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = load(state)
    cert_path, key_path = ca_paths(state)
    assert cert_path == state / "ca" / "ca.crt" and key_path == state / "ca" / "ca.key"
    assert (state / "ca").stat().st_mode & 0o777 == 0o700
    assert key_path.stat().st_mode & 0o777 == 0o600
    assert b"PRIVATE KEY" in key_path.read_bytes()
    assert not (state / "ca.partial").exists()
    again = load(state, now=NOW + 30 * DAY)
    assert again.cert == first.cert and again.key_pem() == first.key_pem()
    assert export_pem(state) == first.cert_pem() == cert_path.read_bytes()


def test_store_tightens_a_loosened_key_file(tmp_path: Path) -> None:
    load(tmp_path)
    _, key_path = ca_paths(tmp_path)
    os.chmod(key_path, 0o644)
    load(tmp_path)
    assert key_path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("victim", ["ca.crt", "ca.key"])
def test_corrupt_file_is_an_error_never_a_new_ca(tmp_path: Path, victim: str) -> None:
    load(tmp_path)
    path = tmp_path / "ca" / victim
    path.write_bytes(b"-----BEGIN garbage-----\n")
    with pytest.raises(CAError, match=rf"^{path}: cannot load: "):
        load(tmp_path)
    assert path.read_bytes() == b"-----BEGIN garbage-----\n"


@pytest.mark.parametrize("victim", ["ca.crt", "ca.key"])
def test_half_a_ca_is_an_error_never_a_new_ca(tmp_path: Path, victim: str) -> None:
    load(tmp_path)
    path = tmp_path / "ca" / victim
    path.unlink()
    with pytest.raises(CAError, match=rf"^{path}: missing .*restore it.*`cachegate ca rotate`"):
        load(tmp_path)
    assert not path.exists()


def test_unreadable_key_is_an_error(tmp_path: Path) -> None:
    load(tmp_path)
    _, key_path = ca_paths(tmp_path)
    key_path.unlink()
    key_path.mkdir()  # unreadable even as root
    with pytest.raises(CAError, match=rf"^{key_path}: cannot read: "):
        load(tmp_path)


def test_key_of_another_ca_is_an_error(tmp_path: Path) -> None:
    load(tmp_path / "a")
    load(tmp_path / "b")
    _, key_a = ca_paths(tmp_path / "a")
    _, key_b = ca_paths(tmp_path / "b")
    key_a.write_bytes(key_b.read_bytes())
    with pytest.raises(CAError, match="does not match"):
        load(tmp_path / "a")


def test_a_stale_partial_ca_is_discarded(tmp_path: Path) -> None:
    (tmp_path / "ca.partial").mkdir()
    (tmp_path / "ca.partial" / "ca.key").write_bytes(b"half")
    load(tmp_path)
    assert not (tmp_path / "ca.partial").exists()
    assert (tmp_path / "ca" / "ca.crt").exists()


def test_catalogue_outgrowing_the_constraints_asks_for_rotation(tmp_path: Path) -> None:
    load(tmp_path, domains=("debian.org", "cachegate.internal"))
    with pytest.raises(CAError, match=r"do not permit pypi\.org.*`cachegate ca rotate`"):
        load(tmp_path, domains=("debian.org", "cachegate.internal", "pypi.org"))
    load(tmp_path, domains=("debian.org",))  # a narrower catalogue is fine


def test_unconstrained_ca_with_constraints_configured_asks_for_rotation(tmp_path: Path) -> None:
    load(tmp_path, constraints=False)
    load(tmp_path, domains=DOMAINS + ("example.net",), constraints=False)
    with pytest.raises(CAError, match="no name constraints.*`cachegate ca rotate`"):
        load(tmp_path, constraints=True)


def test_expired_ca_asks_for_rotation(tmp_path: Path) -> None:
    load(tmp_path)
    with pytest.raises(CAError, match="expired.*`cachegate ca rotate`"):
        load(tmp_path, now=NOW + CA_LIFETIME.total_seconds() + DAY)


def test_rotate_moves_the_old_ca_aside_and_permits_new_domains(tmp_path: Path) -> None:
    old = load(tmp_path, domains=("debian.org",))
    wider = ("debian.org", "pypi.org")
    new, moved = rotate_ca(tmp_path, wider, "rsa", True, NOW + DAY)
    assert moved == tmp_path / "ca.old-20260529T202640Z"
    assert (moved / "ca.crt").read_bytes() == old.cert_pem()
    assert (moved / "ca.key").stat().st_mode & 0o777 == 0o600
    assert new.cert != old.cert and new.key_type == "rsa"
    assert load_or_create_ca(tmp_path, wider, "rsa", True, NOW + DAY).cert == new.cert
    _, again = rotate_ca(tmp_path, wider, "ecdsa", True, NOW + DAY)  # same second
    assert again == tmp_path / "ca.old-20260529T202640Z-1"


def test_rotate_without_a_ca_creates_one(tmp_path: Path) -> None:
    new, moved = rotate_ca(tmp_path, DOMAINS, "ecdsa", True, NOW)
    assert moved is None and load(tmp_path).cert == new.cert


def test_a_state_dir_we_cannot_write_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(CAError, match=rf"^{tmp_path / 'file'}.*: cannot create the CA: "):
        load(tmp_path / "file" / "state")


def test_export_without_a_ca_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CAError, match="no CA yet"):
        export_pem(tmp_path)


def test_config_types_are_what_the_store_takes() -> None:
    """The lead passes ``Config.tls`` fields straight through."""
    from gateway.config import Config
    config = Config()
    ca = create_ca(permitted_domains(config.upstreams, config.dns.local_names),
                   config.tls.key_type, config.tls.name_constraints, NOW)
    assert "cachegate.internal" in (ca.permitted or ())
