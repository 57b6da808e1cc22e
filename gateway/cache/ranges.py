"""``Range`` requests (RFC 9110 14): one byte range served as 206, anything else whole."""

from __future__ import annotations

from typing import Literal

ByteRange = tuple[int, int]  # first and last byte, inclusive
UNSATISFIABLE: Literal["unsatisfiable"] = "unsatisfiable"


def parse_range(header: str | None, length: int) -> ByteRange | None | Literal["unsatisfiable"]:
    """The single range asked for in ``header`` of a ``length``-byte body.

    None means "serve the whole body with 200": no header, a malformed one, or several
    ranges (allowed by RFC 9110 14.2).  ``UNSATISFIABLE`` means 416.
    """
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash or not (first.isdigit() or last.isdigit()) or \
            (first and not first.isdigit()) or (last and not last.isdigit()):
        return None
    if not first:  # suffix range: the last N bytes
        suffix = int(last)
        if suffix == 0:
            return UNSATISFIABLE
        return max(0, length - suffix), length - 1
    start = int(first)
    end = min(int(last), length - 1) if last else length - 1
    if last and int(last) < start:
        return None
    if start >= length:
        return UNSATISFIABLE
    return start, end


def if_range_allows(if_range: str | None, etag: str | None, last_modified: str | None) -> bool:
    """``If-Range``: the range applies only if the validator still matches (strong)."""
    if if_range is None:
        return True
    if if_range.startswith(('"', 'W/"')):
        return etag is not None and not if_range.startswith("W/") and if_range == etag
    return last_modified is not None and if_range == last_modified
