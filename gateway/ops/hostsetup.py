"""The Python half of ``scripts/start.sh`` and ``scripts/stop.sh``.

    python -m gateway.ops.hostsetup [--config FILE] env
        shell assignments: STATE_DIR, ADMIN_URL, TRUST_IMAGES (trust.images, space-separated),
        MIRROR_URL (the registry mirror, http://127.0.0.1:5000; empty when images.listen = "")
    python -m gateway.ops.hostsetup [--config FILE] wait [--timeout S] [--pid N]
        until /healthz answers and our DNS answers a local name; prints the address
        Docker's DNS must point at.  The DNS probe is sent from the address it asks
        (``dig -b``); a REFUSED answer fails at once, with exit status 3 and the fix
    python -m gateway.ops.hostsetup set-dns FILE ADDRESS [--mirror URL]
        merge "dns": [ADDRESS] into Docker's daemon.json (and URL first in its
        "registry-mirrors", the mirrors already listed kept after it), every other key kept; the
        original is kept beside it once (FILE.cachegate-backup, or FILE.cachegate-absent
        when there was none); prints "changed" or "unchanged"
    python -m gateway.ops.hostsetup restore-dns FILE
        put the original back byte for byte; prints "restored", "removed" or "untouched"

Exit status 1 with ``error: …`` on stderr for a known failure (3: DNS refused us).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dnslib import QTYPE, RCODE, DNSRecord

from gateway.addresses import listen_addresses
from gateway.ops.admin_client import AdminClient, admin_url
from gateway.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config

BACKUP_SUFFIX = ".cachegate-backup"
ABSENT_SUFFIX = ".cachegate-absent"
POLL = 0.2


class SetupError(Exception):
    status = 1


class RefusedError(SetupError):
    """Our DNS answered the probe, with REFUSED: waiting longer changes nothing."""

    status = 3


def shell_env(config: Config) -> str:
    values = {"STATE_DIR": str(config.server.state_dir), "ADMIN_URL": admin_url(config),
              "TRUST_IMAGES": " ".join(config.trust.images), "MIRROR_URL": mirror_url(config)}
    return "".join(f"{name}={shlex.quote(value)}\n" for name, value in values.items())


def mirror_url(config: Config) -> str:
    """The registry mirror as Docker's ``registry-mirrors`` names it: a loopback URL
    (BuildKit 20.10-27 keeps plain http only for localhost), "" when it is off."""
    if config.images.listen is None:
        return ""
    host, port = config.images.listen
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def wait_ready(config: Config, timeout: float, pid: int | None) -> str:
    """The address for Docker's DNS, once the gateway answers over HTTP and DNS."""
    client = AdminClient(config, timeout=2.0)
    deadline = time.monotonic() + timeout
    probe = (config.dns.local_names or (config.upstreams[0].hosts[0],))[0]
    while True:
        health = _health(client)
        if health is not None and _dns_answers(config, probe):
            return str(health["docker_dns"])
        if pid is not None and not process_alive(pid):
            raise SetupError(f"the gateway (pid {pid}) exited")
        if time.monotonic() > deadline:
            what = "its admin API" if health is None else f"its DNS for {probe}"
            raise SetupError(f"the gateway did not answer within {timeout:g}s ({what})")
        time.sleep(POLL)


def _health(client: AdminClient) -> dict[str, Any] | None:
    try:
        health = client.json("GET", "/healthz")
    except Exception:  # noqa: BLE001 - not up yet, whatever the reason
        return None
    return health if isinstance(health, dict) and health.get("status") == "ok" else None


def _dns_answers(config: Config, name: str) -> bool:
    """Whether our DNS answers ``name`` with an address; RefusedError if it refuses."""
    if not config.dns.port:
        return True
    address = listen_addresses(config.server.listen)[0]
    reply = dns_probe(address, config.dns.port, name)
    if reply is not None and reply.header.rcode == RCODE.REFUSED:
        where = config.source if not config.source.startswith("<") else DEFAULT_CONFIG_PATH
        raise RefusedError(
            f"the gateway's DNS at {address} port {config.dns.port} REFUSED a query from "
            f"{address}, an address of this host; cachegate answers those whatever dns.allow "
            f"says, so an older cachegate or another DNS server is answering there. Fix: stop "
            f"that server, or add \"{address}/32\" to dns.allow in {where} and "
            f"restart the gateway")
    return reply is not None and any(rr.rtype == QTYPE.A for rr in reply.rr)


