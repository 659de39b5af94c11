"""The event stream: pick a reader for the broker URL, and the reconnect loop all readers share.

``build_stream(config, ingest, status)`` returns an ``EventStream`` whose ``run(stop)`` blocks until
``stop`` is set. By URL scheme:

* ``redis://``, ``rediss://``, ``sentinel://`` -> ``RedisEventStream``: a raw PSUBSCRIBE on the channels
  kombu's Redis transport publishes the ``celeryev`` exchange on (the fast path);
* ``amqp://``, ``amqps://``, ``pyamqp://`` -> ``AmqpEventStream``: pika, with the exporter's own queue;
* anything else -> ``KombuEventStream``: Celery's own EventReceiver over whatever kombu transport the
  URL names (the slow, generic path).

Each reader implements one connected session (``session(stop, on_up)``: connect, subscribe, call
``on_up()``, consume until ``stop`` or an error). ``Supervisor`` runs sessions forever: on any error it
marks the stream down (with the password scrubbed from the message), logs, waits a jittered backoff
while still beating, and starts over. Readers import lazily, so a Redis deployment never imports pika.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import structlog

from exporter.config import Config, redact_url
from exporter.events.backoff import Backoff
from exporter.events.ingest import Ingest, StreamStatus

log = structlog.get_logger("exporter.events.stream")

REDIS_SCHEMES = frozenset({"redis", "rediss", "sentinel"})
AMQP_SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})
# The loop of every reader wakes at least this often (seconds) to beat, run idle() and check ``stop``.
TICK = 0.5
# A session that stayed up this long earns a fresh backoff: a broker that flaps once an hour is retried
# quickly each time, one that drops every connection right away is not hammered.
STABLE_AFTER = 10.0
# Longest wait between reconnect attempts: the exporter must be back within seconds of the broker
# returning, and one attempt every 5 s is no load on a broker.
RECONNECT_CAP = 5.0


class EventStream(Protocol):
    """What the app runs in its stream thread."""

    def run(self, stop: threading.Event) -> None:
        """Consume events until ``stop`` is set; never raises on broker trouble."""


def build_stream(config: Config, ingest: Ingest, status: StreamStatus) -> EventStream:
    """Choose the reader for ``config.broker_url`` by scheme (the first URL of a ``;`` failover list)."""
    scheme = urlsplit(config.broker_url.split(";", 1)[0].strip()).scheme.lower()
    if scheme in REDIS_SCHEMES:
        from exporter.events.redis_stream import RedisEventStream

        return RedisEventStream.from_config(config, ingest, status)
    if scheme in AMQP_SCHEMES:
        from exporter.events.amqp_stream import AmqpEventStream

        return AmqpEventStream.from_config(config, ingest, status)
    from exporter.events.kombu_stream import KombuEventStream

    return KombuEventStream.from_config(config, ingest, status)


def url_secrets(url: str) -> tuple[str, ...]:
    """Every password in a (possibly ``;``-separated) broker URL, raw and percent-decoded."""
    out: list[str] = []
    for one in url.split(";"):
        try:
            password = urlsplit(one.strip()).password
        except ValueError:
            continue
        if password:
            out.extend({password, unquote(password)})
    return tuple(s for s in out if s)


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret replaced by ``***`` (a driver may echo a URL in its message)."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def describe(exc: BaseException, secrets: Iterable[str]) -> str:
    message = str(exc) or exc.__class__.__name__
    return scrub(f"{exc.__class__.__name__}: {message}", secrets)[:500]


def wait_beating(stop: threading.Event, seconds: float, status: StreamStatus, ingest: Ingest) -> None:
    """Sleep up to ``seconds`` (less if ``stop`` is set), beating and idling at least every TICK."""
    deadline = time.monotonic() + seconds
    while not stop.is_set():
        status.beat()
        ingest.idle()
        left = deadline - time.monotonic()
        if left <= 0:
            return
        stop.wait(min(TICK, left))


Session = Callable[[threading.Event, Callable[[], None]], None]


class Supervisor:
    """Runs a reader's sessions until ``stop``: reconnect forever with backoff, never raise."""

    def __init__(
        self,
        name: str,
        url: str,
        ingest: Ingest,
        status: StreamStatus,
        backoff: Backoff | None = None,
        extra_secrets: Iterable[str] = (),
        context: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.context = dict(context or {})  # what to log on connect: channel pattern, queue name
        self.shown_url = redact_url(url)
        self.secrets = (*url_secrets(url), *(s for s in extra_secrets if s))
        self.ingest = ingest
        self.status = status
        self.backoff = backoff or Backoff(cap=RECONNECT_CAP)
        self.clock = clock
        self._up_at: float | None = None

    def _on_up(self) -> None:
        self._up_at = self.clock()
        self.status.up()
        self.status.beat()
        log.info("event stream connected", stream=self.name, broker=self.shown_url,
                 reconnects=self.status.reconnects, **self.context)

    def run(self, session: Session, stop: threading.Event) -> None:
        while not stop.is_set():
            self._up_at = None
            error: Exception
            try:
                session(stop, self._on_up)
            except Exception as exc:  # any broker, decode or driver error: report and reconnect
                error = exc
            else:
                error = ConnectionError("the broker ended the event subscription")
            if stop.is_set():
                break
            delay = self._delay()
            self._failed(error, delay)
            wait_beating(stop, delay, self.status, self.ingest)
        if self.status.connected:
            self.status.down("stopped")
        log.info("event stream stopped", stream=self.name, broker=self.shown_url)

    def _delay(self) -> float:
        if self._up_at is not None and self.clock() - self._up_at >= STABLE_AFTER:
            self.backoff.reset()
        return self.backoff.next_delay()

    def _failed(self, exc: Exception, delay: float) -> None:
        error = describe(exc, self.secrets)
        was_up = self.status.connected
        self.status.down(error)
        # Our own bugs show their traceback; broker trouble is one line per attempt.
        expected = _is_broker_error(exc)
        log.warning("event stream disconnected" if was_up else "event stream cannot connect",
                    stream=self.name, broker=self.shown_url, error=error,
                    retry_in=round(delay, 2), exc_info=not expected)


def _is_broker_error(exc: Exception) -> bool:
    if isinstance(exc, (OSError, EOFError, TimeoutError)):
        return True
    module = type(exc).__module__.split(".", 1)[0]
    return module in {"redis", "pika", "kombu", "amqp", "celery"}
