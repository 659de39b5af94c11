"""The one typed, validated configuration, built once from CLI flags > ``CELERY_EXPORTER_*`` environment
variables > a YAML file (``--config``) > defaults.

Every option is declared once, in ``OPTIONS``: its type (the parser), default, help text, flag spellings,
environment variable and YAML key. ``Config`` takes its fields' defaults from that table (its class body
only names the fields and their static types; a test proves it holds no default), the slices components
receive (``state_settings``) are built from ``Config``, and ``exporter.cli``, the README and
``docs/configuration.md`` are generated from it. A bad value, an unknown YAML key or environment variable,
a missing broker URL or one that can never work raises ``ConfigError`` naming the flag and where the value
came from; ``__main__`` turns it into exit status 2. Secrets (passwords in URLs) are redacted by
``exporter.secrets.redact_url`` wherever a URL is shown.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar, dataclass_transform
from urllib.parse import urlsplit

import yaml

from exporter import config_values as v
from exporter.brokers.model import DEFAULT_DEAD_LETTER_QUEUES
from exporter.secrets import redact_options, redact_url, url_problem, yaml_error
from exporter.state import DEFAULT_DURATION_BUCKETS, DEFAULT_QUEUE_WAIT_BUCKETS, StateSettings

ENV_PREFIX = "CELERY_EXPORTER_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"
LOG_LEVELS = v.LOG_LEVELS
# --help sections, in order.
BROKER, EVENTS, POLLING, WEB, LOGGING = "broker", "events and state", "polling", "web", "logging"
GROUPS = (BROKER, EVENTS, POLLING, WEB, LOGGING)
# Precedence of the sources; a higher rank wins.
_FLAG, _ENV, _FILE = 3, 2, 1


class ConfigError(Exception):
    """A configuration problem, with the key and the source (flag, env var or file) it came from."""

    def __init__(self, key: str, source: str, message: str) -> None:
        self.key, self.source, self.message = key, source, message
        opt = _BY_NAME.get(key)
        label = opt.flag if opt is not None else key
        where = "" if source == label else f" (from {source})"
        super().__init__(f"{label}: {message}{where}")


@dataclass(frozen=True)
class Option:
    name: str  # the YAML key and the Config field; the env var is CELERY_EXPORTER_<NAME>
    parse: Callable[[Any], Any]  # str or YAML value -> typed value, ValueError with a short message
    default: Any
    help: str
    metavar: str
    group: str
    flags: tuple[str, ...] = ()  # the documented spelling first, then older ones that still work
    field: bool = True  # False: no Config field of its own (web_listen_address fills listen_address+port)
    required: bool = False
    repeatable: bool = False  # the flag may be given more than once; the values form a list
    secret: bool = False  # may hold a password: a bad value is never echoed in an error

    @property
    def flag(self) -> str:
        return self.flags[0] if self.flags else "--" + self.name.replace("_", "-")

    @property
    def all_flags(self) -> tuple[str, ...]:
        return self.flags or (self.flag,)

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


OPTIONS: tuple[Option, ...] = (
    # ------------------------------------------------------------------ broker
    Option("broker_url", v.optional_string, None,
           "Celery broker URL (redis://, rediss://, sentinel://, amqp://, amqps://, pyamqp://, or any "
           "kombu transport). Required.", "URL", BROKER, required=True, secret=True),
    Option("broker_transport_options", v.mapping, {},
           "Kombu transport options, as in Celery's broker_transport_options (global_keyprefix, "
           "master_name, priority_steps, sep, ...). YAML mapping or JSON object.", "JSON", BROKER,
           secret=True),
    # ------------------------------------------------------------------ events and state
    Option("worker_timeout", v.positive_float, 60.0,
           "Seconds without a heartbeat after which a worker counts as down.", "SECONDS", EVENTS),
    Option("worker_purge_after", v.positive_float, 600.0,
           "Seconds after its last event at which a departed worker's series are dropped.", "SECONDS",
           EVENTS),
    Option("max_tracked_tasks", v.positive_int, 100_000,
           "Size of the task table (uuid -> name, queue, times) that pairs events; LRU-evicted.", "N",
           EVENTS),
    Option("task_max_age", v.positive_float, 86_400.0,
           "Seconds after its last event at which a task is dropped from the task table.", "SECONDS", EVENTS),
    Option("default_queue", v.string, "celery",
           "Queue label for tasks whose queue is neither in a task-sent event nor in task_routes.", "NAME",
           EVENTS),
    Option("task_routes", v.routes, (),
           "Task-name globs to queue names, like Celery's task_routes (YAML mapping, or glob=queue,...).",
           "ROUTES", EVENTS),
    Option("duration_buckets", v.buckets, DEFAULT_DURATION_BUCKETS,
           "Bucket bounds (seconds) of celery_task_duration_seconds, comma-separated.", "BOUNDS", EVENTS),
    Option("queue_wait_buckets", v.buckets, DEFAULT_QUEUE_WAIT_BUCKETS,
           "Bucket bounds (seconds) of celery_task_queue_wait_seconds, comma-separated.", "BOUNDS", EVENTS),
    Option("max_task_names", v.positive_int, 1_000,
           "Distinct task names tracked; more fold into task_name=\"__overflow__\".", "N", EVENTS),
    Option("max_exception_types", v.positive_int, 200,
           "Distinct exception classes tracked; more fold into exception=\"__overflow__\".", "N", EVENTS),
    Option("max_workers", v.positive_int, 1_000, "Distinct workers tracked at once.", "N", EVENTS),
    Option("max_queues", v.positive_int, 1_000,
           "Distinct queue names tracked from events and broker polls; more fold into "
           "\"__overflow__\".", "N", EVENTS),
    Option("max_finished_tasks", v.positive_int, 20_000,
           "Finished tasks remembered (uuid -> name, queue) so their late or repeated events keep their "
           "name.", "N", EVENTS),
    Option("max_series", v.positive_int, 50_000,
           "Total series across the per-task metric families; new ones past it fold into "
           "\"__overflow__\".", "N", EVENTS),
    Option("event_queue_prefix", v.string, "celeryev.celery-exporter",
           "RabbitMQ: name prefix of the exporter's own event queue (a per-process id is appended).", "NAME",
           EVENTS),
    Option("event_queue_name", v.queue_name, None,
           "RabbitMQ: a stable name for the exporter's event queue (<event_queue_prefix>.<NAME>), one per "
           "replica (on Kubernetes the StatefulSet pod name): a clean stop leaves the queue, a start drains "
           "what arrived meanwhile, and a second process with the same name waits, not ready, until the "
           "queue is free. Unset: a per-process name, deleted on a clean stop.", "NAME", EVENTS),
    Option("event_queue_ttl", v.non_negative_float, 60.0,
           "RabbitMQ: seconds an event may wait in the exporter's queue before RabbitMQ drops it "
           "(x-message-ttl; 0 for no limit). Celery's own default of 5 s loses events under load.",
           "SECONDS", EVENTS),
    Option("event_queue_expires", v.positive_float, 300.0,
           "RabbitMQ: seconds the exporter's event queue outlives a lost connection (x-expires), so a "
           "reconnect picks up what arrived meanwhile.", "SECONDS", EVENTS),
    Option("event_queue_max_length", v.positive_int, 100_000,
           "RabbitMQ: most messages the exporter's event queue holds (x-max-length); the oldest are dropped "
           "beyond it (x-overflow=drop-head), so a crashed exporter's queue stays small until it expires.",
           "N", EVENTS),
    Option("event_queue_max_bytes", v.positive_int, 64 * 1024 * 1024,
           "RabbitMQ: most message bytes the exporter's event queue holds (x-max-length-bytes), the "
           "oldest dropped first.", "BYTES", EVENTS),
    Option("event_prefetch", v.positive_int, 2_000, "RabbitMQ: unacknowledged events in flight (basic.qos).",
           "N", EVENTS),
    # ------------------------------------------------------------------ polling
    Option("poll_interval", v.positive_float, 5.0, "Seconds between broker polls of queue depths.",
           "SECONDS", POLLING),
    Option("poll_timeout", v.positive_float, 4.0, "Deadline (seconds) of one broker poll.", "SECONDS",
           POLLING),
    Option("queues", v.string_list, (),
           "Task queues to watch (names or globs), beyond those discovered from the broker and events.",
           "GLOBS", POLLING),
    Option("retry_queues", v.string_list, (),
           "Queues (names or globs) that are retry/delay queues: exact names override discovery; globs "
           "apply only where the broker does not say otherwise.", "GLOBS", POLLING),
    Option("dead_letter_queues", v.string_list, DEFAULT_DEAD_LETTER_QUEUES,
           "Queues or Redis keys that are dead-letter queues: exact names override discovery; globs (and "
           "the default list) apply only where the broker does not say otherwise.",
           "GLOBS", POLLING),
    Option("exclude_queues", v.string_list, (), "Queues (names or globs) never reported.", "GLOBS", POLLING),
    Option("max_scan_keys", v.positive_int, 10_000, "Redis: most keys one poll may SCAN.", "N", POLLING),
    Option("dlq_timestamp_field", v.string, "timestamp",
           "Redis: JSON field of a DLQ list entry holding its enqueue time (for the oldest-age metric).",
           "FIELD", POLLING),
    Option("dead_letter_redis_urls", v.url_list, (),
           "Redis database searched for dead-letter queues only (the --dead-letter-queues globs: dlq:* "
           "lists, the celery:dead_letter_queue sorted set), beside a Redis or RabbitMQ broker, e.g. "
           "redis://host:6379/3. Repeat the flag for more; env and YAML take a list (env: separated by "
           "spaces or commas). Each is its own poll source (source=\"redis_dlq:host:port/db\").", "URL",
           POLLING, flags=("--dead-letter-redis-url",), repeatable=True, secret=True),
    Option("rabbitmq_management_url", v.optional_string, None,
           "RabbitMQ management API base URL (http://user:pass@host:15672); without it queues are "
           "polled with passive declares over AMQP.", "URL", POLLING, secret=True),
    Option("rabbitmq_live_queues", v.string_list, (),
           "RabbitMQ with --rabbitmq-management-url: more queues (names or globs) whose depth is read live "
           "by a passive declare at each poll instead of from the 5 s statistics, as retry queues and "
           "DLQs always are.", "GLOBS", POLLING),
    # ------------------------------------------------------------------ web
    Option("web_listen_address", v.listen_address, None,
           "Address of the HTTP server, [HOST]:PORT as in other Prometheus exporters (:9808 or [::]:9808 "
           "for every address, 127.0.0.1:9808 for one). Without it: --listen-address and --port.",
           "[HOST]:PORT", WEB, flags=("--web.listen-address",), field=False),
    Option("listen_address", v.host_only, "0.0.0.0",
           "Older spelling: the host part of --web.listen-address (no port).", "HOST", WEB),
    Option("port", v.port, 9808, "Older spelling: the port part of --web.listen-address.", "PORT", WEB),
    Option("web_telemetry_path", v.telemetry_path, "/metrics", "Path under which metrics are served.",
           "PATH", WEB, flags=("--web.telemetry-path",)),
    Option("web_config_file", v.optional_string, None,
           "Prometheus exporter-toolkit web config (TLS, basic auth) for every HTTP endpoint.", "FILE", WEB,
           flags=("--web.config.file", "--web-config-file")),
    # ------------------------------------------------------------------ logging
    Option("log_level", v.choice(*LOG_LEVELS, aliases=v.LOG_LEVEL_ALIASES), "info",
           "Log level: debug, info, warn (or warning) or error.", "LEVEL", LOGGING,
           flags=("--log.level", "--log-level")),
    Option("log_format", v.choice("logfmt", "json", "console", "auto"), "auto",
           "Log format: logfmt, json, console, or auto (json when stdout is not a terminal, console "
           "when it is).", "FORMAT", LOGGING, flags=("--log.format", "--log-format")),
)
_BY_NAME = {o.name: o for o in OPTIONS}
_PLAIN_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]{0,63}")
_BY_ENV = {o.env: o for o in OPTIONS}

T = TypeVar("T")


def _copier(value: Any) -> Callable[[], Any]:
    return lambda: copy.deepcopy(value)  # each Config gets its own mutable default


@dataclass_transform()
def _defaults_from_options(cls: type[T]) -> type[T]:
    """Make ``cls`` a frozen dataclass whose field defaults come from ``OPTIONS``, so no default is
    written twice; the class body only names the fields and their static types."""
    for name in cls.__annotations__:
        if name in cls.__dict__:
            raise TypeError(f"{cls.__name__}.{name}: defaults belong in OPTIONS, not in the class body")
        opt = _BY_NAME.get(name)
        if opt is not None and opt.required:
            continue
        default = opt.default if opt is not None else None
        if isinstance(default, (dict, list)):
            setattr(cls, name, field(default_factory=_copier(default)))
        else:
            setattr(cls, name, default)
    return dataclass(frozen=True, repr=False)(cls)


@_defaults_from_options
class Config:
    """The validated configuration. Built by ``load_config``; never mutated. One field per ``OPTIONS``
    entry (except ``web_listen_address``, which fills ``listen_address`` and ``port``), plus
    ``config_file``, the YAML file read, if any."""

    broker_url: str
    broker_transport_options: Mapping[str, Any]
    worker_timeout: float
    worker_purge_after: float
    max_tracked_tasks: int
    task_max_age: float
    default_queue: str
    task_routes: tuple[tuple[str, str], ...]
    duration_buckets: tuple[float, ...]
    queue_wait_buckets: tuple[float, ...]
    max_task_names: int
    max_exception_types: int
    max_workers: int
    max_queues: int
    max_finished_tasks: int
    max_series: int
    event_queue_prefix: str
    event_queue_name: str | None
    event_queue_ttl: float
    event_queue_expires: float
    event_queue_max_length: int
    event_queue_max_bytes: int
    event_prefetch: int
    poll_interval: float
    poll_timeout: float
    queues: tuple[str, ...]
    retry_queues: tuple[str, ...]
    dead_letter_queues: tuple[str, ...]
    exclude_queues: tuple[str, ...]
    max_scan_keys: int
    dlq_timestamp_field: str
    dead_letter_redis_urls: tuple[str, ...]
    rabbitmq_management_url: str | None
    rabbitmq_live_queues: tuple[str, ...]
    listen_address: str  # "" means every address (IPv6 and IPv4 where the host has IPv6)
    port: int
    web_telemetry_path: str
    web_config_file: str | None
    log_level: str  # debug, info, warning or error ("warn" is read as "warning")
    log_format: str
    config_file: str | None

    def state_settings(self) -> StateSettings:
        """The slice ClusterState needs."""
        return state_settings(self)

    @property
    def broker_scheme(self) -> str:
        return urlsplit(self.broker_url).scheme.lower()

    def __repr__(self) -> str:  # never print a secret, even by accident
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in ("broker_url", "rabbitmq_management_url"):
            if shown[key]:
                shown[key] = redact_url(shown[key])
        shown["dead_letter_redis_urls"] = tuple(redact_url(u) for u in self.dead_letter_redis_urls)
        shown["broker_transport_options"] = redact_options(shown["broker_transport_options"])
        return "Config(" + ", ".join(f"{k}={val!r}" for k, val in shown.items()) + ")"


def state_settings(config: Config | None = None, **overrides: Any) -> StateSettings:
    """ClusterState's slice: each StateSettings field, by name, from ``config`` (or from the OPTIONS
    defaults), then ``overrides`` (tests set a few and keep the rest)."""
    values = {}
    for f in fields(StateSettings):
        values[f.name] = getattr(config, f.name) if config is not None else _BY_NAME[f.name].default
    return StateSettings(**{**values, **overrides})


def load_config(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Build the Config from flags > environment > YAML file > defaults. Raises ConfigError."""
    from exporter.cli import parse_flags  # the parser is built from OPTIONS, so it imports this module

    environ = os.environ if environ is None else environ
    cli = parse_flags(argv)  # first, so --help works whatever the environment holds
    _check_environment(environ)
    given_file = cli.pop("config_file", None)
    config_file = given_file[0] if given_file else environ.get(CONFIG_ENV) or None
    file_values = _read_yaml(config_file) if config_file else {}

    values: dict[str, Any] = {}
    ranks: dict[str, int] = {}
    sources: dict[str, str] = {}
    for opt in OPTIONS:
        if opt.name in cli:
            (raw, source), rank = cli[opt.name], _FLAG
        elif opt.env in environ:
            raw, source, rank = environ[opt.env], opt.env, _ENV
        elif opt.name in file_values:
            raw, source, rank = file_values[opt.name], f"{config_file} key {opt.name}", _FILE
        else:
            continue
        try:
            values[opt.name] = opt.parse(raw)
        except (ValueError, TypeError) as exc:
            # A URL or transport options may hold a password (sentinel_kwargs.password): never echoed.
            shown = "(value not shown)" if opt.secret else repr(raw)
            raise ConfigError(opt.name, source, f"{exc}, got {shown}") from None
        ranks[opt.name], sources[opt.name] = rank, source

    # --web.listen-address fills listen_address and port, unless one of those came from a source that
    # takes precedence (a --port flag beats CELERY_EXPORTER_WEB_LISTEN_ADDRESS).
    if "web_listen_address" in values:
        host, port = values.pop("web_listen_address")
        rank = ranks["web_listen_address"]
        for name, value in (("listen_address", host), ("port", port)):
            if ranks.get(name, 0) <= rank:
                values[name] = value

    if not values.get("broker_url"):
        raise ConfigError("broker_url", "--broker-url",
                          f"required (or {ENV_PREFIX}BROKER_URL, or broker_url in the --config file)")
    for name in ("broker_url", "rabbitmq_management_url"):
        url = values.get(name)
        if not url:
            continue
        # A bad port, a broken IPv6 literal, or a password holding an unencoded '/', '?', '#' or ';'
        # would otherwise surface later as a traceback, or as a connect error quoting part of the password.
        problem = url_problem(url)
        if problem:
            raise ConfigError(name, sources[name], problem)
    # A URL that can never work (no such transport, its library missing, a Redis db that is not a
    # number) stops here, instead of the event stream retrying it forever.
    problem = v.broker_url_problem(values["broker_url"])
    if problem:
        raise ConfigError("broker_url", sources["broker_url"], problem)
    for url in values.get("dead_letter_redis_urls", ()):
        problem = url_problem(url) or v.redis_url_problem(url)
        if problem:
            raise ConfigError("dead_letter_redis_urls", sources["dead_letter_redis_urls"], problem)
    return Config(config_file=config_file, **values)


def _check_environment(environ: Mapping[str, str]) -> None:
    """A CELERY_EXPORTER_* variable that names no option is a typo that would otherwise be ignored."""
    known = [*_BY_ENV, CONFIG_ENV]
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and name not in known:
            match = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {match[0]}?" if match else ""
            raise ConfigError(name, name, f"unknown environment variable{hint}")


def _read_yaml(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("config", path, f"cannot read the file: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # Not str(exc): PyYAML quotes the offending line, which may hold a broker password.
        raise ConfigError("config", path, f"not valid YAML: {yaml_error(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("config", path, "the top level must be a mapping of option names")
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_").replace(".", "_")
        if name not in _BY_NAME:
            match = difflib.get_close_matches(name, list(_BY_NAME), n=1)
            hint = f"; did you mean {match[0]!r}?" if match else ""
            # A key is file content: one that is not a plain name (a URL pasted as a key) is not quoted.
            shown = str(key) if _PLAIN_KEY.fullmatch(str(key)) else "(a key that is not an option name)"
            raise ConfigError(shown, path, "unknown key" + hint)
        out[name] = value
    return out

