"""The Redis URL: parsed whole when the configuration is read, and masked for output.

A URL that redis-py would take loosely (a port of ``abc``, a db of ``zz``, no
host at all, a password cut short by a raw ``#``) is refused here with one
line naming the problem, so that a typo never becomes a crash loop under
systemd nor a connection to somebody else's Redis on localhost:6379.  The
store connects from the parsed parts, never from the text again.

Error messages never contain the password, and ``masked()`` is the only form
of a URL that memoryd prints, logs or reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final
from urllib.parse import parse_qsl, quote, unquote, urlsplit

SCHEMES: Final = (
    "redis",
    "rediss",
    "unix",
    "redis+sentinel",
    "rediss+sentinel",
    "redis+cluster",
    "rediss+cluster",
)
DEFAULT_PORT: Final = 6379
DEFAULT_SENTINEL_PORT: Final = 26379
MAX_DB: Final = 1_000_000
MASK: Final = "***"
# Query options memoryd passes on; anything else is a typo until proven otherwise.
_TLS_OPTIONS: Final = frozenset(
    {"ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname"}
)
_OPTIONS: Final = frozenset({"db", "username", "password"})
# The credentials of the sentinels themselves, when they have their own.
_SENTINEL_OPTIONS: Final = frozenset({"sentinel_username", "sentinel_password"})
_SECRET_OPTIONS: Final = frozenset({"password", "sentinel_password"})


class RedisUrlError(ValueError):
    """The URL cannot be used; the message names the part and never holds a secret."""


@dataclass(frozen=True, slots=True)
class RedisUrl:
    scheme: str
    host: str | None = None
    port: int | None = None
    path: str | None = None  # unix:// only
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls_options: dict[str, str] = field(default_factory=dict)
    # Every host:port given; for redis+sentinel, the sentinels.
    hosts: tuple[tuple[str, int], ...] = ()
    service_name: str | None = None  # redis+sentinel only: the master's name
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)

    @property
    def topology(self) -> str:
        """ "standalone", "sentinel" or "cluster"."""
        return self.scheme.partition("+")[2] or "standalone"

    @property
    def tls(self) -> bool:
        return self.scheme.startswith("rediss")

    @property
    def address(self) -> str:
        """Where the server is, without credentials: what names this store."""
        if self.scheme == "unix":
            return f"unix://{self.path}?db={self.db}"
        hosts = ",".join(f"{_bracketed(host)}:{port}" for host, port in self.hosts)
        if self.topology == "sentinel":
            return f"{self.scheme}://{hosts}/{self.service_name}/{self.db}"
        if self.topology == "cluster":
            return f"{self.scheme}://{hosts}"
        return f"{self.scheme}://{hosts}/{self.db}"


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def parse(url: str) -> RedisUrl:
    """The parts of ``url``, or RedisUrlError naming what is wrong."""
    if "#" in url:
        raise RedisUrlError("a '#' must be written %23 (in a password too)")
    if any(char.isspace() or ord(char) < 32 for char in url):
        raise RedisUrlError("must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise RedisUrlError("is not a URL") from None
    if parts.scheme not in SCHEMES:
        raise RedisUrlError(
            "must start with redis://, rediss://, unix://, redis+sentinel://, redis+cluster:// "
            "or rediss+sentinel:// / rediss+cluster://"
        )
    if "@" in parts.path or "@" in parts.query:
        # A raw / or ? inside the credentials ended them early: what follows
        # would be taken for a path or a query, so refuse it whole.
        raise RedisUrlError("a / ? # or @ in a user name, password or path must be %-encoded")
    scheme = parts.scheme
    topology = scheme.partition("+")[2]
    options = _options(
        parts.query, tls=scheme.startswith("rediss"), sentinel=topology == "sentinel"
    )
    username, password = _credentials(parts.netloc, options)
    tls = {name: value for name, value in options.items() if name in _TLS_OPTIONS}
    if scheme == "unix":
        db = _db("", options.get("db"))
        if _host_part(parts.netloc):
            raise RedisUrlError("unix:// takes a socket path, not a host (unix:///run/redis.sock)")
        if not parts.path:
            raise RedisUrlError("unix:// needs the socket's path (unix:///run/redis.sock)")
        path = unquote(parts.path)
        return RedisUrl("unix", path=path, db=db, username=username, password=password)
    default_port = DEFAULT_SENTINEL_PORT if topology == "sentinel" else DEFAULT_PORT
    hosts = _hosts(parts.netloc, default_port, several=bool(topology))
    service_name = None
    if topology == "sentinel":
        service_name, db_path = _service_and_db(parts.path)
        db = _db(db_path, options.get("db"))
    elif topology == "cluster":
        if parts.path.strip("/") or "db" in options:
            raise RedisUrlError("a cluster has one database, 0: redis+cluster:// takes no /db")
        db = 0
    else:
        db = _db(parts.path, options.get("db"))
    host, port = hosts[0]
    return RedisUrl(
        scheme,
        host,
        port,
        None,
        db,
        username,
        password,
        tls,
        hosts,
        service_name,
        options.get("sentinel_username") or None,
        options.get("sentinel_password") or None,
    )


def _service_and_db(path: str) -> tuple[str, str]:
    """``/service_name[/db]`` of a redis+sentinel:// URL."""
    service, _, db = path.strip("/").partition("/")
    service = unquote(service)
    if not service:
        raise RedisUrlError(
            "redis+sentinel:// needs the master's name: redis+sentinel://HOST:PORT/SERVICE[/DB]"
        )
    if any(char in service for char in "/ "):
        raise RedisUrlError("the master's name must not hold '/' or spaces")
    return service, db


