"""Container images: the registries the mirror serves, how a mirror request names one, and
the small pure pieces of the registry protocol (Accept classes, Bearer challenges, keys).

Clients reach the mirror endpoint (``[images] listen``) in three ways, and ``route`` turns
each into (registry, repository):

- dockerd's ``registry-mirrors``: ``/v2/library/debian/manifests/12`` is Docker Hub (an
  official image without ``library/`` gets it added);
- containerd's ``hosts.toml``: ``/v2/owner/repo/manifests/1?ns=ghcr.io``;
- a ``registries.conf`` mirror with a path (``location = "127.0.0.1:5000/ghcr.io"``):
  ``/v2/ghcr.io/owner/repo/manifests/1``, a first component that is a host name.

A registry outside the catalogue is not served (404: the client goes to it directly).
Everything here is pure: no I/O, no clock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qs, quote, urlencode, urljoin, urlsplit

from gateway.cache.rules import Package, host_matches


@dataclass(frozen=True)
class Registry:
    """One upstream registry: the names clients use for it and where its API is.

    ``api_host`` is where requests go (Docker Hub's ``docker.io`` is served by
    ``registry-1.docker.io``); empty means the name the client used (``*.gcr.io``).
    ``origin`` replaces ``https://<api host>`` (a parent mirror, or the tests' fake).
    ``credentials_file`` holds ``user:password`` (or a token) for this registry's token
    realm: never inline in the config, never logged."""

    name: str
    hosts: tuple[str, ...]  # exact names or "*.suffix"
    api_host: str = ""
    origin: str = ""
    credentials_file: str = ""

    def serves(self, host: str) -> bool:
        return any(host_matches(pattern, host) for pattern in self.hosts)

    def base_url(self, host: str) -> str:
        """``scheme://host[:port][/prefix]`` that ``/v2/...`` is appended to."""
        if self.origin:
            return self.origin.rstrip("/")
        return f"https://{self.api_host or host}"


DOCKER_HUB = "docker.io"

REGISTRIES: tuple[Registry, ...] = (
    Registry("dockerhub", ("docker.io", "registry-1.docker.io", "index.docker.io"),
             "registry-1.docker.io"),
    Registry("ghcr", ("ghcr.io",)),
    Registry("quay", ("quay.io",)),
    Registry("gcr", ("gcr.io", "*.gcr.io")),
    Registry("artifact-registry", ("*-docker.pkg.dev",)),
    Registry("k8s", ("registry.k8s.io",)),
    Registry("ecr-public", ("public.ecr.aws",)),
    Registry("mcr", ("mcr.microsoft.com",)),
)


def find_registry(registries: tuple[Registry, ...], host: str) -> Registry | None:
    """The entry serving ``host`` (exact names before wildcards); ``*-docker.pkg.dev``
    matches ``europe-west1-docker.pkg.dev``."""
    host = host.lower().rstrip(".")
    for registry in registries:
        if host in registry.hosts:
            return registry
    for registry in registries:
        if any(_wildcard(p, host) for p in registry.hosts if "*" in p):
            return registry
    return None


def _wildcard(pattern: str, host: str) -> bool:
    if pattern.startswith("*."):
        return host_matches(pattern, host)
    prefix, _, suffix = pattern.partition("*")  # "*-docker.pkg.dev"
    return host.startswith(prefix) and host.endswith(suffix) and \
        len(host) > len(prefix) + len(suffix) and "." not in host[len(prefix):-len(suffix)]


# -- the request -----------------------------------------------------------------------

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_NAME = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_PATH = re.compile(r"^/v2/(?P<name>.+)/(?P<kind>manifests|blobs)/(?P<ref>[^/]+)$")
_HOST_COMPONENT = re.compile(r"^(localhost|[a-z0-9-]+(\.[a-z0-9-]+)+)(:\d+)?$|^[a-z0-9.-]+:\d+$")

Kind = Literal["manifests", "blobs"]


@dataclass(frozen=True)
class MirrorRequest:
    """A read the mirror answers: one manifest (by tag or digest) or one blob."""

    host: str  # the registry name as the client gave it (docker.io for Hub)
    name: str  # the repository, e.g. "library/debian"
    kind: Kind
    reference: str  # a tag, or "sha256:<hex>"

    @property
    def by_digest(self) -> bool:
        return self.reference.startswith("sha256:")

    @property
    def path(self) -> str:
        """The upstream path: ``/v2/<name>/<kind>/<reference>``."""
        return f"/v2/{self.name}/{self.kind}/{self.reference}"


def image_package(target: MirrorRequest, digest: str) -> Package | None:
    """A manifest's purl parts (``pkg:oci/<name>@sha256:…?repository_url=…&tag=…``): an
    image, as a build record's component; a blob (config, layer) is none."""
    if target.kind != "manifests" or not digest.startswith("sha256:"):
        return None
    qualifiers = [("repository_url", f"{target.host}/{target.name}")]
    if not target.by_digest:
        qualifiers.append(("tag", target.reference))
    return Package("oci", target.name.rsplit("/", 1)[-1], digest, "", tuple(qualifiers))


class NotARead(ValueError):
    """Not a manifest or blob read (another API, or a malformed name or reference)."""


