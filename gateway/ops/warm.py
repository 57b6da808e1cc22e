"""``cachegate warm LOCKFILE…`` and ``cachegate pin add|ls|rm``: fill the running gateway
from lockfiles, and keep sets of objects out of eviction.

Lockfiles are parsed here (``gateway/ecosystems/*_lock.py``, no package manager runs);
every fetch goes through the running gateway's admin API (``POST /api/warm``), so single
flight, the store, the digest checks and the stats are the gateway's own.  At most
``--jobs`` requests are in flight.  Items that need an index to find their files
(requirements, poetry) have it read through the gateway first.

Exit codes: 0 every item stored, fetched or verified (or skipped); 1 some item failed,
mismatched or drifted, or the gateway is down, or a pin set was refused; 2 usage (bad
arguments, an unreadable or unparseable lockfile).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from gateway.config import Config
from gateway.ecosystems.lockfiles import FORMATS, Item, LockfileError, parse
from gateway.ops.admin_client import AdminClient, ApiFailure, GatewayDown
from gateway.ops.humanize import human_bytes

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_JOBS = 8
GOOD = ("stored", "fetched", "verified", "skipped")
STATUSES = ("stored", "fetched", "verified", "mismatch", "drift", "failed", "missing",
            "skipped")


# -- the parser ------------------------------------------------------------------------

def add_parsers(commands: Any) -> None:
    warm = commands.add_parser(
        "warm", help="fill the cache from lockfiles",
        description="Fetch every artifact the lockfiles name through the running gateway, "
                    "each checked against the lockfile's digest.  Exit 0 all present and "
                    "verified, 1 some failed or mismatched, 2 usage.")
    warm.add_argument("lockfiles", nargs="+", type=Path, metavar="LOCKFILE")
    _plan_options(warm)
    warm.add_argument("--jobs", type=_jobs, default=DEFAULT_JOBS, metavar="N",
                      help=f"downloads at once (default {DEFAULT_JOBS})")
    warm.add_argument("--dry-run", action="store_true", help="list the plan; fetch nothing")
    warm.add_argument("--json", action="store_true", help="a JSON report on stdout")
    warm.add_argument("--pin", metavar="NAME", help="keep what was warmed as pin set NAME")
    warm.add_argument("--key-from", action="store_true",
                      help="pin as a set named by the sha256 of the lockfiles (as CI caches "
                           "are keyed)")
    pin = commands.add_parser("pin", help="sets of objects kept out of eviction",
                              description="Pinned objects are never evicted; they count "
                                          "against cache.size_limit.")
    sub = pin.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = sub.add_parser("add", help="warm and pin what lockfiles name",
                         description="Warm the lockfiles' objects and pin them as NAME "
                                     "(or, with --key-from, a name made of their sha256).")
    add.add_argument("name", nargs="?", help="the pin set's name")
    add.add_argument("--key-from", nargs="+", type=Path, metavar="LOCKFILE", default=None,
                     help="name the set by the sha256 of these lockfiles (and warm them)")
    add.add_argument("lockfiles", nargs="*", type=Path, metavar="LOCKFILE")
    _plan_options(add)
    add.add_argument("--jobs", type=_jobs, default=DEFAULT_JOBS, metavar="N")
    add.add_argument("--json", action="store_true")
    ls = sub.add_parser("ls", help="list pin sets", description="Pin sets and their bytes.")
    ls.add_argument("--json", action="store_true")
    rm = sub.add_parser("rm", help="unpin a set", description="Unpin a set (its objects stay "
                                                             "stored, evictable again).")
    rm.add_argument("name")


def _plan_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="the lockfiles' format (default: from each file's name)")


def _jobs(value: str) -> int:
    number = int(value)
    if not 1 <= number <= 256:
        raise argparse.ArgumentTypeError("must be between 1 and 256")
    return number


def key_name(paths: list[Path]) -> str:
    """A pin set named by its lockfiles' contents: ``lock-<sha256>[-<sha256>…]``."""
    return "lock-" + "-".join(hashlib.sha256(p.read_bytes()).hexdigest() for p in paths)


# -- running ---------------------------------------------------------------------------

class UsageError(Exception):
    pass


