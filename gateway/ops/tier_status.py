"""The shared tiers as the status page and ``cachegate stats`` show them: each parent's
breaker and the bytes it sent, the S3 store's breaker and write-behind queue
(``/api/stats`` ``tiers``)."""

from __future__ import annotations

from html import escape
from typing import Any

from gateway.ops.humanize import human_bytes


def tiers_section(doc: dict[str, Any]) -> str:
    rows = [_row(kind, where, state, figures) for kind, where, state, figures in _tiers(doc)]
    if not rows:
        return ""
    from_upstream = doc["tiers"].get("bytes", {}).get("upstream", 0)
    return ("<h2>Shared tiers</h2><p class=sub>misses go to the parent that owns the key, "
            "then S3, then the upstream; a tier whose breaker is open is skipped. "
            f"Fetched from upstreams here: {human_bytes(from_upstream)}</p>"
            "<table id=tiers><tr><th>tier</th><th>where</th><th>state</th><th>failures</th>"
            "<th>figures</th></tr>" + "".join(rows) + "</table>")


def tiers_lines(doc: dict[str, Any]) -> list[str]:
    """One line per tier and one for where fetched bytes came from; none without tiers."""
    lines = [f"{kind} {where}: {_state(state)}, {state['failures']} failures; {figures}"
             for kind, where, state, figures in _tiers(doc)]
    if lines:
        fetched = doc["tiers"].get("bytes", {})
        lines.append("fetched from " + ", ".join(
            f"{source} {human_bytes(fetched.get(source, 0))}"
            for source in ("parents", "s3", "upstream")))
    return lines


def _tiers(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any], str]]:
    tiers = doc.get("tiers") or {}
    shown = [("parent", p["parent"], p, f'{p["requests"]} requests, '
              f'{human_bytes(p["bytes"])} received, {p["refused"]} refused')
             for p in tiers.get("parents") or []]
    if s3 := tiers.get("s3"):
        shown.append(("s3", f'{s3["endpoint"]}/{s3["bucket"]}', s3,
                      f'{s3["hits"]} hits, {s3["misses"]} misses, {s3["corrupt"]} corrupt; '
                      f'{s3["uploaded"]} uploaded, {s3["present"]} already there, '
                      f'{s3["queued"]} queued (of {s3["queue_limit"]}), {s3["dropped"]} '
                      f'dropped; {s3["requests"]} requests'))
    return shown


def _state(state: dict[str, Any]) -> str:
    return state["state"] + (f' (probe in {state["retry_in"]:.0f} s)'
                             if state["state"] == "open" else "")


def _row(kind: str, where: str, state: dict[str, Any], figures: str) -> str:
    return (f'<tr data-tier="{kind}" data-state="{escape(state["state"])}"><td>{kind}</td>'
            f"<td>{escape(where)}</td><td>{escape(_state(state))}</td>"
            f'<td class=num>{state["failures"]}</td><td>{escape(figures)}</td></tr>')
