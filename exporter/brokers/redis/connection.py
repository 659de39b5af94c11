"""The one Redis connection builder, used by the event stream and the poller alike.

It reads a kombu Redis broker URL the way kombu does and returns a redis-py connection pool:

* ``redis://[user:password@]host[:port][/db]`` and ``rediss://`` (TLS). Query options: the ``ssl_*`` ones
  redis-py knows (``ssl_cert_reqs``, ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``,
  ``ssl_ca_path``, ``ssl_check_hostname``) are honoured, with kombu's spelling ``CERT_REQUIRED`` accepted,
  and so are redis-py's ``db``, ``health_check_interval``, ``max_connections``, ``retry_on_timeout`` and
  socket options (the caller's own timeouts win); kombu-only options are dropped, since redis-py would
  pass them to the connection and fail.
* ``redis+socket:///path/to/sock`` and ``socket://``: a Unix socket (``?virtual_host=N`` or ``?db=N``
  selects the database).
* ``sentinel://[:password@]host:port[/db];sentinel://host2:port2;...``: the master named by the
  ``master_name`` transport option, found through the sentinels (``sentinel_kwargs`` and
  ``min_other_sentinels`` honoured; ``ssl_*`` query options apply to the master connection).

Callers pass their own connection behaviour (timeouts, keepalive, retry) as ``overrides``; what the URL
and transport options say about where and how to connect is decided here only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.retry import Retry
from redis.sentinel import Sentinel

from exporter.brokers.settings import BrokerSettingsError
from exporter.secrets import option_secrets

SCHEMES = ("redis", "rediss", "redis+socket", "socket", "sentinel")
SSL_QUERY_OPTIONS = frozenset({
    "ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_ca_path", "ssl_check_hostname",
})
# redis-py's own URL options that both callers can live with (their ``overrides`` win over these).
URL_QUERY_OPTIONS = SSL_QUERY_OPTIONS | {
    "db", "health_check_interval", "max_connections", "retry_on_timeout", "socket_keepalive",
    "socket_timeout", "socket_connect_timeout",
}


def _first(url: str) -> str:
    return url.split(";", 1)[0].strip()


def _db(text: str | None) -> int:
    text = (text or "").strip("/")
    return int(text) if text.isdigit() else 0


def ssl_options(query: str) -> dict[str, Any]:
    """The TLS options of a URL query, as redis-py connection arguments."""
    out: dict[str, Any] = {}
    for key, value in parse_qsl(query):
        if key not in SSL_QUERY_OPTIONS:
            continue
        if key == "ssl_cert_reqs":  # kombu/Celery write CERT_REQUIRED, redis-py wants "required"
            value = value.lower().removeprefix("ssl.").removeprefix("cert_")
            out[key] = value
        elif key == "ssl_check_hostname":
            out[key] = value.lower() in ("1", "true", "yes", "on")
        else:
            out[key] = value
    return out


def connection_pool(url: str, options: Mapping[str, Any],
                    **overrides: Any) -> tuple[redis.ConnectionPool, int]:
    """A connection pool for the Redis broker ``url`` (see the module docstring) and its db number.
    Raises ``BrokerSettingsError`` for a sentinel URL without ``master_name``."""
    first = _first(url)
    split = urlsplit(first)
    scheme = split.scheme.lower()
    query = dict(parse_qsl(split.query))
    if scheme == "sentinel":
        return _sentinel_pool(url, options, overrides)
    if scheme in ("redis+socket", "socket"):
        db = _db(query.get("virtual_host") or query.get("db"))
        pool = redis.ConnectionPool(
            connection_class=redis.UnixDomainSocketConnection, path=split.path, db=db,
            username=unquote(split.username) if split.username else None,
            password=unquote(split.password) if split.password else None, **overrides)
        return pool, db
    # TLS options on a plain redis:// URL would reach a plain Connection, which rejects them.
    allowed = URL_QUERY_OPTIONS if scheme == "rediss" else URL_QUERY_OPTIONS - SSL_QUERY_OPTIONS
    known = urlencode([(k, v) for k, v in parse_qsl(split.query) if k in allowed])
    kwargs = parse_url(urlunsplit((scheme, split.netloc, split.path, known, "")))
    if scheme == "rediss":
        kwargs.update(ssl_options(split.query))
    kwargs.update(overrides)
    pool = redis.ConnectionPool(**kwargs)
    return pool, int(kwargs.get("db") or 0)


def _sentinel_pool(url: str, options: Mapping[str, Any],
                   overrides: dict[str, Any]) -> tuple[redis.ConnectionPool, int]:
    master_name = options.get("master_name")
    if not master_name:
        raise BrokerSettingsError("broker_transport_options",
                                  "a sentinel:// broker URL needs the master_name transport option")
    hosts = []
    for one in (u.strip() for u in url.split(";") if u.strip()):
        parts = urlsplit(one)
        hosts.append((parts.hostname or "localhost", parts.port or 26379))
    first = urlsplit(_first(url))
    sentinel_kwargs = dict(options.get("sentinel_kwargs") or {})
    # The sentinels answer quickly or not at all; never wait longer on them than on the master.
    for key in ("socket_connect_timeout", "socket_timeout"):
        sentinel_kwargs.setdefault(key, overrides.get("socket_connect_timeout", overrides.get(key, 2.0)))
    # A sentinel that is down is skipped for the next one at once: redis-py's default retry (3 attempts
    # with 1-10 s backoff) spent a whole poll deadline on the first sentinel of the URL when it was down.
    sentinel_kwargs.setdefault("retry", Retry(NoBackoff(), 0))
    tls = ssl_options(first.query)
    sentinel = Sentinel(hosts, min_other_sentinels=int(options.get("min_other_sentinels", 0)),
                        sentinel_kwargs=sentinel_kwargs)
    master = sentinel.master_for(
        str(master_name), db=_db(first.path),
        password=unquote(first.password) if first.password else None,
        username=unquote(first.username) if first.username else None,
        **({"ssl": True, **tls} if tls else {}), **overrides,
    )
    return master.connection_pool, _db(first.path)


def secrets_of(options: Mapping[str, Any]) -> tuple[str, ...]:
    """Secrets the transport options hold (``sentinel_kwargs.password``...), to mask in error messages."""
    return option_secrets(options)
