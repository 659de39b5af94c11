"""Label values and the parsers that reduce event fields to them (a leaf: imports nothing from exporter).

Shared by the cluster state, the brokers' pollers and the collectors: the overflow and unknown label
values, the byte caps on label values and task ids, ``label_value`` (valid UTF-8, no NUL, capped),
``exception_class`` (Celery's ``safe_repr(exc)`` reduced to a class name) and ``parse_iso``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

OVERFLOW_LABEL = "__overflow__"


# Longest task name, queue name, worker name or other label value kept, in UTF-8 bytes (longer ones are
# cut at a character boundary): the caps bound how many label values there are, this bounds how big each
# one is. 255 because a queue name learnt from events is also declared on RabbitMQ, whose short strings
# (queue names) stop at 255 bytes.
MAX_LABEL_BYTES = 255
# Longest task uuid kept as a task-table key, in bytes: Celery's are 36, custom task ids rarely pass 100;
# a hostile megabyte-long id must not be stored as is.
MAX_UUID_BYTES = 255
# Label value of task_name for tasks the exporter never saw named (docs/troubleshooting.md).
UNKNOWN_TASK = "unknown"

_EXC_CLASS = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,127}")
# With the solo and threads pools Celery reports a retry as the Retry exception itself,
# "Retry(Retry(...), ConnectionError('x'), 1)" (prefork reports "ConnectionError('x')"): its second
# argument is the underlying reason, which is what the exception label means.
_RETRY_WRAPPER = re.compile(
    r"(?:[\w.]*\.)?Retry\((?:Retry\(\.\.\.\)|None|'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"), "
    r"([A-Za-z_][A-Za-z0-9_.]{0,127})\("
)


def exception_class(text: Any, traceback: Any = None) -> str:
    """Reduce Celery's ``safe_repr(exc)`` (``"ValueError('boom')"``) to a bounded class name.

    Billiard's ``ExceptionWithTraceback`` wrapper (what a hard time limit's second task-failed and some
    pool errors carry) names no class of its own: the class is the one in the traceback's last line,
    ``"billiard.exceptions.WorkerLostError: Worker exited prematurely..."``. Module paths are kept as
    sent (``requests.exceptions.HTTPError``); ``Reject``, ``Retry``, ``TimeLimitExceeded`` and the other
    Celery and billiard exceptions are ordinary classes here.
    """
    if not isinstance(text, str) or not text:
        return "Unknown"
    if "Retry(" in text[:40]:
        wrapped = _RETRY_WRAPPER.match(text)
        if wrapped:
            return wrapped.group(1)
    m = _EXC_CLASS.match(text)
    if m is None or text[m.end():m.end() + 1] != "(" or m.group(0).endswith("ExceptionWithTraceback"):
        # Not ``Class(...)``: billiard's wrapper, or a class with its own __repr__ (Reject's is
        # "reject requeue=False: ..."). The traceback's last line names the class; its last dotted part
        # is kept, so the label is the one the class's plain repr gives elsewhere.
        inner = _traceback_class(traceback)
        if inner is not None:
            return inner.rpartition(".")[2]
    return m.group(0) if m else "Unknown"


_TB_LAST = re.compile(r"([A-Za-z_][A-Za-z0-9_.]{0,127})(?::|$)")


def _traceback_class(traceback: Any) -> str | None:
    """The exception class a formatted traceback ends with (its last non-blank line, ``Class: text``)."""
    if not isinstance(traceback, str):
        return None
    for line in reversed(traceback[-4096:].splitlines()):  # the tail only: tracebacks can be huge
        line = line.strip()
        if line:
            m = _TB_LAST.match(line)
            return m.group(1) if m and not m.group(1).endswith("ExceptionWithTraceback") else None
    return None


def label_value(value: str, max_bytes: int = MAX_LABEL_BYTES) -> str:
    """``value`` made safe to serve as a label value: valid UTF-8 (lone surrogates, which the json module
    lets through and no encoder accepts, become U+FFFD), no NUL, at most ``max_bytes`` bytes (cut at a
    character boundary). Plain ASCII of a sane length, the common case, is returned as is."""
    if value.isascii():
        if "\x00" in value:
            value = value.replace("\x00", "")
        return value if len(value) <= max_bytes else value[:max_bytes]
    text = value.encode("utf-8", "surrogatepass").decode("utf-8", "replace").replace("\x00", "")
    raw = text.encode("utf-8")
    if len(raw) > max_bytes:
        text = raw[:max_bytes].decode("utf-8", "ignore")
    return text


def parse_iso(value: Any) -> float | None:
    """An ISO-8601 time as a Unix timestamp; naive values are UTC, as Celery (``eta``) and ``utcnow()``
    (DLQ entries) mean them. None for anything else."""
    if not value or not isinstance(value, str):
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


parse_eta = parse_iso  # Celery sends a task's ``eta`` as an ISO-8601 string, or None
