"""Leaf certificates: one exact name each, signed by the local CA on first use.

``issue_leaf`` is the pure builder; ``LeafCache`` holds the process's one leaf key and the
certificates minted so far, so each name is signed once per process (unless evicted).
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from tls.ca import CA, CLOCK_SKEW, PrivateKey, new_key, utc

log = Logger()

# 397 days: the CA/Browser Forum ceiling for server certificates, which some clients
# (Apple's) enforce whatever the root; well inside the CA's ten years.
LEAF_LIFETIME = timedelta(days=397)
# A process up for a year re-mints a leaf this long before it expires.
RENEW_BEFORE = timedelta(days=30)
# Leaves live a year and their key only as long as the process, never on disk: 2048-bit
# RSA (what public CAs issue) is ample and generates in well under a second at start.
LEAF_RSA_BITS = 2048
# Bounds memory if clients probe many names under a wildcard entry (*.archive.ubuntu.com);
# a real catalogue has far fewer names, so nothing is re-signed in practice.
MAX_CACHED_NAMES = 4096
# A CN longer than this is invalid (RFC 5280 ub-common-name); the SAN alone names it then.
MAX_CN_LENGTH = 64


def new_leaf_key(key_type: str) -> PrivateKey:
    return new_key(key_type, LEAF_RSA_BITS)


def issue_leaf(ca: CA, name: str, leaf_key: PrivateKey, now: float) -> x509.Certificate:
    """A server certificate for exactly ``name``, signed by ``ca``, valid from an hour ago."""
    start = utc(now)
    has_cn = len(name) <= MAX_CN_LENGTH
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)] if has_cn else [])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(start - CLOCK_SKEW, ca.cert.not_valid_before_utc))
        .not_valid_after(min(start + LEAF_LIFETIME, ca.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(leaf_key), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        # RFC 5280: the SAN is critical when the subject is empty.
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=not has_cn)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()),
                       critical=False)
        .add_extension(_authority_key_id(ca), critical=False)
    )
    return builder.sign(ca.key, hashes.SHA256())


def _key_usage(leaf_key: PrivateKey) -> x509.KeyUsage:
    """keyEncipherment only for RSA, whose key may carry a TLS 1.2 RSA key exchange."""
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False,
        key_encipherment=isinstance(leaf_key, rsa.RSAPrivateKey), data_encipherment=False,
        key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False,
        decipher_only=False)


def _authority_key_id(ca: CA) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


class LeafCache:
    """The process's leaf key and the certificates minted with it, by name (LRU-bounded).

    Names are not checked here: the caller decides which names deserve a certificate.
    """

    def __init__(self, ca: CA, clock: IReactorTime, key_type: str = "ecdsa",
                 max_names: int = MAX_CACHED_NAMES) -> None:
        self.ca, self.clock, self.max_names = ca, clock, max_names
        self.key = new_leaf_key(key_type)
        self.minted = 0
        self._certs: OrderedDict[str, x509.Certificate] = OrderedDict()

    def certificate(self, name: str) -> x509.Certificate:
        """The leaf for ``name``, minted now if there is none still comfortably valid."""
        cert = self._certs.get(name)
        now = self.clock.seconds()
        if cert is None or self._due(cert, now):
            cert = issue_leaf(self.ca, name, self.key, now)
            self.minted += 1
            log.info("minted a certificate for {name}", name=name)
        self._certs[name] = cert
        self._certs.move_to_end(name)
        while len(self._certs) > self.max_names:
            self._certs.popitem(last=False)
        return cert

    def _due(self, cert: x509.Certificate, now: float) -> bool:
        """Near expiry, unless it already ends with the CA (a new one could not last longer)."""
        ends = cert.not_valid_after_utc
        return utc(now) >= ends - RENEW_BEFORE and ends < self.ca.cert.not_valid_after_utc
