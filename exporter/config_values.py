"""Parsers for one configuration value, and the load-time checks of the broker URL.

Each parser takes what a flag, an environment variable (a string) or the YAML file (any YAML value) gave
and returns the typed value, or raises ``ValueError`` with a short message a user can act on ("expected a
whole number"): ``exporter.config`` adds the option's flag, the value and where it came from. Nothing
here raises Python's own wording (``invalid literal for int() with base 10``).

``broker_url_problem`` catches, before anything connects, the broker URLs that could never work: a Redis
database that is not a number, a transport kombu does not know, or one whose library is not installed.
Without it the event stream would retry them forever.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

LOG_LEVELS = ("debug", "info", "warn", "error")
# Older spellings accepted for a level, and the name every consumer (logging, Celery) understands.
LOG_LEVEL_ALIASES = {"warn": "warning", "warning": "warning"}


def _number(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError("expected a number")
    try:
        return float(v.strip() if isinstance(v, str) else v)
    except (TypeError, ValueError):
        raise ValueError("expected a number") from None


def positive_float(v: Any) -> float:
    f = _number(v)
    if not math.isfinite(f) or f <= 0:
        raise ValueError("must be a positive number")
    return f


def non_negative_float(v: Any) -> float:
    f = _number(v)
    if not math.isfinite(f) or f < 0:
        raise ValueError("must be zero or a positive number")
    return f


def positive_int(v: Any) -> int:
    if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
        raise ValueError("expected a whole number")
    try:
        i = int(v.strip() if isinstance(v, str) else v)
    except (TypeError, ValueError):
        raise ValueError("expected a whole number") from None
    if i <= 0:
        raise ValueError("must be a positive whole number")
    return i


def port(v: Any) -> int:
    i = positive_int(v)
    if i > 65535:
        raise ValueError("must be a TCP port, 1 to 65535")
    return i


def string(v: Any) -> str:
    if not isinstance(v, (str, int, float)) or isinstance(v, bool):
        raise ValueError("expected a string")
    return str(v)


def optional_string(v: Any) -> str | None:
    s = string(v).strip()
    return s or None


def queue_name(v: Any) -> str | None:
    """An AMQP queue-name part: printable, no spaces, short enough to stay under AMQP's 255 bytes."""
    s = optional_string(v)
    if s is None:
        return None
    if len(s.encode()) > 200 or not s.isprintable() or any(c.isspace() for c in s):
        raise ValueError("expected a name of at most 200 bytes without spaces")
    return s


def choice(*choices: str, aliases: dict[str, str] | None = None) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        s = string(v).strip().lower()
        if s not in choices and s not in (aliases or {}):
            raise ValueError(f"must be one of {', '.join(choices)}")
        return (aliases or {}).get(s, s)

    return parse


