"""Runtime edits of the upstream catalogue: ``PUT``/``DELETE /api/upstreams/NAME``.

An edit is what an ``[upstreams.NAME]`` table of the config file holds (``hosts``,
``origin``, ``scheme``, ``rules``, ``enabled``), as JSON, checked by the config's own
validators.  Edits live in ``<state_dir>/upstreams.json`` and are applied at every start on
top of the upstreams the config file gave: the static config stays the base, an edit of a
name replaces any earlier edit of it, and deleting an edit restores the entry as the
config file left it.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from gateway.cache.rules import Upstream
# The config file's validator, so an edit is judged exactly as the same table in
# cachegate.toml would be.
from gateway.config import Config, ConfigError, apply_upstream_tables

EDITS_FILE = "upstreams.json"

Edits = dict[str, dict[str, Any]]


def edits_path(state_dir: Path) -> Path:
    return Path(state_dir) / EDITS_FILE


def load_edits(state_dir: Path) -> Edits:
    """The saved edits (none when the file is absent); ``ConfigError`` naming the file
    when it cannot be read or is not a JSON object of tables."""
    path = edits_path(state_dir)
    try:
        raw = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise ConfigError(str(path), "-", f"cannot read: {e.strerror}") from None
    try:
        edits = json.loads(raw)
    except ValueError as e:
        raise ConfigError(str(path), "-", f"not valid JSON: {e}") from None
    if not isinstance(edits, dict):
        raise ConfigError(str(path), "-", "expected a JSON object {name: table}")
    return edits


def save_edits(state_dir: Path, edits: Edits) -> None:
    """Write ``edits`` crash-safely: a partial file renamed over the old one."""
    path = edits_path(state_dir)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(edits, indent=2, sort_keys=True) + "\n")
    os.replace(partial, path)


def apply_edits(base: tuple[Upstream, ...], edits: Edits, source: str) -> tuple[Upstream, ...]:
    """``base`` with every edit applied in order, validated as config tables would be
    (``ConfigError`` naming ``source`` and the key).  As in the config file, a table for
    an existing entry replaces its hosts and puts its rules before the entry's own, a
    new name needs ``hosts``, and ``enabled = false`` removes the entry."""
    return apply_upstream_tables(base, edits, source)


def with_saved_edits(config: Config) -> Config:
    """``config`` with the edits saved in its state directory applied (at start)."""
    edits = load_edits(config.server.state_dir)
    if not edits:
        return config
    upstreams = apply_edits(config.upstreams, edits, str(edits_path(config.server.state_dir)))
    return replace(config, upstreams=upstreams)


def describe(upstream: Upstream) -> dict[str, Any]:
    """An entry as JSON: the same keys an edit takes."""
    return {"name": upstream.name, "hosts": list(upstream.hosts), "scheme": upstream.scheme,
            "origin": upstream.origin,
            "rules": [{"path": r.pattern, "policy": r.policy.value, "ttl": r.ttl,
                       "digest": r.digest} for r in upstream.rules]}
