"""The configuration file: parsed once into frozen dataclasses, every key defaulted.

Unknown keys and bad values raise ``ConfigError`` naming the file, the key and the reason,
so a typo fails the start instead of silently doing something else.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

from gateway.cache.rules import Policy, Rule, Upstream
from gateway.ecosystems.catalogue import BUILTIN, DIGEST_SCHEMES
from gateway.ecosystems.images import REGISTRIES, Registry

DEFAULT_CONFIG_PATH = Path("/etc/cachegate/cachegate.toml")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(Exception):
    """A bad configuration: ``str()`` is ``file: key: reason``."""

    def __init__(self, source: str, key: str, reason: str) -> None:
        super().__init__(f"{source}: {key}: {reason}")
        self.source, self.key, self.reason = source, key, reason


def default_state_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/cachegate")
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "cachegate"


@dataclass(frozen=True)
class ServerConfig:
    state_dir: Path = field(default_factory=default_state_dir)
    listen: tuple[str, ...] = ("auto",)
    http_port: int = 80
    https_port: int = 443
    proxy_port: int = 0
    admin: tuple[str, int] = ("127.0.0.1", 3129)
    # HTTP(S) worker processes: "auto" = one per usable core; 1 = everything in one process
    workers: int = field(default_factory=lambda: parse_workers("auto"))


@dataclass(frozen=True)
class DnsConfig:
    port: int = 53
    forwarders: tuple[str, ...] = ("system",)
    advertise_ipv4: str = "auto"
    advertise_ipv6: str = ""
    ttl: int = 30
    allow: tuple[IPNetwork, ...] = tuple(
        ipaddress.ip_network(n)
        for n in ("127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
    )
    local_names: tuple[str, ...] = ("cachegate.internal",)


@dataclass(frozen=True)
class CacheConfig:
    size_limit: int = 50 * 2**30
    offline: bool = False
    negative_ttl: int = 60  # how long a 404/410 is remembered
    connect_timeout: float = 10.0  # upstream TCP+TLS connect
    idle_timeout: float = 60.0  # upstream silence before a download is abandoned
    # New bytes for an immutable URL already stored once: "refuse" keeps the first copy
    # (the fill fails, the event is reported), "accept" stores them (and reports them).
    on_drift: str = "refuse"


@dataclass(frozen=True)
class TlsConfig:
    key_type: str = "ecdsa"  # "ecdsa" (P-256) or "rsa" (3072)
    name_constraints: bool = True


@dataclass(frozen=True)
class TrustConfig:
    images: tuple[str, ...] = ()  # shadowed by `cachegate trust image` and start.sh


@dataclass(frozen=True)
class ImagesConfig:
    """The registry mirror (gateway/front/registry.py)."""

    listen: tuple[str, int] | None = ("127.0.0.1", 5000)  # None: off
    tag_ttl: int = 60  # seconds before a tag is revalidated with an upstream HEAD
    # Registries are ``[upstreams.NAME]`` entries too (``registry = true`` for a new one),
    # but kept apart from ``upstreams``: their names are not redirected by our DNS nor
    # covered by our CA; clients reach them through the mirror endpoint.
    registries: tuple[Registry, ...] = REGISTRIES


@dataclass(frozen=True)
class SessionsConfig:
    """Build records (gateway/ops/sessions.py): the default client set, the sessions open
    while the gateway runs, and a recorded session replayed to ``clients``."""

    clients: tuple[str, ...] = ("docker",)  # CIDRs; "docker" = the Docker bridge network
    record: tuple[str, ...] = ()  # names of standing sessions (reopened at each start)
    replay: str = ""  # a recorded session's id or name; "" = none


@dataclass(frozen=True)
class ClusterConfig:
    """Many build hosts (``gateway/cache/tiers.py``, ``gateway/front/cluster.py``)."""

    parents: tuple[str, ...] = ()  # "http://cg1.example:3130": misses go there by key
    listen: tuple[str, int] | None = None  # serve children here (token required)
    token_file: str = ""  # the secret children present and parents accept
    connect_timeout: float = 1.0  # a parent on the LAN answers at once, or is down
    breaker_seconds: float = 5.0  # a parent found down is skipped this long, then probed


@dataclass(frozen=True)
class S3Config:
    """The shared object store behind the parents (``gateway/cache/s3.py``)."""

    endpoint: str = ""  # "" = off; "https://s3.eu-west-1.amazonaws.com", "http://10.0.0.5:8333"
    bucket: str = ""
    prefix: str = "cachegate/"
    region: str = "us-east-1"
    credentials_file: str = ""  # "ACCESS_KEY:SECRET_KEY"; "" = boto3's own chain
    queue: int = 1000  # objects waiting for upload; more are dropped (and counted)
    timeout: float = 2.0  # per control call; a slower store is treated as down
    breaker_seconds: float = 10.0


@dataclass(frozen=True)
class Config:
    source: str = "<defaults>"
    server: ServerConfig = field(default_factory=ServerConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    trust: TrustConfig = field(default_factory=TrustConfig)
    upstreams: tuple[Upstream, ...] = BUILTIN
    images: ImagesConfig = field(default_factory=ImagesConfig)
    sessions: SessionsConfig = field(default_factory=SessionsConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    s3: S3Config = field(default_factory=S3Config)


def load_config(path: Path | None) -> Config:
    """Read ``path`` (or the defaults when it is None, or is the default path and absent)."""
    if path is None:
        if not DEFAULT_CONFIG_PATH.exists():
            return Config()
        path = DEFAULT_CONFIG_PATH
    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise ConfigError(str(path), "-", f"cannot read: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(str(path), "-", f"not valid TOML: {e}") from None
    return parse_config(data, str(path))


def parse_config(data: dict[str, Any], source: str) -> Config:
    """Validate a parsed TOML document into a ``Config``."""
    _Reader(data, source, "").reject_unknown({"server", "dns", "cache", "tls", "trust",
                                           "upstreams", "images", "sessions",
                                           "cluster", "store"})
    section = lambda name: _Reader(_table(data, name, source), source, name)  # noqa: E731
    upstreams, registries = _split_registries(_table(data, "upstreams", source), source)
    return Config(
        source=source,
        server=_server(section("server")),
        dns=_dns(section("dns")),
        cache=_cache(section("cache")),
        tls=_tls(section("tls")),
        trust=_trust(section("trust")),
        upstreams=_upstreams(upstreams, source),
        images=_images(section("images"), registries),
        sessions=_sessions(section("sessions")),
        cluster=_cluster(section("cluster")),
        s3=_s3(_store_s3(data, source)),
    )


class _Reader:
    """Typed access to one TOML table; every error names ``source`` and the dotted key."""

    def __init__(self, table: dict[str, Any], source: str, prefix: str) -> None:
        self.table, self.source, self.prefix = table, source, prefix

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def fail(self, name: str, reason: str) -> ConfigError:
        return ConfigError(self.source, self.key(name), reason)

    def reject_unknown(self, known: set[str]) -> None:
        for name in self.table:
            if name not in known:
                raise self.fail(name, f"unknown key (known: {', '.join(sorted(known))})")

    def get(self, name: str, kind: type | tuple[type, ...], default: Any) -> Any:
        value = self.table.get(name, default)
        if isinstance(value, bool) and kind is not bool and bool not in _tuple(kind):
            raise self.fail(name, f"expected {_kind_name(kind)}, got a boolean")
        if not isinstance(value, kind):
            raise self.fail(name, f"expected {_kind_name(kind)}, got {type(value).__name__}")
        return value

    def port(self, name: str, default: int, allow_zero: bool = False) -> int:
        value = self.get(name, int, default)
        if not (0 if allow_zero else 1) <= value <= 65535:
            raise self.fail(name, f"port out of range: {value}")
        return value

    def strings(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.get(name, list, list(default))
        if not all(isinstance(v, str) for v in value):
            raise self.fail(name, "expected a list of strings")
        return tuple(value)

    def each(self, name: str, default: tuple[str, ...], convert: Callable[[str], Any]) -> tuple:
        out = []
        for item in self.strings(name, default):
            try:
                out.append(convert(item))
            except ValueError as e:
                raise self.fail(name, f"{item!r}: {e}") from None
        return tuple(out)

    def convert(self, name: str, kind: type, default: Any, convert: Callable[[Any], Any]) -> Any:
        value = self.get(name, kind, default)
        try:
            return convert(value)
        except ValueError as e:
            raise self.fail(name, f"{value!r}: {e}") from None


def _tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             list: "a list", dict: "a table"}
    return " or ".join(names.get(k, k.__name__) for k in _tuple(kind))


def _table(data: dict[str, Any], name: str, source: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(source, name, "expected a table")
    return value


def _server(r: _Reader) -> ServerConfig:
    d = ServerConfig()
    r.reject_unknown({"state_dir", "listen", "http_port", "https_port", "proxy_port", "admin",
                      "workers"})
    return ServerConfig(
        state_dir=Path(r.get("state_dir", str, str(d.state_dir))).expanduser(),
        listen=r.each("listen", d.listen, _listen_address),
        http_port=r.port("http_port", d.http_port),
        https_port=r.port("https_port", d.https_port, allow_zero=True),
        proxy_port=r.port("proxy_port", d.proxy_port, allow_zero=True),
        admin=r.convert("admin", str, "%s:%d" % d.admin, parse_host_port),
        workers=r.convert("workers", (int, str), d.workers, parse_workers),
    )


# More workers than this is a typo, not a host: each is a whole Python process.
MAX_WORKERS = 256


def parse_workers(value: int | str) -> int:
    """``"auto"`` (one per core this process may run on) or a count from 1."""
    if value == "auto":
        return max(1, len(os.sched_getaffinity(0)))
    if isinstance(value, str):
        raise ValueError('expected "auto" or a number of processes')
    if not 1 <= value <= MAX_WORKERS:
        raise ValueError(f"must be between 1 and {MAX_WORKERS}")
    return value


def _dns(r: _Reader) -> DnsConfig:
    d = DnsConfig()
    r.reject_unknown({"port", "forwarders", "advertise_ipv4", "advertise_ipv6", "ttl", "allow",
                      "local_names"})
    ttl = r.get("ttl", int, d.ttl)
    if not 0 <= ttl <= 86400:
        raise r.fail("ttl", f"must be between 0 and 86400 seconds, got {ttl}")
    return DnsConfig(
        port=r.port("port", d.port, allow_zero=True),
        forwarders=r.each("forwarders", d.forwarders, _forwarder),
        advertise_ipv4=r.convert("advertise_ipv4", str, d.advertise_ipv4, _ipv4_or_auto),
        advertise_ipv6=r.convert("advertise_ipv6", str, d.advertise_ipv6, _ipv6_or_empty),
        ttl=ttl,
        allow=r.each("allow", tuple(str(n) for n in d.allow),
                     lambda s: ipaddress.ip_network(s, strict=False)),
        local_names=r.each("local_names", d.local_names, _hostname),
    )


def _cache(r: _Reader) -> CacheConfig:
    d = CacheConfig()
    r.reject_unknown({"size_limit", "offline", "negative_ttl", "connect_timeout", "idle_timeout",
                      "on_drift"})
    return CacheConfig(
        size_limit=r.convert("size_limit", (str, int), d.size_limit, parse_size),
        offline=r.get("offline", bool, d.offline),
        negative_ttl=r.convert("negative_ttl", int, d.negative_ttl, _non_negative),
        connect_timeout=r.convert("connect_timeout", (int, float), d.connect_timeout, _positive),
        idle_timeout=r.convert("idle_timeout", (int, float), d.idle_timeout, _positive),
        on_drift=r.convert("on_drift", str, d.on_drift,
                           lambda v: _choice(v, ("refuse", "accept"))),
    )


def _tls(r: _Reader) -> TlsConfig:
    d = TlsConfig()
    r.reject_unknown({"key_type", "name_constraints"})
    return TlsConfig(
        key_type=r.convert("key_type", str, d.key_type, lambda v: _choice(v, ("ecdsa", "rsa"))),
        name_constraints=r.get("name_constraints", bool, d.name_constraints),
    )


def _trust(r: _Reader) -> TrustConfig:
    r.reject_unknown({"images"})
    return TrustConfig(images=r.each("images", (), image_reference))


def _images(r: _Reader, registries: tuple[Registry, ...]) -> ImagesConfig:
    d = ImagesConfig()
    r.reject_unknown({"listen", "tag_ttl"})
    listen = r.get("listen", str, "%s:%d" % d.listen)  # type: ignore[str-format]
    try:
        address = parse_host_port(listen) if listen else None
    except ValueError as e:
        raise r.fail("listen", f"{listen!r}: {e} (or \"\" to turn the mirror off)") from None
    tag_ttl = r.get("tag_ttl", int, d.tag_ttl)
    if not 0 <= tag_ttl <= 86400:
        raise r.fail("tag_ttl", f"must be between 0 and 86400 seconds, got {tag_ttl}")
    return ImagesConfig(address, tag_ttl, registries)


def _cluster(r: _Reader) -> ClusterConfig:
    d = ClusterConfig()
    r.reject_unknown({"parents", "listen", "token_file", "connect_timeout", "breaker_seconds"})
    listen = r.get("listen", str, "")
    try:
        address = parse_host_port(listen) if listen else None
    except ValueError as e:
        raise r.fail("listen", f"{listen!r}: {e} (or \"\" for no children)") from None
    config = ClusterConfig(
        parents=r.each("parents", (), _parent_url),
        listen=address,
        token_file=r.convert("token_file", str, "", _absolute_file),
        connect_timeout=r.convert("connect_timeout", (int, float), d.connect_timeout, _positive),
        breaker_seconds=r.convert("breaker_seconds", (int, float), d.breaker_seconds, _positive),
    )
    if (config.parents or config.listen) and not config.token_file:
        raise r.fail("token_file", "required with parents or listen (the shared secret)")
    return config


def _parent_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/") \
            or parts.query or parts.username:
        raise ValueError("expected http://HOST:PORT")
    return value.rstrip("/")


def _absolute_file(value: str) -> str:
    if value and not os.path.isabs(os.path.expanduser(value)):
        raise ValueError("expected an absolute path")
    return os.path.expanduser(value)


def _store_s3(data: dict[str, Any], source: str) -> _Reader:
    store = _Reader(_table(data, "store", source), source, "store")
    store.reject_unknown({"s3"})
    return _Reader(_table(store.table, "s3", source), source, "store.s3")


def _s3(r: _Reader) -> S3Config:
    d = S3Config()
    r.reject_unknown({"endpoint", "bucket", "prefix", "region", "credentials_file", "queue",
                      "timeout", "breaker_seconds"})
    config = S3Config(
        endpoint=r.convert("endpoint", str, "", lambda v: _origin_url(v) if v else v),
        bucket=r.get("bucket", str, ""),
        prefix=r.get("prefix", str, d.prefix),
        region=r.get("region", str, d.region),
        credentials_file=r.convert("credentials_file", str, "", _credentials_file),
        queue=r.convert("queue", int, d.queue, _positive_int),
        timeout=r.convert("timeout", (int, float), d.timeout, _positive),
        breaker_seconds=r.convert("breaker_seconds", (int, float), d.breaker_seconds, _positive),
    )
    if config.endpoint and not config.bucket:
        raise r.fail("bucket", "required with an endpoint")
    return config


def _positive_int(value: int) -> int:
    if value <= 0:
        raise ValueError("must be greater than zero")
    return value


_REGISTRY_KEYS = {"hosts", "origin", "enabled", "registry", "credentials_file"}


def _sessions(r: _Reader) -> SessionsConfig:
    r.reject_unknown({"clients", "record", "replay"})
    return SessionsConfig(clients=r.each("clients", ("docker",), _client_set),
                          record=r.each("record", (), _session_name),
                          replay=r.get("replay", str, ""))


def _client_set(value: str) -> str:
    """"docker" (the Docker bridge network) or a network: "172.17.0.0/16", "10.0.0.5"."""
    if value == "docker":
        return value
    return str(ipaddress.ip_network(value, strict=False))


def _session_name(value: str) -> str:
    if not value or len(value) > 100 or not value.isprintable() or "/" in value:
        raise ValueError("a session name is 1-100 printable characters, no '/'")
    return value


def _split_registries(tables: dict[str, Any], source: str
                      ) -> tuple[dict[str, Any], tuple[Registry, ...]]:
    """``[upstreams.NAME]`` tables for registries (a built-in registry's name, or
    ``registry = true``) applied to the registry catalogue; the others returned."""
    builtin = {r.name: r for r in REGISTRIES}
    entries = dict(builtin)
    others = {}
    for name, value in tables.items():
        if not isinstance(value, dict) or (name not in builtin and value.get("registry") is not True):
            others[name] = value
            continue
        r = _Reader(value, source, f"upstreams.{name}")
        r.reject_unknown(_REGISTRY_KEYS)
        r.get("registry", bool, True)
        if not r.get("enabled", bool, True):
            entries.pop(name, None)
            continue
        if name not in builtin and "hosts" not in value:
            raise r.fail("hosts", "required for an entry that is not built in")
        base = entries.get(name) or Registry(name, ())
        hosts = r.each("hosts", base.hosts, _host_pattern)
        if not hosts:
            raise r.fail("hosts", "must name at least one host")
        entries[name] = replace(
            base, hosts=hosts, origin=r.convert("origin", str, base.origin, _origin_url),
            credentials_file=r.convert("credentials_file", str, base.credentials_file,
                                       _credentials_file))
    return others, tuple(entries.values())


def _credentials_file(value: str) -> str:
    """A path to a file holding ``user:password``; never the secret itself."""
    if value and not os.path.isabs(os.path.expanduser(value)):
        raise ValueError("expected an absolute path to a file holding user:password")
    return os.path.expanduser(value)


_UPSTREAM_KEYS = {"hosts", "origin", "scheme", "rules", "enabled"}
_RULE_KEYS = {"path", "policy", "ttl", "digest"}


def _upstreams(table: dict[str, Any], source: str) -> tuple[Upstream, ...]:
    """Built-in entries, overridden or extended by ``[upstreams.NAME]`` tables."""
    return apply_upstream_tables(BUILTIN, table, source)


def apply_upstream_tables(base: tuple[Upstream, ...], tables: dict[str, Any],
                          source: str) -> tuple[Upstream, ...]:
    """``base`` with each ``NAME: table`` applied in order, as ``[upstreams.NAME]``: for an
    existing entry ``hosts`` replaces its names, ``rules`` are tried before its own, and
    ``enabled = false`` removes it; a new entry needs ``hosts``.  Errors name ``source``
    and the key (also used for runtime edits through the admin API)."""
    entries = {u.name: u for u in base}
    for name, value in tables.items():
        prefix = f"upstreams.{name}"
        if not isinstance(value, dict):
            raise ConfigError(source, prefix, "expected a table")
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
            raise ConfigError(source, prefix, "name must be lower-case letters, digits, - or _")
        r = _Reader(value, source, prefix)
        r.reject_unknown(_UPSTREAM_KEYS)
        if not r.get("enabled", bool, True):
            entries.pop(name, None)
            continue
        entries[name] = _upstream(r, name, entries.get(name))
    return tuple(entries.values())


def _upstream(r: _Reader, name: str, base: Upstream | None) -> Upstream:
    if base is None and "hosts" not in r.table:
        raise r.fail("hosts", "required for an entry that is not built in")
    base = base or Upstream(name, (), end_to_end_headers=True)
    hosts = r.each("hosts", base.hosts, _host_pattern)
    if not hosts:
        raise r.fail("hosts", "must name at least one host")
    rules = r.get("rules", list, [])
    return replace(
        base,
        hosts=hosts,
        scheme=r.convert("scheme", str, base.scheme, lambda v: _choice(v, ("http", "https"))),
        origin=r.convert("origin", str, base.origin, _origin_url),
        rules=tuple(_rule(r, i, rule) for i, rule in enumerate(rules)) + base.rules,
    )


def _rule(parent: _Reader, index: int, value: Any) -> Rule:
    r = _Reader(value if isinstance(value, dict) else {}, parent.source,
                f"{parent.prefix}.rules[{index}]")
    if not isinstance(value, dict):
        raise ConfigError(r.source, r.prefix, "expected a table {path = ..., policy = ...}")
    r.reject_unknown(_RULE_KEYS)
    if "path" not in value:
        raise r.fail("path", "required")
    pattern = r.convert("path", str, "", _regex)
    policy = r.convert("policy", str, "standard", Policy)
    ttl = r.convert("ttl", int, 600 if policy is Policy.REVALIDATE else 0, _non_negative)
    digest = r.convert("digest", str, "", lambda v: _choice(v, ("", *sorted(DIGEST_SCHEMES))))
    return Rule(pattern, policy, ttl, digest, end_to_end_headers=True)


# -- value converters: raise ValueError with a reason ------------------------------------

_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
               "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20,
               "gib": 2**30, "tib": 2**40}


def parse_size(value: str | int) -> int:
    """``"50GiB"``, ``"500MB"``, ``"1.5G"`` or a plain byte count."""
    if isinstance(value, int):
        size = value
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", value)
        if not m or m.group(2).lower() not in _SIZE_UNITS:
            raise ValueError("expected a size such as 50GiB, 500MB or a byte count")
        size = int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    if size <= 0:
        raise ValueError("must be greater than zero")
    return size


def parse_host_port(value: str) -> tuple[str, int]:
    """``"127.0.0.1:3129"``, ``"[::1]:3129"``."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected ADDRESS:PORT")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    ipaddress.ip_address(host)
    return host, int(port)


