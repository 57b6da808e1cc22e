"""The CLI's side of the admin API: blocking JSON requests to the running gateway.

The address is ``server.admin`` (a wildcard address is reached on loopback); the token,
when the state directory lets us read it, goes with every request (the API only checks
it on mutating calls, and only when it listens beyond loopback).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from gateway.config import Config

# In the state directory, 0600: the admin API's bearer token (gateway/admin.py makes it).
TOKEN_FILE = "admin.token"


class GatewayDown(Exception):
    """Nothing answers on the admin address."""


class ApiFailure(Exception):
    """The admin API answered with an error: ``str()`` is its reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def admin_url(config: Config) -> str:
    host, port = config.server.admin
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def read_token(state_dir: Path) -> str | None:
    try:
        return (Path(state_dir) / TOKEN_FILE).read_text().strip()
    except OSError:
        return None


# Straight to the admin address: never through an http_proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class AdminClient:
    def __init__(self, config: Config, timeout: float | None = 10.0) -> None:
        self.base = admin_url(config)
        self.token = read_token(config.server.state_dir)
        self.timeout = timeout

    def request(self, method: str, path: str, query: dict[str, Any] | None = None,
                body: Any = None, timeout: float | None = -1.0) -> bytes:
        """The response body; ``GatewayDown`` when nothing listens, ``ApiFailure`` on an
        error answer.  ``timeout=None`` waits as long as it takes (cache verify)."""
        shown = {k: v for k, v in (query or {}).items() if v is not None}
        url = self.base + path + (f"?{urlencode(shown)}" if shown else "")
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with _OPENER.open(request, timeout=self.timeout if timeout == -1.0
                                        else timeout) as response:
                return response.read()
        except urllib.error.HTTPError as e:
            raise ApiFailure(e.code, _reason(e)) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            why = getattr(e, "reason", e)
            raise GatewayDown(f"the gateway's admin API at {self.base} does not answer "
                              f"({why}): is `cachegate serve` running?") from None

    def json(self, method: str, path: str, query: dict[str, Any] | None = None,
             body: Any = None, timeout: float | None = -1.0) -> Any:
        return json.loads(self.request(method, path, query, body, timeout))

    def running(self) -> bool:
        try:
            return self.json("GET", "/healthz", timeout=2.0).get("status") == "ok"
        except (GatewayDown, ApiFailure, ValueError):
            return False


def _reason(error: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(error.read())["error"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {error.code} {error.reason}"
