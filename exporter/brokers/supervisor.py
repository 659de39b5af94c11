"""What every event stream shares: the ``EventStream`` protocol the app runs, and the reconnect loop.

Each broker's reader (``brokers/redis/stream.py``, ``brokers/rabbitmq/stream.py``,
``brokers/kombu/stream.py``; ``registry.py`` picks one by URL scheme) implements one connected session
(``session(stop, on_up)``: connect, subscribe, call ``on_up()``, consume until ``stop`` or an error).
``Supervisor`` runs sessions forever: on any error it marks the stream down (with the password scrubbed
from the message by ``exporter.secrets``), logs, waits a jittered backoff while still beating, and starts
over.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import structlog

from exporter.brokers.backoff import Backoff
from exporter.events.ingest import Ingest
from exporter.secrets import describe_error, redact_url, url_secrets
from exporter.status import StreamStatus

log = structlog.get_logger("exporter.events.stream")

# The loop of every reader wakes at least this often (seconds) to beat, run idle() and check ``stop``.
TICK = 0.5
# A session that stayed up this long earns a fresh backoff: a broker that flaps once an hour is retried
# quickly each time, one that drops every connection right away is not hammered.
STABLE_AFTER = 10.0
# Longest wait between reconnect attempts: the exporter must be back within seconds of the broker
# returning, and one attempt every 5 s is no load on a broker.
RECONNECT_CAP = 5.0


def node_id() -> str:
    """``<host>.<pid>.<random>``: names a stream's own event queue, fixed for the life of the process."""
    host = socket.gethostname().split(".", 1)[0][:64] or "host"
    return f"{host}.{os.getpid()}.{secrets.token_hex(4)}"


class EventStream(Protocol):
    """What the app runs in its stream thread."""

    def run(self, stop: threading.Event) -> None:
        """Consume events until ``stop`` is set; never raises on broker trouble."""


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
        keeps_events_for: float = 0.0,
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
        # How long the broker keeps the events of a reader that is away (0: pub/sub keeps nothing), and
        # since when this one is: a longer outage may have lost events, which the state must know.
        self.keeps_events_for = keeps_events_for
        self._down_at: float | None = None

    def turn(self) -> None:
        """What every reader does at the end of each loop turn (at least every TICK): beat the liveness
        heartbeat and let the ingest run its housekeeping."""
        self.status.beat()
        self.ingest.idle()

    def _on_up(self) -> None:
        self._up_at = self.clock()
        self.status.up()
        self.status.beat()
        away = None if self._down_at is None else self._up_at - self._down_at
        self.ingest.connected(away is not None and away > self.keeps_events_for)
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
        error = describe_error(exc, self.secrets)
        was_up = self.status.connected
        if was_up:
            self._down_at = self.clock()
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
