"""Logging: structlog for every line (logfmt, JSON or console; JSON when stdout is not a terminal), and a
last-line-of-defence processor that scrubs credentials (``exporter.secrets.redact_text``) out of every
log field.

Libraries that log through the standard ``logging`` module (pika, kombu, amqp, redis, celery, urllib3)
are routed through the same renderer, so there is one format and one redaction path, at the exporter's
``--log.level`` (never below warning: their info lines are per-connection chatter, one every poll, unless
``--log.level=debug``), and rate-limited by ``LibraryLogLimiter``: one line per distinct problem per
minute, with the number held back since. Without it a wrong RabbitMQ password gave 6 pika ERROR lines per
attempt, and 1,000 unknown queue names 21,000 lines in 41 s.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable, MutableMapping
from typing import Any

import structlog

from exporter.secrets import redact_text as scrub


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, BaseException):
        return scrub(str(value))
    return value


def redact_processor(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> Any:
    for key, value in list(event_dict.items()):
        event_dict[key] = _scrub_value(value)
    return event_dict


def _scrub_rendered(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> Any:
    # Tracebacks are rendered into "exception" late; scrub them too.
    exc = event_dict.get("exception")
    if isinstance(exc, str):
        event_dict["exception"] = scrub(exc)
    return event_dict


def configure_logging(level: str = "info", fmt: str = "auto", stream: Any = None) -> None:
    """Configure structlog and the stdlib root logger once, at start-up."""
    stream = stream or sys.stdout
    if fmt == "auto":
        fmt = "console" if getattr(stream, "isatty", lambda: False)() else "json"
    numeric = getattr(logging, level.upper(), logging.INFO)
    renderer: Any = structlog.dev.ConsoleRenderer(colors=False)
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    elif fmt == "logfmt":  # key=value pairs, as Prometheus' own exporters print them
        renderer = structlog.processors.LogfmtRenderer(
            key_order=["timestamp", "level", "logger", "event"], bool_as_flag=False
        )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.ExtraAdder(allow=("suppressed_since_last",)),  # set by LibraryLogLimiter
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_processor,
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _scrub_rendered,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(LibraryLogLimiter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # Chatty libraries stay at warning (or our level, if higher) unless we are debugging.
    library_level = numeric if numeric <= logging.DEBUG else max(numeric, logging.WARNING)
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(library_level)


LIBRARIES = ("pika", "kombu", "amqp", "redis", "celery", "urllib3")
_NUMBERS = re.compile(r"0x[0-9a-fA-F]+|\d+")


class LibraryLogLimiter(logging.Filter):
    """A handler filter: a library's record (any logger outside ``exporter``) passes at most once per
    ``interval`` seconds per problem; the next one that passes carries ``suppressed_since_last``.

    A problem is (logger, level, message template): pika's templates take the queue name, address or
    reply text as arguments, so 1,000 missing queues are one problem, and a wrong password is the handful
    of templates pika logs per attempt. A template that is only a placeholder (``"%s"``) is told apart by
    its rendered text with numbers blanked out. At most ``max_keys`` problems are remembered."""

    def __init__(self, interval: float = 60.0, monotonic: Callable[[], float] = time.monotonic,
                 max_keys: int = 1_000) -> None:
        super().__init__()
        self.interval = interval
        self.monotonic = monotonic
        self.max_keys = max_keys
        self._last: dict[tuple[str, int, str], float] = {}
        self._held: dict[tuple[str, int, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "exporter" or record.name.startswith("exporter."):
            return True  # our own lines are rate-limited where they are written
        template = str(record.msg)
        if len(template.replace("%s", "").replace("%r", "").strip()) < 4:
            template = _NUMBERS.sub("#", record.getMessage())[:200]
        key = (record.name, record.levelno, template)
        now = self.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        if last is None and len(self._last) >= self.max_keys:
            self._forget(now)
        self._last[key] = now
        record.suppressed_since_last = self._held.pop(key, 0)
        return True

    def _forget(self, now: float) -> None:
        for key, at in list(self._last.items()):
            if now - at >= self.interval:
                self._last.pop(key)
                self._held.pop(key, None)
        while len(self._last) >= self.max_keys:  # all recent: drop the oldest
            key = min(self._last, key=self._last.__getitem__)
            self._last.pop(key)
            self._held.pop(key, None)


class RateLimitedLog:
    """At most one warning per ``interval`` seconds per key, with a count of what was held back since.

    For messages whose cause can repeat thousands of times a second (a flood of malformed events, a
    broker that keeps refusing polls): the first is logged, the rest are counted into the next one.
    """

    def __init__(
        self, logger: Any, interval: float = 10.0, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.monotonic = monotonic
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, key: str, event: str, **kw: Any) -> bool:
        now = self.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        self._last[key] = now
        self.logger.warning(event, suppressed_since_last=self._held.pop(key, 0), **kw)
        return True

    def reset(self, key: str) -> None:
        """Forget ``key`` (its cause has cleared), so the next occurrence is logged at once."""
        self._last.pop(key, None)
        self._held.pop(key, None)
