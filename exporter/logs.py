"""Logging: structlog for every line (logfmt, JSON or console; JSON when stdout is not a terminal), and a
last-line-of-defence processor that scrubs credentials (``exporter.secrets.redact_text``) out of every
log field.

Libraries that log through the standard ``logging`` module (kombu, pika, redis) are routed through the
same renderer, so there is one format and one redaction path.
"""

from __future__ import annotations

import logging
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
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # Chatty libraries stay at warning unless we are debugging.
    for name in ("pika", "kombu", "amqp", "urllib3"):
        logging.getLogger(name).setLevel(numeric if numeric <= logging.DEBUG else logging.WARNING)


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
