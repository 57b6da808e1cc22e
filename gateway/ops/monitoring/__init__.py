"""Monitoring files shipped with the package: Prometheus rules (``rules.yml``), printed by
``cachegate monitoring rules``."""

from __future__ import annotations

from importlib.resources import files

RULES = "rules.yml"


def rules_text() -> str:
    """The recording and alerting rules, as shipped."""
    return (files(__name__) / RULES).read_text(encoding="utf-8")
