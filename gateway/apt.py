"""apt index consistency: a suite's indexes belong to one generation of its ``InRelease``.

Mirrors replace ``dists/<suite>/`` in place.  If we served a new ``InRelease`` with a
``Packages`` cached from the previous generation, apt would report "Hash Sum mismatch".
So when a suite's ``InRelease`` (or ``Release``) changes, every index of that suite stored
before the change is revalidated before it is served again.
"""

from __future__ import annotations

import re

_SUITE = re.compile(r"^(.*/dists/[^/]+/)(.*)$")
_RELEASE_FILES = frozenset({"InRelease", "Release", "Release.gpg"})


def suite_of(base_key: str) -> str | None:
    """``host/…/dists/<suite>/`` for a key inside a suite, else None."""
    m = _SUITE.match(base_key.partition("?")[0])
    return m.group(1) if m else None


def is_release_file(base_key: str) -> bool:
    """Whether the key is the suite's signed release file (its generation marker)."""
    m = _SUITE.match(base_key.partition("?")[0])
    return bool(m) and m.group(2) in _RELEASE_FILES
