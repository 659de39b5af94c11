"""The one typed, validated configuration, built once from CLI flags > ``CELERY_EXPORTER_*`` environment
variables > a YAML file (``--config``) > defaults.

Every option is declared once in ``OPTIONS``; the argument parser, the environment lookup, the YAML key
check, the README and ``docs/configuration.md`` all come from that table (a test keeps the docs in sync).
A bad value, an unknown YAML key or a missing broker URL raises ``ConfigError`` naming the key and where
it came from; ``__main__`` turns it into exit status 2. Secrets (passwords in URLs) are redacted by
``redact_url`` wherever a URL is shown.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from exporter.state import DEFAULT_DURATION_BUCKETS, DEFAULT_QUEUE_WAIT_BUCKETS, StateSettings

ENV_PREFIX = "CELERY_EXPORTER_"
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(Exception):
    """A configuration problem, with the key and the source (flag, env var or file) it came from."""

    def __init__(self, key: str, source: str, message: str) -> None:
        self.key, self.source, self.message = key, source, message
        super().__init__(f"invalid configuration: {key} (from {source}): {message}")


# ---------------------------------------------------------------- value parsers (str or YAML value)
def _positive_float(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError("expected a number")
    f = float(v)
    if not math.isfinite(f) or f <= 0:
        raise ValueError("must be a positive number")
    return f


def _non_negative_float(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError("expected a number")
    f = float(v)
    if not math.isfinite(f) or f < 0:
        raise ValueError("must be zero or a positive number")
    return f


def _positive_int(v: Any) -> int:
    if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
        raise ValueError("expected a whole number")
    i = int(v)
    if i <= 0:
        raise ValueError("must be a positive whole number")
    return i


def _port(v: Any) -> int:
    i = _positive_int(v)
    if i > 65535:
        raise ValueError("must be a TCP port, 1 to 65535")
    return i


def _str(v: Any) -> str:
    if not isinstance(v, (str, int, float)) or isinstance(v, bool):
        raise ValueError("expected a string")
    return str(v)


def _opt_str(v: Any) -> str | None:
    s = _str(v).strip()
    return s or None


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        s = _str(v).lower()
        if s not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return s

    return parse


def _str_list(v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        items = [p.strip() for p in v.split(",")]
    elif isinstance(v, (list, tuple)):
        items = [_str(p).strip() for p in v]
    else:
        raise ValueError("expected a list of strings (or a comma-separated string)")
    return tuple(p for p in items if p)


def _buckets(v: Any) -> tuple[float, ...]:
    raw = v.split(",") if isinstance(v, str) else v
    if not isinstance(raw, (list, tuple)) or not raw:
        raise ValueError("expected a non-empty list of bucket upper bounds")
    out = tuple(_positive_float(x) for x in raw)
    if any(b >= c for b, c in itertools.pairwise(out)):
        raise ValueError("bucket bounds must be strictly increasing")
    return out


def _mapping(v: Any) -> dict[str, Any]:
    if isinstance(v, str):
        v = json.loads(v) if v.strip() else {}
    if not isinstance(v, dict):
        raise ValueError("expected a mapping (YAML) or a JSON object (flag or environment)")
    return {str(k): val for k, val in v.items()}


def _routes(v: Any) -> tuple[tuple[str, str], ...]:
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


@dataclass(frozen=True)
class Option:
    name: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    metavar: str = "VALUE"
    cli: bool = True  # mappings are YAML-first but every option can still come from a flag or env

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


OPTIONS: tuple[Option, ...] = (
    Option("broker_url", _opt_str, None,
           "Celery broker URL (redis://, rediss://, sentinel://, amqp://, amqps://, pyamqp://, or any "
           "kombu transport). Required.", "URL"),
    Option("listen_address", _str, "0.0.0.0", "Address the HTTP server binds to.", "ADDR"),
    Option("port", _port, 9808, "HTTP port for /metrics, /healthz and /readyz.", "PORT"),
    Option("log_level", _choice(*LOG_LEVELS), "info", "Log level: debug, info, warning or error.", "LEVEL"),
    Option("log_format", _choice("auto", "json", "console"), "auto",
           "Log format: json, console, or auto (json when stdout is not a terminal).", "FORMAT"),
    Option("worker_timeout", _positive_float, 60.0,
           "Seconds without a heartbeat after which a worker counts as down.", "SECONDS"),
    Option("worker_purge_after", _positive_float, 600.0,
           "Seconds after its last event at which a departed worker's series are dropped.", "SECONDS"),
    Option("max_tracked_tasks", _positive_int, 100_000,
           "Size of the task table (uuid -> name, queue, times) that pairs events; LRU-evicted.", "N"),
    Option("task_max_age", _positive_float, 86_400.0,
           "Seconds after its last event at which a task is dropped from the task table.", "SECONDS"),
    Option("default_queue", _str, "celery",
           "Queue label for tasks whose queue is neither in a task-sent event nor in task_routes.", "NAME"),
    Option("task_routes", _routes, (),
           "Task-name globs to queue names, like Celery's task_routes (YAML mapping, or glob=queue,...).",
           "ROUTES"),
    Option("duration_buckets", _buckets, DEFAULT_DURATION_BUCKETS,
           "Bucket bounds (seconds) of celery_task_duration_seconds, comma-separated.", "BOUNDS"),
    Option("queue_wait_buckets", _buckets, DEFAULT_QUEUE_WAIT_BUCKETS,
           "Bucket bounds (seconds) of celery_task_queue_wait_seconds, comma-separated.", "BOUNDS"),
    Option("max_task_names", _positive_int, 1_000,
           "Distinct task names tracked; more fold into task_name=\"__overflow__\".", "N"),
    Option("max_exception_types", _positive_int, 200,
           "Distinct exception classes tracked; more fold into exception=\"__overflow__\".", "N"),
    Option("max_workers", _positive_int, 1_000, "Distinct workers tracked at once.", "N"),
    Option("max_queues", _positive_int, 1_000,
           "Distinct queue names tracked from events and broker polls; more fold into "
           "\"__overflow__\".", "N"),
    Option("max_finished_tasks", _positive_int, 20_000,
           "Finished tasks remembered (uuid -> name, queue) so their late or repeated events keep their "
           "name.", "N"),
    Option("max_series", _positive_int, 50_000,
           "Total series across the per-task metric families; new ones past it fold into "
           "\"__overflow__\".", "N"),
    Option("broker_transport_options", _mapping, {},
           "Kombu transport options, as in Celery's broker_transport_options (global_keyprefix, "
           "master_name, priority_steps, sep, ...). YAML mapping or JSON object.", "JSON"),
    Option("event_queue_prefix", _str, "celeryev.celery-exporter",
           "RabbitMQ: name prefix of the exporter's own event queue (a per-process id is appended).", "NAME"),
    Option("event_queue_ttl", _non_negative_float, 60.0,
           "RabbitMQ: seconds an event may wait in the exporter's queue before RabbitMQ drops it "
           "(x-message-ttl; 0 for no limit). Celery's own default of 5 s loses events under load.",
           "SECONDS"),
    Option("event_queue_expires", _positive_float, 300.0,
           "RabbitMQ: seconds the exporter's event queue outlives a lost connection (x-expires), so a "
           "reconnect picks up what arrived meanwhile.", "SECONDS"),
    Option("event_prefetch", _positive_int, 2_000, "RabbitMQ: unacknowledged events in flight (basic.qos).",
           "N"),
    Option("poll_interval", _positive_float, 5.0, "Seconds between broker polls of queue depths.",
           "SECONDS"),
    Option("poll_timeout", _positive_float, 4.0, "Deadline (seconds) of one broker poll.", "SECONDS"),
    Option("queues", _str_list, (),
           "Task queues to watch (names or globs), beyond those discovered from the broker and events.",
           "GLOBS"),
    Option("retry_queues", _str_list, (),
           "Queues (names or globs) that are retry/delay queues; overrides discovery.", "GLOBS"),
    Option("dead_letter_queues", _str_list,
           ("dlq:*", "celery:dead_letter_queue", "dlq", "*.dlq", "dead_letter*"),
           "Queues or Redis keys (names or globs) that are dead-letter queues; overrides discovery.",
           "GLOBS"),
    Option("exclude_queues", _str_list, (), "Queues (names or globs) never reported.", "GLOBS"),
    Option("max_scan_keys", _positive_int, 10_000, "Redis: most keys one poll may SCAN.", "N"),
    Option("dlq_timestamp_field", _str, "timestamp",
           "Redis: JSON field of a DLQ list entry holding its enqueue time (for the oldest-age metric).",
           "FIELD"),
    Option("rabbitmq_management_url", _opt_str, None,
           "RabbitMQ management API base URL (http://user:pass@host:15672); without it queues are "
           "polled with passive declares over AMQP.", "URL"),
    Option("web_config_file", _opt_str, None,
           "Prometheus exporter-toolkit web config (TLS, basic auth) for every HTTP endpoint.", "FILE"),
)
_BY_NAME = {o.name: o for o in OPTIONS}


@dataclass(frozen=True)
class Config:
    """The validated configuration. Built by ``load_config``; never mutated."""

    broker_url: str
    listen_address: str = "0.0.0.0"
    port: int = 9808
    log_level: str = "info"
    log_format: str = "auto"
    worker_timeout: float = 60.0
    worker_purge_after: float = 600.0
    max_tracked_tasks: int = 100_000
    task_max_age: float = 86_400.0
    default_queue: str = "celery"
    task_routes: tuple[tuple[str, str], ...] = ()
    duration_buckets: tuple[float, ...] = DEFAULT_DURATION_BUCKETS
    queue_wait_buckets: tuple[float, ...] = DEFAULT_QUEUE_WAIT_BUCKETS
    max_task_names: int = 1_000
    max_exception_types: int = 200
    max_workers: int = 1_000
    max_queues: int = 1_000
    max_finished_tasks: int = 20_000
    max_series: int = 50_000
    broker_transport_options: Mapping[str, Any] = field(default_factory=dict)
    event_queue_prefix: str = "celeryev.celery-exporter"
    event_queue_ttl: float = 60.0
    event_queue_expires: float = 300.0
    event_prefetch: int = 2_000
    poll_interval: float = 5.0
    poll_timeout: float = 4.0
    queues: tuple[str, ...] = ()
    retry_queues: tuple[str, ...] = ()
    dead_letter_queues: tuple[str, ...] = (
        "dlq:*", "celery:dead_letter_queue", "dlq", "*.dlq", "dead_letter*"
    )
    exclude_queues: tuple[str, ...] = ()
    max_scan_keys: int = 10_000
    dlq_timestamp_field: str = "timestamp"
    rabbitmq_management_url: str | None = None
    web_config_file: str | None = None
    config_file: str | None = None

    def state_settings(self) -> StateSettings:
        """The slice ClusterState needs: every StateSettings field, by name, from this config."""
        return StateSettings(**{f.name: getattr(self, f.name) for f in fields(StateSettings)})

    @property
    def broker_scheme(self) -> str:
        return urlsplit(self.broker_url).scheme.lower()

    def __repr__(self) -> str:  # never print a secret, even by accident
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in ("broker_url", "rabbitmq_management_url"):
            if shown[key]:
                shown[key] = redact_url(shown[key])
        return "Config(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"


_USERINFO = re.compile(r"(?<=://)([^/@:]*):([^@/]*)@")


def redact_url(url: str) -> str:
    """``redis://:secret@host/0`` -> ``redis://:***@host/0``; also handles ``;``-separated failover lists."""
    parts = []
    for one in url.split(";"):
        try:
            split = urlsplit(one)
        except ValueError:
            parts.append(_USERINFO.sub(r"\1:***@", one))
            continue
        if split.password is None:
            parts.append(one)
            continue
        netloc = split.netloc.rsplit("@", 1)[1]
        user = split.username or ""
        parts.append(urlunsplit(split._replace(netloc=f"{user}:***@{netloc}")))
    return ";".join(parts)