def dns_probe(address: str, port: int, name: str, timeout: float = 1.0) -> DNSRecord | None:
    """One UDP query for ``name`` to ``address``, sent from ``address`` itself (as ``dig
    -b``): left to the kernel, the source may be the host's primary address (issue 13:
    192.0.2.2, a public address no dns.allow names).  None when nothing (or garbage)
    comes back."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.bind((address, 0))
            s.sendto(DNSRecord.question(name, "A").pack(), (address, port))
            return DNSRecord.parse(s.recv(4096))
        except Exception:  # noqa: BLE001 - no answer, or garbage: not ready
            return None


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (someone else's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def set_dns(path: Path, address: str, mirror: str = "") -> bool:
    """Point ``path``'s "dns" at ``address`` (and put ``mirror`` first in its
    "registry-mirrors"), keeping the original once; True if changed."""
    try:
        original = path.read_bytes()
    except FileNotFoundError:
        original = None
    data = _parse(path, original) if original is not None else {}
    mirrors = data.get("registry-mirrors", [])
    if not isinstance(mirrors, list):
        raise SetupError(f'{path}: "registry-mirrors" is not a list: fix it first')
    if mirror:
        mirrors = [mirror] + [m for m in mirrors if str(m).rstrip("/") != mirror]
    if data.get("dns") == [address] and data.get("registry-mirrors", []) == mirrors:
        return False
    backup, absent = _side(path, BACKUP_SUFFIX), _side(path, ABSENT_SUFFIX)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not backup.exists() and not absent.exists():
        if original is None:
            absent.touch()
        else:
            shutil.copy2(path, backup)
    data["dns"] = [address]
    if mirrors:
        data["registry-mirrors"] = mirrors
    _replace(path, (json.dumps(data, indent=2) + "\n").encode(),
             path.stat().st_mode & 0o777 if original is not None else 0o644)
    return True


def restore_dns(path: Path) -> str:
    backup, absent = _side(path, BACKUP_SUFFIX), _side(path, ABSENT_SUFFIX)
    if backup.exists():
        partial = _side(path, ".cachegate-partial")
        shutil.copy2(backup, partial)  # content, mode and times, byte for byte
        os.replace(partial, path)
        backup.unlink()
        return "restored"
    if absent.exists():
        path.unlink(missing_ok=True)
        absent.unlink()
        return "removed"
    return "untouched"


def _parse(path: Path, raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw) if raw.strip() else {}
    except ValueError as e:
        raise SetupError(f"{path} is not valid JSON ({e}): fix it first") from None
    if not isinstance(data, dict):
        raise SetupError(f"{path} is not a JSON object: fix it first")
    return data


def _side(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _replace(path: Path, data: bytes, mode: int) -> None:
    fd, partial = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(partial, mode)
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.ops.hostsetup",
                                     description="Helpers of scripts/start.sh and stop.sh.")
    parser.add_argument("--config", type=Path, default=None)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("env", help="shell assignments from the config")
    wait = sub.add_parser("wait", help="until the gateway answers; print Docker's DNS")
    wait.add_argument("--timeout", type=float, default=60.0)
    wait.add_argument("--pid", type=int, default=None)
    set_parser = sub.add_parser("set-dns", help='merge "dns": [ADDRESS] into FILE')
    set_parser.add_argument("file", type=Path)
    set_parser.add_argument("address")
    set_parser.add_argument("--mirror", default="",
                            help='also put URL first in "registry-mirrors"')
    restore = sub.add_parser("restore-dns", help="put FILE's original back")
    restore.add_argument("file", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "set-dns":
            print("changed" if set_dns(args.file, args.address, args.mirror) else "unchanged")
        elif args.command == "restore-dns":
            print(restore_dns(args.file))
        else:
            config = load_config(args.config)
            if args.command == "env":
                sys.stdout.write(shell_env(config))
            else:
                print(wait_ready(config, args.timeout, args.pid))
    except SetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.status
    except (ConfigError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
