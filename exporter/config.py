"""The one typed, validated configuration, built once from CLI flags > ``CELERY_EXPORTER_*`` environment
variables > a YAML file (``--config``) > defaults, and the settings slices built from it.

Every option is declared once, in ``exporter.options.OPTIONS``: its type (the parser), default, help
text, flag spellings, environment variable and YAML key. ``Config`` takes its fields' defaults from that
table (its class body only names the fields and their static types; a test proves it holds no default).
The slices components receive (``state_settings``, ``stream_settings``, ``poll_settings``) are built
here and nowhere else, each field read from the ``Config`` field of the same name or of the name
``SLICE_RENAMES`` gives (a test checks every slice field against ``OPTIONS``). A bad value, an unknown
YAML key or environment variable, a missing broker URL or one that can never work raises ``ConfigError``
naming the flag and where the value came from; ``__main__`` turns it into exit status 2. Secrets
(passwords in URLs) are redacted by ``exporter.secrets.redact_url`` wherever a URL is shown.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar, dataclass_transform
from urllib.parse import urlsplit

import yaml

from exporter import config_values as v
from exporter.brokers.settings import InventorySettings, PollSettings, StreamSettings
from exporter.diagnosis.evidence import DiagnosisSettings
from exporter.options import BY_ENV, BY_NAME, CONFIG_ENV, ENV_PREFIX, OPTIONS, ConfigError, parse_flags
from exporter.secrets import option_secrets, redact_options, redact_url, url_problem, url_secrets, yaml_error
from exporter.state import StateSettings

# Precedence of the sources; a higher rank wins.
_FLAG, _ENV, _FILE = 3, 2, 1
_PLAIN_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]{0,63}")
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
        opt = BY_NAME.get(name)
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
    event_queue_mode: str
    inventory_timeout: float
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


# A slice field read from a Config field of another name: the slice names it as its component sees it.
SLICE_RENAMES: dict[type, dict[str, str]] = {
    StateSettings: {},
    StreamSettings: {
        "transport_options": "broker_transport_options", "queue_prefix": "event_queue_prefix",
        "queue_name": "event_queue_name", "queue_ttl": "event_queue_ttl",
        "queue_expires": "event_queue_expires",
        "queue_max_length": "event_queue_max_length", "queue_max_bytes": "event_queue_max_bytes",
        "prefetch": "event_prefetch", "queue_mode": "event_queue_mode",
    },
    InventorySettings: {"transport_options": "broker_transport_options", "timeout": "inventory_timeout"},
    PollSettings: {
        "transport_options": "broker_transport_options", "management_url": "rabbitmq_management_url",
        "live_queues": "rabbitmq_live_queues", "interval": "poll_interval", "timeout": "poll_timeout",
    },
}
S = TypeVar("S")


def _slice(cls: type[S], config: Config | None, overrides: Mapping[str, Any]) -> S:
    """``cls`` with each field read from ``config`` (or from the OPTIONS defaults), then ``overrides``."""
    renames = SLICE_RENAMES[cls]
    values = {}
    for f in fields(cls):  # type: ignore[arg-type]
        name = renames.get(f.name, f.name)
        values[f.name] = getattr(config, name) if config is not None else BY_NAME[name].default
    return cls(**{**values, **overrides})


def state_settings(config: Config | None = None, **overrides: Any) -> StateSettings:
    """ClusterState's slice, from ``config`` or the defaults, then ``overrides`` (tests set a few)."""
    return _slice(StateSettings, config, overrides)


def stream_settings(config: Config, **overrides: Any) -> StreamSettings:
    """The event stream's slice."""
    return _slice(StreamSettings, config, overrides)


def inventory_settings(config: Config, **overrides: Any) -> InventorySettings:
    """The in-flight inventory's slice (its timeout 0: off)."""
    return _slice(InventorySettings, config, overrides)


def poll_settings(config: Config, **overrides: Any) -> PollSettings:
    """The pollers' slice."""
    return _slice(PollSettings, config, overrides)


def diagnosis_settings(config: Config, started: float) -> DiagnosisSettings:
    """The diagnosis checks' slice: the broker kind, the caps, and the secrets their texts must mask."""
    return DiagnosisSettings(
        broker_scheme=urlsplit(config.broker_url.split(";", 1)[0].strip()).scheme.lower(),
        management_api=bool(config.rabbitmq_management_url),
        caps={k: getattr(config, k) for k in ("max_task_names", "max_queues", "max_series",
                                               "max_tracked_tasks", "max_exception_types", "max_workers")},
        started=started,
        poll_interval=config.poll_interval,
        secrets=(*url_secrets(config.broker_url), *url_secrets(config.rabbitmq_management_url or ""),
                 *option_secrets(config.broker_transport_options)),
    )


def load_config(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Build the Config from flags > environment > YAML file > defaults. Raises ConfigError."""
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
    known = [*BY_ENV, CONFIG_ENV]
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
        if name not in BY_NAME:
            match = difflib.get_close_matches(name, list(BY_NAME), n=1)
            hint = f"; did you mean {match[0]!r}?" if match else ""
            # A key is file content: one that is not a plain name (a URL pasted as a key) is not quoted.
            shown = str(key) if _PLAIN_KEY.fullmatch(str(key)) else "(a key that is not an option name)"
            raise ConfigError(shown, path, "unknown key" + hint)
        out[name] = value
    return out


def load_config_or_report(argv: Sequence[str], prog: str) -> Config | None:
    """``load_config``, or None after printing the error as ``prog: error: ...`` (argparse has already
    printed its own message for a malformed command line): the caller exits 2."""
    try:
        return load_config(argv)
    except ConfigError as exc:
        if exc.key != "arguments":
            print(f"{prog}: error: {exc}", file=sys.stderr)
        return None
