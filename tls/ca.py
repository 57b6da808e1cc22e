"""The local CA as a pure builder: keys, the self-signed CA certificate, its name constraints.

No file or clock access here: ``now`` is POSIX seconds (``reactor.seconds()``), and
``tls.store`` reads and writes the files.  The CA carries critical X.509 Name Constraints
permitting only the DNS subtrees of the catalogue's registrable domains and the local names,
so a leaked ``ca.key`` cannot impersonate any other site to a client that trusts it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Iterable, Union

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

if TYPE_CHECKING:
    from gateway.cache.rules import Upstream

PrivateKey = Union[ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey]

KEY_TYPES = ("ecdsa", "rsa")
# P-256 is what every TLS client supports and signs in microseconds, which matters because
# a leaf is signed on the first handshake for each name.
EC_CURVE = ec.SECP256R1
# The CA lives ten years, past 2030, when NIST SP 800-57 retires 2048-bit RSA.
CA_RSA_BITS = 3072
# Ten years: the CA is baked into build images, and every rotation means rebuilding them.
CA_LIFETIME = timedelta(days=3650)
# Containers and VMs with a drifting clock must not see a certificate from the future.
CLOCK_SKEW = timedelta(hours=1)

# Public suffixes under which the registrable domain has three labels.  A short fixed list
# rather than the Public Suffix List: the catalogue holds a handful of package hosts, and a
# user entry under a suffix missing here only gets a broader (two-label) constraint.
TWO_LABEL_SUFFIXES = frozenset({
    "co.uk", "org.uk", "ac.uk", "gov.uk", "co.jp", "ne.jp", "or.jp", "ac.jp", "com.au",
    "net.au", "org.au", "edu.au", "co.nz", "org.nz", "com.br", "com.cn", "net.cn", "org.cn",
    "co.in", "co.kr", "co.za", "com.tw", "com.mx", "com.ar", "com.tr", "com.sg", "com.hk",
})


class CAError(Exception):
    """The CA cannot be used as it is; ``str()`` names the file (when any) and the reason."""


@dataclass(frozen=True)
class CA:
    cert: x509.Certificate
    key: PrivateKey

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        """PKCS#8, unencrypted: the file's 0600 mode is its protection."""
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    @property
    def permitted(self) -> tuple[str, ...] | None:
        """The permitted DNS subtrees, or None when the CA is not name-constrained."""
        try:
            ext = self.cert.extensions.get_extension_for_class(x509.NameConstraints)
        except x509.ExtensionNotFound:
            return None
        subtrees = ext.value.permitted_subtrees or ()
        return tuple(s.value for s in subtrees if isinstance(s, x509.DNSName))

    @property
    def key_type(self) -> str:
        return "rsa" if isinstance(self.key, rsa.RSAPrivateKey) else "ecdsa"


def utc(now: float) -> datetime:
    return datetime.fromtimestamp(now, timezone.utc)


def new_key(key_type: str, rsa_bits: int) -> PrivateKey:
    if key_type == "ecdsa":
        return ec.generate_private_key(EC_CURVE())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    raise ValueError(f"key type must be one of {', '.join(KEY_TYPES)}, not {key_type!r}")


def registrable_domain(host: str) -> str:
    """``*.archive.ubuntu.com`` → ``ubuntu.com``; ``www.example.co.uk`` → ``example.co.uk``.

    The last two labels, or three under a suffix in ``TWO_LABEL_SUFFIXES``.
    """
    labels = host.lower().rstrip(".").removeprefix("*.").split(".")
    keep = 3 if ".".join(labels[-2:]) in TWO_LABEL_SUFFIXES else 2
    return ".".join(labels[-keep:])


def within(name: str, domain: str) -> bool:
    """Whether ``name`` is ``domain`` or below it (a DNS name-constraint subtree)."""
    return name == domain or name.endswith("." + domain)


def permitted_domains(upstreams: Iterable[Upstream], local_names: Iterable[str]) -> tuple[str, ...]:
    """The DNS subtrees the CA must permit: each catalogue host's registrable domain, plus
    the local names exactly (they are ours; their parent domain need not be).  Sorted, with
    names already inside another subtree left out."""
    wanted = {registrable_domain(h) for u in upstreams for h in u.hosts}
    wanted |= {n.lower().rstrip(".") for n in local_names}
    return tuple(sorted(d for d in wanted
                        if not any(d != other and within(d, other) for other in wanted)))


def missing_domains(ca: CA, domains: Iterable[str]) -> tuple[str, ...]:
    """The ``domains`` that ``ca``'s name constraints do not permit (none if unconstrained)."""
    permitted = ca.permitted
    if permitted is None:
        return ()
    return tuple(d for d in domains if not any(within(d, p) for p in permitted))


def create_ca(domains: Iterable[str], key_type: str, name_constraints: bool, now: float) -> CA:
    """A new self-signed CA, limited to ``domains`` when ``name_constraints`` is set."""
    key = new_key(key_type, CA_RSA_BITS)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    # The key id in the name keeps two build hosts' CAs apart in one trust store.
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cachegate"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"cachegate local CA {ski.digest[:4].hex()}"),
    ])
    start = utc(now)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - CLOCK_SKEW)
        .not_valid_after(start + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                       critical=False)
    )
    if name_constraints:
        builder = builder.add_extension(_name_constraints(domains), critical=True)
    return CA(builder.sign(key, hashes.SHA256()), key)


_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False, content_commitment=False, key_encipherment=False,
    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
    encipher_only=False, decipher_only=False)


def _name_constraints(domains: Iterable[str]) -> x509.NameConstraints:
    """Permit the DNS subtrees; exclude every IP address, since we never certify one and a
    DNS-only constraint would leave IP SANs unconstrained."""
    permitted = [x509.DNSName(d) for d in sorted(set(domains))]
    if not permitted:
        raise CAError("name constraints need at least one domain to permit "
                      "(the catalogue and local names are empty)")
    excluded = [x509.IPAddress(ipaddress.ip_network("0.0.0.0/0")),
                x509.IPAddress(ipaddress.ip_network("::/0"))]
    return x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=excluded)