def parse_request(path_and_query: str) -> MirrorRequest:
    """The mirror request a client's target names; ``NotARead`` otherwise.

    Unsupported digests (sha512, …) are refused here too: only sha256 is stored."""
    path, _, query = path_and_query.partition("?")
    m = _PATH.match(path)
    if not m:
        raise NotARead("not /v2/<name>/(manifests|blobs)/<reference>")
    name, kind, ref = m.group("name"), m.group("kind"), m.group("ref")
    ns = parse_qs(query).get("ns", [""])[0].lower().rstrip(".")
    first, _, rest = name.partition("/")
    if ns:
        host = ns
    elif rest and _HOST_COMPONENT.match(first):
        host, name = first, rest
    else:
        host = DOCKER_HUB
    if not _NAME.fullmatch(name):
        raise NotARead(f"bad repository name {name!r}")
    if host == DOCKER_HUB or host in ("index.docker.io", "registry-1.docker.io"):
        host = DOCKER_HUB
        if "/" not in name:
            name = "library/" + name
    if _DIGEST.fullmatch(ref):
        pass
    elif kind == "blobs" or ":" in ref or not _TAG.fullmatch(ref):
        raise NotARead(f"bad reference {ref!r}")
    return MirrorRequest(host, name, kind, ref)  # type: ignore[arg-type]


# -- manifests and their media types -----------------------------------------------------

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_V1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
MANIFEST_TYPES = (OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST, DOCKER_V1_SIGNED)
# A manifest is a small JSON document; a larger one is refused rather than buffered.
MAX_MANIFEST = 4 * 2**20


def accept_class(accept: str | None) -> str:
    """The manifest media types a client accepts, in a canonical order: what a tag's answer
    varies on (a client taking lists gets the list, one that does not gets a manifest)."""
    offered = set()
    for part in (accept or "").split(","):
        media_type, _, params = part.strip().partition(";")
        media_type = media_type.strip().lower()
        if _refused(params):
            continue
        if media_type in MANIFEST_TYPES or media_type in ("*/*", "application/*"):
            offered.add(media_type)
    if "*/*" in offered or "application/*" in offered:
        return ",".join(MANIFEST_TYPES[:4])
    return ",".join(t for t in MANIFEST_TYPES if t in offered)


def _refused(params: str) -> bool:
    """``;q=0`` (or ``0.0``): the client says it does not take this type."""
    m = re.search(r"(?:^|;)\s*q\s*=\s*([0-9.]+)", params)
    try:
        return m is not None and float(m.group(1)) == 0
    except ValueError:
        return False


def accept_header(klass: str) -> str:
    """The Accept we send upstream for a class (a registry given none answers schema 1)."""
    return ", ".join(klass.split(",")) if klass else ", ".join(MANIFEST_TYPES[:4])


# -- store keys ------------------------------------------------------------------------

def object_key(kind: Kind, digest: str) -> str:
    """Manifests and blobs by digest, one namespace across repositories and registries:
    the same base layer from two registries is stored once."""
    return f"images/{kind}/{digest}"


def tag_key(registry: str, name: str, tag: str, klass: str) -> str:
    """The small record of what a tag pointed at, per Accept class."""
    return f"images-tag\n{registry}\n{name}\n{tag}\n{klass}"


# -- upstream authentication -------------------------------------------------------------

@dataclass(frozen=True)
class Challenge:
    scheme: str  # "bearer" or "basic"
    params: dict[str, str]


_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*,?')


def parse_challenge(value: str | None) -> Challenge | None:
    """A ``WWW-Authenticate`` value: ``Bearer realm="…",service="…",scope="…"``."""
    if not value:
        return None
    scheme, _, rest = value.strip().partition(" ")
    params = {}
    for m in _PARAM.finditer(rest):
        params[m.group(1).lower()] = m.group(2) if m.group(2) is not None else m.group(3)
    return Challenge(scheme.lower(), params)


def token_url(challenge: Challenge, name: str) -> str | None:
    """Where to ask for a pull token for repository ``name``; None if the realm is not an
    http(s) URL."""
    realm = challenge.params.get("realm", "")
    if urlsplit(realm).scheme not in ("http", "https"):
        return None
    query = {}
    if challenge.params.get("service"):
        query["service"] = challenge.params["service"]
    query["scope"] = challenge.params.get("scope") or f"repository:{name}:pull"
    separator = "&" if "?" in realm else "?"
    return realm + separator + urlencode(query, quote_via=quote, safe=":/")


# A token with no stated lifetime is good for 60 s (the distribution spec's default).
DEFAULT_TOKEN_LIFETIME = 60
# Renew a little early: a token that expires while a request is on its way is a 401.
TOKEN_MARGIN = 10


def token_from(answer: dict, now: float) -> tuple[str, float] | None:
    """(token, expiry time) from a token endpoint's JSON answer."""
    token = answer.get("token") or answer.get("access_token")
    if not isinstance(token, str) or not token:
        return None
    lifetime = answer.get("expires_in")
    if not isinstance(lifetime, (int, float)) or isinstance(lifetime, bool) or lifetime <= 0:
        lifetime = DEFAULT_TOKEN_LIFETIME
    return token, now + max(lifetime - TOKEN_MARGIN, 1)


def redirect_target(url: str, location: str) -> str | None:
    """The absolute URL a redirect points at; None unless http(s)."""
    target = urljoin(url, location)
    return target if urlsplit(target).scheme in ("http", "https") else None


def same_origin(a: str, b: str) -> bool:
    """Whether credentials for ``a`` may go to ``b`` (scheme, host and port equal)."""
    def origin(url: str) -> tuple:
        parts = urlsplit(url)
        return parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    return origin(a) == origin(b)
