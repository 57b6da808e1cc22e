"""The HTTPS server's TLS settings: a certificate per SNI name, chosen during the handshake.

``SNIContexts.options`` is a Twisted ``CertificateOptions`` whose front context has no
certificate; its ``contextForServerName`` hook switches each connection to the context of
the name the client asked for, minting the leaf on first use.  A name that is not allowed,
or no name at all, keeps the front context: with no certificate to offer, the handshake
fails.  (Twisted's hook rather than our own ``set_tlsext_servername_callback``: it already
aborts the connection cleanly if the lookup raises.)

Session resumption: OpenSSL looks a session up (its cache, its ticket keys) on the context
a connection *started* with: the front one, the same for every connection in the process.
So resumption does not depend on which per-name context a name switched to, nor on that
context having been rebuilt since (tests/test_tls_server.py checks both, TLS 1.2 and 1.3;
it also held with a random session-id context on every per-name context, so none is set).  Every context gets the same options, so the switch never
changes whether tickets are on (OpenSSL once mishandled that: openssl/openssl#1098).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from functools import cached_property
from typing import Any, Callable

from cryptography import x509
from OpenSSL import SSL
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.logger import Logger

from tls.leaf import MAX_CACHED_NAMES, LeafCache

log = Logger()

# The gateway speaks HTTP/1.1 only (twisted.web adds h2 itself if the h2 package is present).
ALPN_PROTOCOLS = (b"http/1.1",)
_HOSTNAME = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*"
                       r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def server_options(**kwargs: Any) -> CertificateOptions:
    """TLS 1.2+, ALPN http/1.1, resumption by session id (TLS 1.2 clients without ticket
    support) and by stateless tickets (all others)."""
    return CertificateOptions(raiseMinimumTo=TLSVersion.TLSv1_2,
                              acceptableProtocols=list(ALPN_PROTOCOLS), enableSessions=True,
                              enableSessionTickets=True, **kwargs)


class SNIContexts:
    """Per-name ``SSL.Context`` objects for the names ``allowed`` accepts.

    ``allowed(name)`` receives a lower-case, syntactically valid DNS name.
    """

    def __init__(self, leaves: LeafCache, allowed: Callable[[str], bool],
                 max_names: int = MAX_CACHED_NAMES) -> None:
        self.leaves, self.allowed, self.max_names = leaves, allowed, max_names
        self.refused = 0
        self._contexts: OrderedDict[str, tuple[x509.Certificate, SSL.Context]] = OrderedDict()

    @cached_property
    def options(self) -> CertificateOptions:
        """For ``reactor.listenSSL``, ``SSL4ServerEndpoint``, ``TLSMemoryBIOFactory`` or
        ``transport.startTLS``: the front context, which switches per SNI name."""
        return server_options(contextForServerName=self.context_for)

    def context_for(self, server_name: bytes | None) -> SSL.Context | None:
        """The context for the client's SNI name, or None to fail the handshake."""
        name = _parse_name(server_name)
        if name is None or not self.allowed(name):
            self.refused += 1
            why = ("no SNI" if not server_name else "not a valid name" if name is None
                   else "not allowed")
            shown = server_name.decode("ascii", "backslashreplace") if server_name else None
            log.warn("TLS: no certificate for {name}: {why}", name=shown, why=why)
            return None
        cert = self.leaves.certificate(name)
        cached = self._contexts.get(name)
        if cached is None or cached[0] is not cert:
            cached = (cert, self._build(cert))
        self._contexts[name] = cached
        self._contexts.move_to_end(name)
        while len(self._contexts) > self.max_names:
            self._contexts.popitem(last=False)
        return cached[1]

    def _build(self, cert: x509.Certificate) -> SSL.Context:
        """The leaf, its key and the CA certificate (sent so tools can show the chain)."""
        return server_options(privateKey=self.leaves.key, certificate=cert,
                              extraCertChain=[self.leaves.ca.cert]).getContext()


def _parse_name(server_name: bytes | None) -> str | None:
    if not server_name:
        return None
    try:
        name = server_name.decode("ascii").lower()
    except UnicodeDecodeError:
        return None
    return name if _HOSTNAME.fullmatch(name) else None


def sni_name(transport: object) -> str | None:
    """The SNI name a TLS connection negotiated (lower case), or None for plain TCP or none.

    ``transport`` is a protocol's transport (``request.channel.transport`` in twisted.web),
    after ``listenSSL``, a TLS endpoint or ``startTLS``.
    """
    get_handle = getattr(transport, "getHandle", None)
    handle = get_handle() if get_handle is not None else None
    if not isinstance(handle, SSL.Connection):
        return None
    name = handle.get_servername()
    return name.decode("ascii").lower() if name else None
