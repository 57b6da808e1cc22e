"""Cache keys: host + path + query, plus the normalised request headers a response
``Vary``-ies on, so an npm client asking for the abbreviated ("corgi") packument never gets
the full one, and a client that cannot gunzip never gets gzip."""

from __future__ import annotations

import re
from urllib.parse import unquote

# What a request target may hold (RFC 3986: printable ASCII; anything else must be
# percent-encoded), and what it may not hold even percent-encoded: control characters.
_TARGET = re.compile(r"/[\x21-\x7e]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Codings a registry may answer in; anything else in Accept-Encoding changes nothing.
_CODINGS = ("br", "deflate", "gzip", "zstd")


def base_key(host: str, path_and_query: str) -> str:
    """``host/path?query`` with the host lower-cased and without a default port."""
    return host.lower().rstrip(".") + path_and_query


def normalise_path(raw: str) -> str | None:
    """The request target's path and query, or None when it could escape the key space.

    Percent-encoded slashes, dot segments and control characters are refused rather than
    normalised: a registry never needs them, and normalising them differently from the
    upstream would let one URL poison the cache entry of another.  Bytes a URI cannot
    carry (spaces, non-ASCII) are refused too: no upstream request could be made of them.
    """
    if not _TARGET.fullmatch(raw):
        return None
    path, _, query = raw.partition("?")
    decoded = unquote(path)
    if _CONTROL.search(decoded) or "\\" in decoded or "%2f" in path.lower() and "/@" not in path:
        return None
    if any(seg in (".", "..") for seg in decoded.split("/")):
        return None
    return raw


def normalise_vary_value(name: str, value: str | None) -> str:
    """One request header value, reduced to what changes the response."""
    if value is None:
        return ""
    if name == "accept-encoding":
        offered = {part.split(";")[0].strip().lower() for part in value.split(",")}
        return ",".join(c for c in _CODINGS if c in offered)
    return ",".join(part.strip().replace(" ", "") for part in value.lower().split(","))


def variant_key(base: str, vary: tuple[str, ...], headers: dict[str, str]) -> str:
    """The key of the variant of ``base`` that a request with ``headers`` selects."""
    if not vary:
        return base
    parts = (f"{name}={normalise_vary_value(name, headers.get(name))}" for name in vary)
    return base + "\n" + "\n".join(parts)


def parse_vary(value: str | None) -> tuple[str, ...]:
    """The response's ``Vary`` as sorted lower-case field names."""
    if not value:
        return ()
    return tuple(sorted({v.strip().lower() for v in value.split(",") if v.strip()}))