def run(args: argparse.Namespace, config: Config) -> int:
    try:
        if args.command == "pin":
            return _pin(args, config)
        return _warm(args, config, args.lockfiles, args.pin or
                     (key_name(args.lockfiles) if args.key_from else None))
    except (UsageError, LockfileError) as e:
        print(f"cachegate: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        print(f"cachegate: error: {e.filename}: {e.strerror}", file=sys.stderr)
        return EXIT_USAGE


def plan(paths: list[Path], fmt: str | None) -> list[Item]:
    items = []
    for path in paths:
        text = sys.stdin.read() if str(path) == "-" else path.read_text()
        items += parse(path, text, fmt)
    return items


def _warm(args: argparse.Namespace, config: Config, paths: list[Path],
          pin: str | None) -> int:
    items = plan(paths, args.format)
    out = sys.stdout
    if getattr(args, "dry_run", False):
        return _dry_run(items, args.json, out)
    client = AdminClient(config, timeout=None)
    if not client.running():
        raise GatewayDown(f"the gateway's admin API at {client.base} does not answer: "
                          "`cachegate warm` fills a running gateway")
    refused = None
    if pin:  # pinned before the fetches too, so a tight cache cannot evict early ones
        refused = _pin_keys(client, pin, sorted({url_key(i.url) for i in items
                                                  if i.url and not i.skipped}))
    progress = Progress(len(items), sys.stderr, not args.json, out)
    results = Warmer(client, args.jobs, progress).run(items)
    progress.close()
    summary = summarise(results)
    if pin:
        keys = sorted({r["key"] for r in results if r.get("key")})
        refused = refused or _pin_keys(client, pin, keys)
        if refused:  # never half a set: what the limit cannot hold is not pinned at all
            try:
                client.json("DELETE", f"/api/pins/{pin}")
            except ApiFailure:
                pass
            summary["pin"] = {"name": pin, "refused": refused}
        else:
            pins = client.json("GET", "/api/pins")
            summary["pin"] = dict(pins["pins"].get(pin, {}), name=pin,
                                  pinned_bytes=pins["pinned_bytes"])
    if args.json:
        print(json.dumps({"items": results, "summary": summary}, indent=2), file=out)
    else:
        print(summary_line(summary), file=out)
    if refused:
        print(f"cachegate: error: pin {pin} refused: {refused}", file=sys.stderr)
    return EXIT_OK if summary["ok"] and not refused else EXIT_FAILED


def url_key(url: str) -> str:
    """The store key of an artifact's URL (host + path + query; artifacts do not vary)."""
    parts = urlsplit(url)
    return (parts.hostname or "").lower() + (parts.path or "/") + \
        (f"?{parts.query}" if parts.query else "")


def _pin_keys(client: AdminClient, pin: str, keys: list[str]) -> str | None:
    """Add ``keys`` to pin set ``pin``; the refusal's reason, or None."""
    try:
        client.json("PUT", f"/api/pins/{pin}", body={"keys": keys})
    except ApiFailure as e:
        return str(e)
    return None


def _dry_run(items: list[Item], as_json: bool, out: IO[str]) -> int:
    rows = [{"name": i.name, "url": i.url or None,
             "resolve": i.resolve.url if i.resolve else None,
             "digest": f"{i.digest.algorithm}:{i.digest.hex}" if i.digest else None,
             "skipped": i.skipped or None} for i in items]
    if as_json:
        print(json.dumps({"items": rows}, indent=2), file=out)
        return EXIT_OK
    for row in rows:
        what = row["skipped"] and f"skip ({row['skipped']})" or row["url"] or \
            f"files listed by {row['resolve']}"
        print(f"{row['name']}  {what}  {row['digest'] or ''}".rstrip(), file=out)
    print(f"{len(rows)} items, nothing fetched (--dry-run)", file=out)
    return EXIT_OK


class Warmer:
    """Runs a plan against the admin API with at most ``jobs`` requests in flight."""

    def __init__(self, client: AdminClient, jobs: int, progress: "Progress") -> None:
        self.client = client
        self.jobs = jobs
        self.progress = progress

    def run(self, items: list[Item]) -> list[dict]:
        results: list[dict] = []
        skipped = [i for i in items if i.skipped]
        for item in skipped:
            results.append(self._done({"name": item.name, "status": "skipped",
                                       "reason": item.skipped}))
        pending = [i for i in items if not i.skipped]
        with ThreadPoolExecutor(self.jobs) as pool:
            resolving = [i for i in pending if i.resolve is not None]
            found: list[Item] = []
            for item, more in zip(resolving, pool.map(self._resolve, resolving)):
                if isinstance(more, dict):
                    results.append(self._done(more))
                else:
                    self.progress.grow(len(more) - 1)
                    found += more
            direct = [i for i in pending if i.resolve is None] + found
            for phase in sorted({i.phase for i in direct}):
                batch = [i for i in direct if i.phase == phase]
                results += pool.map(self._one, batch)
        return results

    def _resolve(self, item: Item) -> list[Item] | dict:
        assert item.resolve is not None
        answer = self._post({"url": item.resolve.url, "headers": item.resolve.headers,
                             "body": True})
        if answer.get("status") not in ("stored", "fetched", "verified") or \
                not answer.get("body"):
            return {"name": item.name, "url": item.resolve.url, "status": "failed",
                    "reason": f"cannot read the index: {answer.get('reason', 'no body')}"}
        try:
            return item.resolve.pick(base64.b64decode(answer["body"]))
        except (ValueError, KeyError, TypeError) as e:
            return {"name": item.name, "url": item.resolve.url, "status": "failed",
                    "reason": f"unreadable index: {e}"}

    def _one(self, item: Item) -> dict:
        if item.skipped:
            return self._done({"name": item.name, "status": "skipped", "reason": item.skipped})
        request: dict[str, Any] = {"url": item.url}
        if item.digest is not None:
            request["digest"] = {"algorithm": item.digest.algorithm, "hex": item.digest.hex}
        return self._done(dict(self._post(request), name=item.name))

    def _post(self, request: dict) -> dict:
        try:
            return self.client.json("POST", "/api/warm", body=request)
        except ApiFailure as e:
            return {"url": request["url"], "status": "failed", "reason": str(e)}
        except GatewayDown as e:
            return {"url": request["url"], "status": "failed", "reason": str(e)}

    def _done(self, result: dict) -> dict:
        self.progress.item(result)
        return result


def summarise(results: list[dict]) -> dict:
    counts = {status: 0 for status in STATUSES}
    for r in results:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    fetched = sum(r.get("length") or 0 for r in results if r["status"] in ("fetched",
                                                                          "verified"))
    return {"items": len(results), "counts": counts, "bytes_fetched": fetched,
            "ok": all(r["status"] in GOOD for r in results)}


def summary_line(summary: dict) -> str:
    counts = ", ".join(f"{n} {s}" for s, n in summary["counts"].items() if n)
    pin = summary.get("pin")
    pinned = ""
    if pin and "refused" not in pin:
        pinned = f"; pinned as {pin['name']} ({human_bytes(pin['pinned_bytes'])} pinned in all)"
    return (f"{summary['items']} items: {counts or 'none'}; "
            f"{human_bytes(summary['bytes_fetched'])} from upstream{pinned}")


@dataclass
class Progress:
    """A bar on a terminal (stderr); one line per item otherwise (stdout)."""

    total: int
    terminal: IO[str]
    lines: bool
    out: IO[str]

    def __post_init__(self) -> None:
        self.done = 0
        self.lock = threading.Lock()
        self.bar = self.lines and self.terminal.isatty()
        self.counts: dict[str, int] = {}

    def grow(self, more: int) -> None:
        with self.lock:
            self.total += more

    def item(self, result: dict) -> None:
        with self.lock:
            self.done += 1
            self.counts[result["status"]] = self.counts.get(result["status"], 0) + 1
            if self.bar:
                width = 30
                filled = width * self.done // max(self.total, 1)
                tally = ", ".join(f"{n} {s}" for s, n in sorted(self.counts.items()))
                self.terminal.write(f"\r[{'#' * filled}{'.' * (width - filled)}] "
                                    f"{self.done}/{self.total} {tally}\x1b[K")
                self.terminal.flush()
            elif self.lines:
                reason = f"  ({result['reason']})" if result.get("reason") else ""
                print(f"{result['status']:<9} {result.get('name', '')}  "
                      f"{result.get('url', '')}{reason}", file=self.out, flush=True)

    def close(self) -> None:
        if self.bar:
            self.terminal.write("\n")


# -- pin -------------------------------------------------------------------------------

def _pin(args: argparse.Namespace, config: Config) -> int:
    client = AdminClient(config)
    if args.action == "ls":
        doc = client.json("GET", "/api/pins")
        if args.json:
            print(json.dumps(doc, indent=2))
            return EXIT_OK
        for name, figures in sorted(doc["pins"].items()):
            print(f"{name}  {figures['stored']}/{figures['keys']} objects stored, "
                  f"{human_bytes(figures['bytes'])}")
        print(f"{human_bytes(doc['pinned_bytes'])} pinned of {human_bytes(doc['limit'])}")
        return EXIT_OK
    if args.action == "rm":
        doc = client.json("DELETE", f"/api/pins/{args.name}")
        print(f"unpinned {args.name} ({doc['removed']} objects, still stored)")
        return EXIT_OK
    lockfiles = list(args.lockfiles) + list(args.key_from or [])
    if not lockfiles:
        raise UsageError("pin add needs lockfiles (or --key-from LOCKFILE...)")
    if bool(args.name) == bool(args.key_from):
        raise UsageError("pin add takes a NAME or --key-from, not both")
    name = args.name or key_name(list(args.key_from))
    args.dry_run = False
    return _warm(args, config, lockfiles, name)


