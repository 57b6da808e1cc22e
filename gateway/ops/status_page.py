"""The HTML status page at the admin API's ``/``: rendered from the ``/api/stats`` document
and the last hour's ``History`` (plots).

Server-side HTML and inline SVG with no script, so every figure is in the document as
served (and ``chromium --dump-dom`` shows it).  Every value that came from a client (paths,
hosts) is escaped.  The page reloads itself every ``REFRESH`` seconds.

"Stored" means the objects' bodies everywhere on the page (the top card and the table
agree); the store's volume on disk (bodies plus its index), which is what the size limit
bounds, is named as such.
"""

from __future__ import annotations

import ipaddress
import json
import time
from html import escape
from typing import Any

from gateway.ops.history import LABELS, History
from gateway.ops.humanize import human_bytes, human_duration, percent
from gateway.ops.plots import Line, plot
from gateway.ops.tier_status import tiers_section

REFRESH = 10
DAEMON_JSON = "/etc/docker/daemon.json"
DEFAULT_BRIDGE = "172.17.0.1"  # Docker's default docker0 address, when we cannot see one
COLORS = {"HIT": "#1a7f37", "REVALIDATED": "#2f81f7", "STALE": "#8250df", "MISS": "#d4860b",
          "PASS": "#6e7781", "ERROR": "#cf222e"}

_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 70em;
       padding: 0 1em; color: #1d2530; background: #fbfbfd; }
