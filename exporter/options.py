"""Every option of the exporter, declared once, and the command line generated from them.

``OPTIONS`` holds each option's parser (``exporter.config_values``), default, help text, flag spellings,
environment variable (``CELERY_EXPORTER_<NAME>``) and YAML key. ``exporter.config`` builds the validated
``Config`` from it, ``tools/docs.py`` the option tables of the README and ``docs/configuration.md``.
``build_parser`` turns the table into ``--help`` grouped as operators of other Prometheus exporters expect
(broker, events and state, polling, web, logging), with the exporter-toolkit spellings
(``--web.listen-address``, ``--log.level``, ...) first and the older ones still accepted; ``parse_flags``
reads a command line with it. A leaf: it imports nothing from ``exporter`` but other leaves, so both
``exporter.config`` and ``exporter.cli`` import it and neither imports the other.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from exporter import config_values as v
from exporter.secrets import redact_text

ENV_PREFIX = "CELERY_EXPORTER_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"
LOG_LEVELS = v.LOG_LEVELS
# --help sections, in order.
BROKER, EVENTS, POLLING, WEB, LOGGING = "broker", "events and state", "polling", "web", "logging"
GROUPS = (BROKER, EVENTS, POLLING, WEB, LOGGING)

# Defaults too long to write inline in OPTIONS.
DEFAULT_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
DEFAULT_QUEUE_WAIT_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
# The default of --dead-letter-queues: name patterns, which never override what the broker says (even the
# exact names among them; a user's own exact names are explicit configuration).
DEFAULT_DEAD_LETTER_QUEUES: tuple[str, ...] = (
    "dlq:*", "celery:dead_letter_queue", "dlq", "*.dlq", "dead_letter*",
)


class ConfigError(Exception):
    """A configuration problem, with the key and the source (flag, env var or file) it came from."""

    def __init__(self, key: str, source: str, message: str) -> None:
        self.key, self.source, self.message = key, source, message
        opt = BY_NAME.get(key)
        label = opt.flag if opt is not None else key
        where = "" if source == label else f" (from {source})"
        super().__init__(f"{label}: {message}{where}")


@dataclass(frozen=True)
class Option:
    """One option: how each source spells it, how its value is read, and its default."""

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
    Option("inventory_timeout", v.non_negative_float, 2.0,
           "Deadline (seconds) of the in-flight inventory: at start and after each event stream reconnect, "
           "the workers are asked (remote control: inspect active, reserved, scheduled, in the "
           "background) what tasks they hold, so those are tracked at once under their own names. 0 turns "
           "it off.", "SECONDS", EVENTS),
    # ---- celery-exporter doctor (h23): the event queue that changes nothing on the broker
    Option("event_queue_mode", v.choice("durable", "exclusive"), "durable",
           "RabbitMQ: durable (the exporter's own queue, kept across reconnects, see --event-queue-expires) "
           "or exclusive (auto-deleted with its connection, and Celery's celeryev exchange only declared "
           "passively: nothing is created on the broker; what celery-exporter doctor uses).", "MODE",
           EVENTS),
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
BY_NAME = {o.name: o for o in OPTIONS}
BY_ENV = {o.env: o for o in OPTIONS}


# ------------------------------------------------------------------ the command line, from OPTIONS
PROG = "celery-exporter"
USAGE = f"""{PROG} --broker-url URL [options]
       {PROG} demo [--broker auto|redis|memory] [--port PORT]   (a self-contained demo)
       {PROG} doctor --broker-url URL [--duration S] [--output text|json] [options]   (diagnose)
       {PROG} generate rules|prometheusrule|dashboards|config [--config FILE] [--output PATH]"""
DESCRIPTION = """\
Prometheus exporter for Celery: task and worker events, queue depths, retry queues and dead-letter
queues. Every option can also be set as an environment variable (CELERY_EXPORTER_<NAME>) or as a key
of the YAML file given by --config; flags win over the environment, which wins over the file."""
EXAMPLES = f"""examples:
  {PROG} --broker-url redis://localhost:6379/0
  {PROG} --broker-url amqp://guest:guest@rabbitmq:5672// --web.listen-address=:9808 --log.level=warn
  CELERY_EXPORTER_BROKER_URL=redis://redis:6379/0 {PROG} --config exporter.yml --web.config.file=web.yml"""


class _Given(argparse.Action):
    """Keeps the flag spelling used with the value, so an error can name the flag the user typed."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, (values, option_string or self.option_strings[0]))


class _GivenEach(_Given):
    """A repeatable flag: the values of every occurrence, as a list, with the first spelling used."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        given = getattr(namespace, self.dest, None)
        listed = [*given[0], values] if given else [values]
        spelling = given[1] if given else option_string or self.option_strings[0]
        setattr(namespace, self.dest, (listed, spelling))


class _Parser(argparse.ArgumentParser):
    """argparse quotes unrecognised arguments, which may be a password (a URL pasted after a typo'd
    flag): only their flag names are shown, and every message goes through ``redact_text``."""

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            shown = [e.split("=", 1)[0] if e.startswith("-") else "(a value)" for e in extras]
            self.error(f"unrecognized arguments: {' '.join(shown)}")
        return ns

    def error(self, message: str) -> NoReturn:
        super().error(redact_text(message))


def _shown_default(default: object) -> str | None:
    if default is None or default == () or default == {} or default == "":
        return None  # nothing worth printing: no "Default: None." noise
    if isinstance(default, tuple):
        return ", ".join(map(str, default))
    return str(default)


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog,
        usage=USAGE,
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--config", metavar="FILE", dest="config_file", action=_Given,
                        help=f"YAML file with any of the options below (snake_case keys). Env: {CONFIG_ENV}.")
    parser.add_argument("--version", action="store_true",
                        help="Print the versions of the exporter, Python, Celery and kombu, and exit.")
    sections = {name: parser.add_argument_group(name) for name in GROUPS}
    for opt in OPTIONS:
        default = _shown_default(opt.default)
        text = f"{opt.help} Env: {opt.env}." + (f" Default: {default}." if default else "")
        # A secret-bearing default never exists, so --help is safe to print anywhere.
        sections[opt.group].add_argument(*opt.all_flags, dest=opt.name, metavar=opt.metavar,
                                         action=_GivenEach if opt.repeatable else _Given,
                                         help=text.replace("%", "%%"))
    return parser


def parse_flags(argv: Sequence[str] | None) -> dict[str, tuple[Any, str]]:
    """Each option given on the command line -> (raw value, the flag spelling used). argparse prints its
    own message for a malformed command line; that becomes a ConfigError with key "arguments"."""
    parser = build_parser()
    try:
        ns = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:
        if exc.code in (0, None):  # --help: a success, not a configuration error
            raise
        raise ConfigError("arguments", "command line", "see the message above") from exc
    given = vars(ns)
    given.pop("version", None)
    return given