def _listen_address(value: str) -> str:
    if value == "auto":
        return value
    return str(ipaddress.ip_address(value))


def _forwarder(value: str) -> str:
    if value == "system":
        return value
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    parse_host_port(value)
    return value


def _ipv4_or_auto(value: str) -> str:
    if value == "auto":
        return value
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise ValueError('expected an IPv4 address or "auto"') from None


def _ipv6_or_empty(value: str) -> str:
    if value == "":
        return value
    try:
        return str(ipaddress.IPv6Address(value))
    except ValueError:
        raise ValueError('expected an IPv6 address or "" (none)') from None


_HOSTNAME = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*"
                       r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def _hostname(value: str) -> str:
    name = value.lower().rstrip(".")
    if not _HOSTNAME.fullmatch(name):
        raise ValueError("not a valid hostname")
    return name


# A Docker image reference by name and optional tag: [registry[:port]/]path[:tag].
_IMAGE = re.compile(r"^(?:[A-Za-z0-9.-]+(?::\d+)?/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
                    r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*(?::\w[\w.-]{0,127})?$")


def image_reference(value: str) -> str:
    if "@" in value:
        raise ValueError("a digest reference cannot be shadowed (FROM by digest never uses "
                         "a local tag); name it by tag")
    if not _IMAGE.match(value):
        raise ValueError("not an image reference (NAME[:TAG], e.g. python:3.12-slim)")
    return value


def _host_pattern(value: str) -> str:
    if value.startswith("*."):
        return "*." + _hostname(value[2:])
    return _hostname(value)


def _origin_url(value: str) -> str:
    if value == "":
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected http://HOST[:PORT][/PREFIX] or https://…")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or fragment")
    return value.rstrip("/")


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as e:
        raise ValueError(f"not a valid regular expression: {e}") from None
    return value


def _choice(value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"expected one of {', '.join(repr(c) for c in choices)}")
    return value


def _non_negative(value: int) -> int:
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be greater than zero")
    return float(value)