def string_list(v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        items = [p.strip() for p in v.split(",")]
    elif isinstance(v, (list, tuple)):
        items = [string(p).strip() for p in v]
    else:
        raise ValueError("expected a list of strings (or a comma-separated string)")
    return tuple(p for p in items if p)


def url_list(v: Any) -> tuple[str, ...]:
    """URLs: a YAML list, repeated flags (a list), or one string separated by spaces or commas."""
    if isinstance(v, str):
        return tuple(p for p in v.replace(",", " ").split() if p)
    if isinstance(v, (list, tuple)):
        return tuple(u for p in v for u in url_list(string(p)))
    raise ValueError("expected a list of URLs (or a string of URLs separated by spaces or commas)")


def buckets(v: Any) -> tuple[float, ...]:
    raw = v.split(",") if isinstance(v, str) else v
    if not isinstance(raw, (list, tuple)) or not raw:
        raise ValueError("expected a non-empty list of bucket upper bounds")
    out = tuple(positive_float(x) for x in raw)
    if any(b >= c for b, c in itertools.pairwise(out)):
        raise ValueError("bucket bounds must be strictly increasing")
    return out


def mapping(v: Any) -> dict[str, Any]:
    if isinstance(v, str):
        try:
            v = json.loads(v) if v.strip() else {}
        except json.JSONDecodeError as exc:  # its msg never quotes the text, which may hold a password
            raise ValueError(f"expected a JSON object ({exc.msg} at character {exc.pos + 1})") from None
    if not isinstance(v, dict):
        raise ValueError("expected a mapping (YAML) or a JSON object (flag or environment)")
    return {str(k): val for k, val in v.items()}


def routes(v: Any) -> tuple[tuple[str, str], ...]:
    """Task-name globs to queues, like Celery's ``task_routes``: ``{"proj.email.*": "email"}``, a
    value may also be ``{"queue": "email"}``. Flags and env take ``glob=queue,glob=queue``."""
    if isinstance(v, str):
        pairs: list[tuple[Any, Any]] = []
        for part in v.split(","):
            if part.strip():
                glob, sep, queue = part.partition("=")
                if not sep:
                    raise ValueError(f"{part!r} is not glob=queue")
                pairs.append((glob.strip(), queue.strip()))
    elif isinstance(v, dict):
        pairs = list(v.items())
    else:
        raise ValueError("expected a mapping of task-name globs to queue names")
    out = []
    for glob, target in pairs:
        target_queue: Any = target.get("queue") if isinstance(target, dict) else target
        if not isinstance(glob, str) or not glob or not isinstance(target_queue, str) or not target_queue:
            raise ValueError(f"route {glob!r}: expected a queue name")
        out.append((glob, target_queue))
    return tuple(out)


def _split_host_port(s: str) -> tuple[str, str | None]:
    """``[::1]:9808`` -> ("::1", "9808"); ``host:9808`` -> ("host", "9808"); ``::1`` / ``host`` -> no port."""
    if s.startswith("["):
        host, sep, rest = s[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError("expected [IPv6-ADDRESS]:PORT")
        return host, rest[1:] if rest else None
    if s.count(":") == 1:
        host, _, p = s.partition(":")
        return host, p
    return s, None  # a bare IPv6 literal has several colons and no port


def listen_address(v: Any) -> tuple[str, int]:
    """``--web.listen-address``: ``[HOST]:PORT``; an empty host (``:9808``) means every address."""
    host, p = _split_host_port(string(v).strip())
    if p is None:
        raise ValueError("expected [HOST]:PORT, for example :9808, 0.0.0.0:9808 or [::]:9808")
    return host, port(p)


def join_host_port(host: str, port: int) -> str:
    """The inverse of ``listen_address``, for logs: ``:9808``, ``0.0.0.0:9808``, ``[::1]:9808``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def host_only(v: Any) -> str:
    """The older ``--listen-address``, which never took a port: a port there would be silently ignored
    (the HTTP port comes from ``--port``), so it is refused instead."""
    s = string(v).strip()
    if _split_host_port(s)[1] is not None:
        raise ValueError("takes a host without a port (--web.listen-address=HOST:PORT takes both)")
    return s.strip("[]")


def telemetry_path(v: Any) -> str:
    s = string(v).strip()
    if not s.startswith("/") or s in ("/", "/healthz", "/readyz") or "?" in s or " " in s:
        raise ValueError("must be a path such as /metrics (not /, /healthz or /readyz)")
    return s


# ------------------------------------------------------------------ broker URL checks
# The module each kombu transport imports lazily (kombu's own import succeeds without it) and the extra
# that installs it. Transports whose import fails outright are caught by resolving them.
_TRANSPORT_LIBRARIES = {
    "sqs": ("boto3", "sqs"), "mongodb": ("pymongo", "mongodb"), "zookeeper": ("kazoo", "zookeeper"),
    "sqlalchemy": ("sqlalchemy", "sqlalchemy"), "sqla": ("sqlalchemy", "sqlalchemy"),
    "consul": ("consul", "consul"), "etcd": ("etcd", "etcd"), "pyro": ("Pyro4", "pyro"),
    "slmq": ("softlayer_messaging", "slmq"), "qpid": ("qpid.messaging", "qpid"),
    "confluentkafka": ("confluent_kafka", "confluentkafka"), "kafka": ("confluent_kafka", "confluentkafka"),
    "azurestoragequeues": ("azure.storage.queue", "azurestoragequeues"),
    "azureservicebus": ("azure.servicebus", "azureservicebus"),
    "gcpubsub": ("google.cloud.pubsub_v1", "gcpubsub"), "pgmq": ("pgmq", "pgmq"),
    "redis": ("redis", "redis"), "rediss": ("redis", "redis"), "sentinel": ("redis", "redis"),
}
_REDIS_DB_SCHEMES = ("redis", "rediss", "sentinel")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package ("azure" of "azure.servicebus")
        return False


def redis_url_problem(url: str) -> str | None:
    """Why ``url`` is not a Redis database URL the DLQ poller can use (value never shown), or None."""
    split = urlsplit(url.split(";", 1)[0].strip())
    if split.scheme.lower() not in (*_REDIS_DB_SCHEMES, "redis+socket", "socket"):
        return "expected a Redis URL (redis://host:6379/3, rediss://, sentinel://, redis+socket://)"
    try:
        split.port  # noqa: B018
    except ValueError:
        return "not a valid URL: bad port (value not shown)"
    return broker_url_problem(url)


def broker_url_problem(url: str) -> str | None:
    """Why ``url`` can never work, in one line saying what to fix or install; None if it may work.

    Only the URL and the installed packages are looked at: nothing connects here."""
    from kombu.transport import resolve_transport

    for one in (u.strip() for u in url.split(";") if u.strip()):
        split = urlsplit(one)
        scheme = split.scheme.lower()
        transport = scheme.split("+", 1)[0]  # redis+socket:// is kombu's redis transport
        if transport in _REDIS_DB_SCHEMES and split.scheme.lower() != "redis+socket":
            db = split.path.strip("/")
            if db and not db.isdigit():
                return (f"the Redis database in the URL path must be a number (redis://host:6379/0), "
                        f"got {db[:40]!r}")
        library, extra = _TRANSPORT_LIBRARIES.get(transport, (None, transport))
        try:
            resolve_transport(transport)
        except KeyError:
            return (f"no broker transport is called {scheme!r} (expected redis://, rediss://, sentinel://, "
                    "amqp://, amqps:// or another kombu transport)")
        except ImportError as exc:
            missing = (getattr(exc, "name", None) or library or transport).split(".")[0]  # really missing
            return (f"the {transport!r} transport needs the Python package {missing!r}, which is not "
                    f"installed: pip install 'kombu[{extra}]'")
        except Exception as exc:  # kombu's confluentkafka module fails with NameError without its library
            return (f"the {transport!r} transport cannot be loaded ({type(exc).__name__}); "
                    f"pip install 'kombu[{extra}]'")
        if library and not _importable(library):
            return (f"the {transport!r} transport needs the Python package {library!r}, which is not "
                    f"installed: pip install 'kombu[{extra}]'")
    return None