h1 { font-size: 1.6em; margin-bottom: .1em; } h2 { font-size: 1.15em; margin-top: 1.8em; }
.sub { color: #5a6472; margin-top: 0; }
.cards { display: flex; flex-wrap: wrap; gap: 1em; }
.card { background: #fff; border: 1px solid #dde2ea; border-radius: 8px; padding: .8em 1.2em;
        min-width: 11em; }
.card .figure { font-size: 1.7em; font-weight: 600; color: #0b6e4f; }
.card .label { color: #5a6472; font-size: .9em; }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { text-align: left; padding: .3em .6em; border-bottom: 1px solid #e6e9ef; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.url { font-family: ui-monospace, monospace; font-size: .85em; word-break: break-all; }
.bar { background: #e6e9ef; border-radius: 4px; height: .6em; width: 8em; }
.bar span { display: block; background: #0b6e4f; height: 100%; border-radius: 4px; }
pre { background: #1d2530; color: #e8edf3; padding: .8em 1em; border-radius: 6px;
      overflow-x: auto; }
.HIT, .REVALIDATED { color: #0b6e4f; } .MISS { color: #9a5b00; }
.ERROR { color: #b3261e; } .STALE { color: #6b4fa0; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(34em, 1fr));
         gap: .6em 1.2em; }
figure.plot-box { margin: 0; } figcaption { font-size: .9em; color: #5a6472; }
svg.plot { max-width: 100%; height: auto; display: block; }
.legend { font-size: .8em; color: #5a6472; } .key { margin-right: 1em; white-space: nowrap; }
.swatch { display: inline-block; width: .9em; height: .25em; margin-right: .3em; opacity: .8;
          vertical-align: middle; }
.note { background: #fff8e1; border: 1px solid #f0d98c; border-radius: 6px; padding: .6em 1em; }
"""


def render_status(doc: dict[str, Any], now: float | None = None,
                  history: History | None = None) -> bytes:
    """The page for the ``/api/stats`` document ``doc`` and the last hour's ``history``."""
    now = time.time() if now is None else now
    parts = [
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>",
        f'<meta http-equiv="refresh" content="{REFRESH}">',
        "<title>cachegate status</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>cachegate</h1>",
        f'<p class=sub>up <span id=uptime>{human_duration(doc["uptime"])}</span> · '
        f'listening on {escape(", ".join(doc["addresses"]))}</p>',
        _summary(doc),
        _workers(doc),
        _plots(history, history.clock() if history is not None else now),
        _ecosystems(doc),
        tiers_section(doc),
        _recent(doc["recent"], now),
        _setup(doc),
        "</body></html>\n",
    ]
    return "\n".join(parts).encode()


def _workers(doc: dict[str, Any]) -> str:
    """With ``server.workers`` > 1: each worker process and its state."""
    workers = doc.get("workers")
    if not workers:
        return ""
    rows = "".join(f'<tr class="{escape(w["state"])}"><td>{w["worker"]}</td>'
                   f'<td>{escape(w["state"])}</td><td>{w["pid"] or ""}</td>'
                   f'<td>{human_duration(w["uptime"])}</td><td>{w["restarts"]}</td>'
                   f'<td>{escape(w["last_exit"] or "")}</td></tr>' for w in workers)
    return ("<h2>Workers</h2><table id=workers><tr><th>worker</th><th>state</th><th>pid</th>"
            "<th>up</th><th>restarts</th><th>last exit</th></tr>" + rows + "</table>")


def _card(ident: str, figure: str, label: str) -> str:
    return (f'<div class=card><div class=figure id="{ident}">{escape(figure)}</div>'
            f'<div class=label>{escape(label)}</div></div>')


def _summary(doc: dict[str, Any]) -> str:
    total, cache = doc["gateway"]["total"], doc["cache"]
    requests = sum(total["requests"].values())
    limit = cache["limit"]
    bodies = sum(e["bytes"] for e in cache["ecosystems"].values())
    return "<div class=cards>" + "".join([
        _card("hit-ratio", percent(total["hit_ratio"]), f"hit ratio of {requests} requests"),
        _card("bytes-saved", human_bytes(total["bytes_from_cache"]),
              "served from the cache (not fetched again)"),
        _card("bytes-upstream", human_bytes(total["bytes_from_upstream"]),
              "fetched from upstreams"),
        _card("cache-size", human_bytes(bodies),
              f'{cache["objects"]} objects stored (their bodies); on disk with the index '
              f'{human_bytes(cache["bytes"])}, {percent(cache["bytes"] / limit)} of the '
              f"{human_bytes(limit)} limit"),
        _card("pinned", human_bytes(cache.get("pinned", 0)),
              "pinned (never evicted; counted against the limit)"),
    ]) + "</div>"


def _ecosystems(doc: dict[str, Any]) -> str:
    served = doc["gateway"]["ecosystems"]
    stored = doc["cache"]["ecosystems"]
    rows = []
    for name in sorted(set(served) | set(stored)):
        tally = served.get(name, {"requests": {}, "hit_ratio": 0.0, "bytes_from_cache": 0,
                                  "bytes_from_upstream": 0})
        kept = stored.get(name, {"objects": 0, "bytes": 0})
        ratio = tally["hit_ratio"]
        rows.append(
            f'<tr data-ecosystem="{escape(name)}"><td>{escape(name)}</td>'
            f'<td class=num>{sum(tally["requests"].values())}</td>'
            f'<td class=num data-field=hit-ratio>{percent(ratio)}</td>'
            f'<td><div class=bar><span style="width:{ratio * 100:.0f}%"></span></div></td>'
            f'<td class=num data-field=bytes-saved>{human_bytes(tally["bytes_from_cache"])}</td>'
            f'<td class=num>{human_bytes(tally["bytes_from_upstream"])}</td>'
            f'<td class=num>{kept["objects"]}</td>'
            f'<td class=num>{human_bytes(kept["bytes"])}</td></tr>')
    if not rows:
        rows.append("<tr><td colspan=8>nothing served or stored yet</td></tr>")
    return ("<h2>By ecosystem</h2><table id=ecosystems><tr><th>ecosystem</th>"
            "<th class=num>requests</th><th class=num>hit ratio</th><th></th>"
            "<th class=num>bytes saved</th><th class=num>from upstream</th>"
            "<th class=num>objects</th><th class=num>stored (bodies)</th></tr>"
            + "".join(rows) + "</table>")


def _recent(lines: list[dict[str, Any]], now: float) -> str:
    rows = []
    for line in lines:
        ago = human_duration(max(0.0, now - (line.get("time") or now)))
        label = escape(str(line["label"]))
        rows.append(
            f"<tr><td>{ago} ago</td><td>{escape(str(line['client']))}</td>"
            f"<td>{escape(str(line['method']))}</td>"
            f"<td class=url>{escape(str(line['url']))}</td>"
            f"<td class=num>{escape(str(line['status']))}</td>"
            f'<td class="{label}">{label}</td>'
            f"<td class=num>{human_bytes(int(line.get('sent') or 0))}</td>"
            f"<td class=num>{escape(str(line['ms']))} ms</td></tr>")
    if not rows:
        rows.append("<tr><td colspan=8>no requests yet</td></tr>")
    return ("<h2>Recent requests</h2><table id=recent><tr><th>when</th><th>client</th>"
            "<th>method</th><th>url</th><th class=num>status</th><th>cache</th>"
            "<th class=num>size</th><th class=num>time</th></tr>" + "".join(rows) + "</table>")


def _plots(history: History | None, now: float) -> str:
    """The last hour: requests/s by cache label, bytes/s from cache and upstream, the hit
    ratio of each interval, upstream errors/s."""
    if history is None:
        return ""
    figures = [
        plot("plot-requests", "Requests per second, by cache status",
             [Line(label, COLORS[label], history.series(label)) for label in LABELS],
             now, _per_second),
        plot("plot-bytes", "Bytes per second sent: from the cache, from upstreams",
             [Line("from cache", COLORS["HIT"], history.series("bytes_cache")),
              Line("from upstream", COLORS["MISS"], history.series("bytes_upstream"))],
             now, lambda v: human_bytes(int(v)) + "/s" if v else "0"),
        plot("plot-hit-ratio", "Hit ratio (of each interval's requests)",
             [Line("hit ratio", COLORS["HIT"], history.series("hit_ratio"))],
             now, lambda v: f"{v * 100:.0f}%", top=1.0),
        plot("plot-errors", "Upstream errors per second",
             [Line("errors", COLORS["ERROR"], history.series("upstream_errors"))],
             now, _per_second),
    ]
    return ("<h2>Last hour</h2><p class=sub>sampled every "
            f"{history.interval:g} s, newest on the right</p><div class=plots>"
            + "".join(figures) + "</div>")


def _per_second(value: float) -> str:
    if value == 0:
        return "0"
    return f"{value / 1000:g}k/s" if value >= 1000 else f"{value:g}/s"


def docker_address(doc: dict[str, Any]) -> tuple[str, str | None]:
    """The address Docker's ``dns`` must name, and a note when cachegate must listen
    there first.  Never a loopback address: BuildKit drops loopback nameservers from
    ``daemon.json`` for ``RUN`` steps."""
    dns, listening = doc["docker_dns"], doc["addresses"]
    if not _is_loopback(dns):
        if dns in listening or any(_is_unspecified(a) for a in listening):
            return dns, None
        return dns, (f"cachegate does not listen on {dns} yet: add it to server.listen "
                     '(or listen = ["auto"]) and restart cachegate first.')
    bridge = doc.get("bridge") or DEFAULT_BRIDGE
    if any(_is_unspecified(a) for a in listening):  # every address: the bridge's too
        return bridge, None
    seen = "" if doc.get("bridge") else " (Docker's default; `ip -4 addr show docker0` " \
        "shows this host's)"
    return bridge, (f"cachegate listens on loopback only ({', '.join(listening)}), and "
                    "BuildKit drops a loopback DNS server for RUN steps: add the Docker "
                    f"bridge address {bridge}{seen} to server.listen (or "
                    'listen = ["auto"]) and restart cachegate first.')


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _is_unspecified(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_unspecified
    except ValueError:
        return False


def docker_lines(address: str) -> tuple[str, str]:
    """The two things to do to point Docker at the gateway."""
    return (f'{DAEMON_JSON}: {json.dumps({"dns": [address]})}',
            "sudo systemctl restart docker")


def _setup(doc: dict[str, Any]) -> str:
    address, note = docker_address(doc)
    first, second = docker_lines(address)
    local = doc["local_names"][0] if doc["local_names"] else address
    return (
        "<h2>Use it</h2>"
        + (f"<p class=note id=listen-note>{escape(note)}</p>" if note else "") +
        "<p>Point the Docker daemon's DNS at the gateway (add the key to the file, keeping "
        "the others; <code>scripts/start.sh</code> does both and keeps a backup):</p>"
        f"<pre id=docker-lines>{escape(first, quote=False)}\n"
        f"{escape(second, quote=False)}</pre>"
        "<p>Images trust the gateway's CA for the HTTPS repositories: "
        '<a id=ca-link href="/ca.crt" download="cachegate-ca.crt">download the CA '
        f"certificate</a> (containers: <code>http://{escape(local)}/ca.crt</code>).</p>")