def _options(query: str, *, tls: bool, sentinel: bool) -> dict[str, str]:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise RedisUrlError("its query string is not name=value pairs") from None
    options: dict[str, str] = {}
    allowed = (
        _OPTIONS
        | (_TLS_OPTIONS if tls else frozenset())
        | (_SENTINEL_OPTIONS if sentinel else frozenset())
    )
    for name, value in pairs:
        if name not in allowed:
            known = ", ".join(sorted(allowed))
            raise RedisUrlError(f"unknown option {name[:40]!r} (known: {known})")
        if name in options:
            raise RedisUrlError(f"option {name!r} given twice")
        options[name] = value
    return options


def _credentials(netloc: str, options: dict[str, str]) -> tuple[str | None, str | None]:
    username = password = None
    if "@" in netloc:
        userinfo = netloc.rsplit("@", 1)[0]
        user_text, has_password, password_text = userinfo.partition(":")
        username = unquote(user_text) or None
        password = unquote(password_text) if has_password else None
    if "password" in options:
        if password is not None:
            raise RedisUrlError("the password is given twice (before the host and as ?password=)")
        password = options["password"]
    if "username" in options:
        if username is not None:
            raise RedisUrlError("the username is given twice (before the host and as ?username=)")
        username = options["username"] or None
    return username, password or None


def _host_part(netloc: str) -> str:
    return netloc.rsplit("@", 1)[-1]


def _hosts(netloc: str, default_port: int, *, several: bool) -> tuple[tuple[str, int], ...]:
    items = _host_part(netloc).split(",")
    if len(items) > 1 and not several:
        raise RedisUrlError(
            "one host only; several are for redis+sentinel:// (the sentinels) and redis+cluster://"
        )
    return tuple(_host_and_port(item, default_port) for item in items)


def _host_and_port(hostport: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(f"//{hostport}")
    if not parts.hostname:
        raise RedisUrlError("needs a host (redis://HOST:PORT/DB); there is no default host")
    try:
        port = parts.port
    except ValueError:
        raise RedisUrlError("the port must be a number from 1 to 65535") from None
    if port == 0:
        raise RedisUrlError("the port must be a number from 1 to 65535")
    return parts.hostname, default_port if port is None else port


def _db(path: str, option: str | None) -> int:
    from_path = path.strip("/")
    if from_path and option is not None and from_path != option:
        raise RedisUrlError("the db is given twice (as the path and as ?db=)")
    text = from_path or option or "0"
    if not text.isdigit() or int(text) > MAX_DB:
        raise RedisUrlError(f"the db must be a whole number, not {text[:20]!r}")
    return int(text)


def masked(url: str) -> str:
    """``url`` with every secret replaced by ``***``; safe for logs and status.

    A URL that does not parse shows its scheme only, and only one of ours:
    whatever follows may hold a password in a place we cannot tell, and text
    before a colon may be the password itself (``secret:...``).
    """
    if not url:
        return url
    try:
        parse(url)
    except RedisUrlError:
        scheme = url.split(":", 1)[0]
        return f"{scheme}://{MASK}" if scheme in SCHEMES else MASK
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, hostport = netloc.rsplit("@", 1)
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{hostport}" if has_password else netloc
    query = "&".join(
        f"{name}={MASK if name in _SECRET_OPTIONS else quote(value, safe='/')}"
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
    )
    # Put together by hand: urlunsplit drops the // of an empty host (unix:///path).
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")