def build_parser(prog: str = "celery-exporter") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Prometheus exporter for Celery: task and worker events, queue depths, retry queues "
        "and dead-letter queues. Every flag can also be set as CELERY_EXPORTER_<NAME> or in the YAML "
        "file given by --config. Run 'celery-exporter demo' for a self-contained demo.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--config", metavar="FILE", dest="config_file",
                        help="YAML file with any of the options below (snake_case keys). "
                        "Env: CELERY_EXPORTER_CONFIG.")
    for opt in OPTIONS:
        default = opt.default
        shown = ", ".join(map(str, default)) if isinstance(default, tuple) else default
        # Defaults are shown, but a secret-bearing default never exists, so --help is safe.
        parser.add_argument(opt.flag, dest=opt.name, metavar=opt.metavar,
                            help=f"{opt.help} Env: {opt.env}. Default: {shown!s}.")
    parser.add_argument("--version", action="store_true", help="Print the version and exit.")
    return parser


def load_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Build the Config from flags > environment > YAML file > defaults. Raises ConfigError."""
    environ = os.environ if environ is None else environ
    parser = build_parser()
    try:
        ns = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:  # argparse already printed its message
        if exc.code in (0, None):  # --help: a success, not a configuration error
            raise
        raise ConfigError("arguments", "command line", "see the message above") from exc
    cli = vars(ns)
    cli.pop("version", None)

    config_file = cli.get("config_file") or environ.get(ENV_PREFIX + "CONFIG") or None
    file_values = _read_yaml(config_file) if config_file else {}

    values: dict[str, Any] = {}
    for opt in OPTIONS:
        if opt.name in cli:
            raw, source = cli[opt.name], opt.flag
        elif opt.env in environ:
            raw, source = environ[opt.env], opt.env
        elif opt.name in file_values:
            raw, source = file_values[opt.name], f"{config_file} key {opt.name}"
        else:
            continue
        try:
            values[opt.name] = opt.parse(raw)
        except (ValueError, TypeError) as exc:
            shown = "<redacted>" if opt.name.endswith("_url") else repr(raw)
            raise ConfigError(opt.name, source, f"{exc} (got {shown})") from None

    if not values.get("broker_url"):
        raise ConfigError(
            "broker_url", "flags, environment and config file",
            f"a broker URL is required: --broker-url or {ENV_PREFIX}BROKER_URL",
        )
    for name in ("broker_url", "rabbitmq_management_url"):
        url = values.get(name)
        if url and "://" not in url:
            raise ConfigError(name, "configuration", "not a URL (expected scheme://host...; value not shown)")
        try:  # a bad port or IPv6 literal would otherwise surface later, as a traceback
            for one in (url or "").split(";"):
                urlsplit(one.strip()).port  # noqa: B018
        except ValueError as exc:
            raise ConfigError(name, "configuration", f"not a valid URL: {exc} (value not shown)") from None
    return Config(config_file=config_file, **values)


def _read_yaml(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("config", path, f"cannot read the file: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # Not str(exc): PyYAML quotes the offending line, which may hold a broker password.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "parse error"
        raise ConfigError("config", path, f"not valid YAML: {problem}{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("config", path, "the top level must be a mapping of option names")
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in _BY_NAME:
            hint = _closest(name)
            raise ConfigError(str(key), path, "unknown key" + (f"; did you mean {hint!r}?" if hint else ""))
        out[name] = value
    return out


def _closest(name: str) -> str | None:
    import difflib

    match = difflib.get_close_matches(name, list(_BY_NAME), n=1)
    return match[0] if match else None
