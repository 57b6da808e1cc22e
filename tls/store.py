"""The CA's files: ``<state_dir>/ca/ca.crt`` and ``ca/ca.key`` (0600, in a 0700 directory).

Created on the first start and reused afterwards.  A new CA is written into
``<state_dir>/ca.partial/`` (the key file created 0600 before a byte of it is written), then
that directory is renamed to ``ca/`` in one step: a crash leaves either no CA or a whole
one, never a certificate without its key.  (Two ``*.partial`` files renamed one after the
other would leave a window with one file of the pair committed.)

A CA that is present but unreadable, corrupt, expired or too narrow for the catalogue is
an error naming the file: it is never silently replaced, because build images trust it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.logger import Logger

from tls.ca import CA, CAError, create_ca, missing_domains, utc

log = Logger()

CA_DIR = "ca"
PARTIAL_DIR = "ca.partial"
CERT_FILE = "ca.crt"
KEY_FILE = "ca.key"
ROTATE_HINT = "run `cachegate ca rotate` and make your images trust the new CA"


def ca_paths(state_dir: Path) -> tuple[Path, Path]:
    """``(ca.crt, ca.key)`` paths under ``state_dir``, whether or not they exist."""
    ca_dir = Path(state_dir) / CA_DIR
    return ca_dir / CERT_FILE, ca_dir / KEY_FILE


def load_or_create_ca(state_dir: Path, domains: tuple[str, ...], key_type: str,
                      name_constraints: bool, now: float) -> CA:
    """The CA in ``state_dir``, created on first use; ``CAError`` if it cannot serve
    ``domains`` (see ``check_ca``)."""
    state_dir = Path(state_dir)
    _remove_partial(state_dir)
    cert_path, key_path = ca_paths(state_dir)
    if not cert_path.exists() and not key_path.exists():
        return _create(state_dir, domains, key_type, name_constraints, now)
    for path in (cert_path, key_path):
        if not path.exists():
            raise CAError(f"{path}: missing while the rest of the CA is there: restore it, "
                          f"or {ROTATE_HINT}")
    ca = load_ca(state_dir)
    check_ca(ca, cert_path, domains, key_type, name_constraints, now)
    return ca


def rotate_ca(state_dir: Path, domains: tuple[str, ...], key_type: str,
              name_constraints: bool, now: float) -> tuple[CA, Path | None]:
    """Move the current CA aside to ``ca.old-<UTC time>/`` and create a new one.

    Returns the new CA and where the old one went (None when there was none).
    """
    state_dir = Path(state_dir)
    _remove_partial(state_dir)
    ca_dir = state_dir / CA_DIR
    old = None
    if ca_dir.exists():
        old = _unused(state_dir / f"ca.old-{utc(now):%Y%m%dT%H%M%SZ}")
        try:
            os.rename(ca_dir, old)
        except OSError as e:
            raise CAError(f"{ca_dir}: cannot move it aside: {e.strerror}") from None
        log.info("moved the old CA aside to {path}", path=str(old))
    return _create(state_dir, domains, key_type, name_constraints, now), old


def export_pem(state_dir: Path) -> bytes:
    """The CA certificate as PEM (what `cachegate ca export` prints)."""
    cert_path, _ = ca_paths(state_dir)
    if not cert_path.exists():
        raise CAError(f"{cert_path}: no CA yet: `cachegate serve` creates it on first start")
    return _load_cert(cert_path).public_bytes(serialization.Encoding.PEM)


def load_ca(state_dir: Path) -> CA:
    """Read and parse both files; ``CAError`` naming the file when either is unusable."""
    cert_path, key_path = ca_paths(state_dir)
    cert, key = _load_cert(cert_path), _load_key(key_path)
    if _spki(cert.public_key()) != _spki(key.public_key()):
        raise CAError(f"{key_path}: does not match the certificate in {cert_path}")
    _tighten(key_path.parent, 0o700)
    _tighten(key_path, 0o600)
    return CA(cert, key)


def check_ca(ca: CA, cert_path: Path, domains: tuple[str, ...], key_type: str,
             name_constraints: bool, now: float) -> None:
    """``CAError`` when the CA has expired or would sign certificates clients reject."""
    if utc(now) >= ca.cert.not_valid_after_utc:
        raise CAError(f"{cert_path}: the CA expired on "
                      f"{ca.cert.not_valid_after_utc:%Y-%m-%d}: {ROTATE_HINT}")
    if name_constraints and ca.permitted is None:
        raise CAError(f"{cert_path}: the CA has no name constraints but "
                      f"tls.name_constraints is on: {ROTATE_HINT}")
    missing = missing_domains(ca, domains)
    if missing:
        raise CAError(f"{cert_path}: the CA's name constraints do not permit "
                      f"{', '.join(missing)}, which the catalogue now needs: {ROTATE_HINT}")
    if ca.key_type != key_type:
        log.warn("the CA key is {actual}, tls.key_type says {wanted}: keeping it until "
                 "`cachegate ca rotate`", actual=ca.key_type, wanted=key_type)


def _create(state_dir: Path, domains: tuple[str, ...], key_type: str,
            name_constraints: bool, now: float) -> CA:
    ca = create_ca(domains, key_type, name_constraints, now)
    try:
        _commit(ca, state_dir)
    except OSError as e:
        raise CAError(f"{e.filename or state_dir}: cannot create the CA: {e.strerror}") from None
    log.info("created a new CA in {path} (name constraints: {permitted})",
             path=str(state_dir / CA_DIR), permitted=", ".join(ca.permitted or ("none",)))
    return ca


def _commit(ca: CA, state_dir: Path) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    partial = state_dir / PARTIAL_DIR
    partial.mkdir(mode=0o700)
    _write_new(partial / KEY_FILE, ca.key_pem(), 0o600)
    _write_new(partial / CERT_FILE, ca.cert_pem(), 0o644)
    _fsync_dir(partial)
    os.replace(partial, state_dir / CA_DIR)  # replaces an empty ca/, fails on a full one
    _fsync_dir(state_dir)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` before any byte is in it (never over an existing file)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_partial(state_dir: Path) -> None:
    """A ``ca.partial/`` left by a crash mid-creation was never trusted by anyone."""
    partial = state_dir / PARTIAL_DIR
    if partial.exists():
        log.warn("removing {path}, left by an interrupted CA creation", path=str(partial))
        shutil.rmtree(partial)


def _unused(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        candidate, n = path.with_name(f"{path.name}-{n}"), n + 1
    return candidate


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise CAError(f"{path}: cannot read: {e.strerror}") from None


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_read(path))
    except ValueError as e:
        raise CAError(f"{path}: cannot load: {e}") from None


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(_read(path), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise CAError(f"{path}: cannot load: {e}") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise CAError(f"{path}: cannot load: not an ECDSA or RSA key")
    return key


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _tighten(path: Path, mode: int) -> None:
    """Restore the intended mode if someone loosened it (the key must stay private)."""
    current = path.stat().st_mode & 0o777
    if current & ~mode:
        log.warn("{path} had mode {current}; setting {mode}", path=str(path),
                 current=f"{current:o}", mode=f"{mode:o}")
        os.chmod(path, mode)
