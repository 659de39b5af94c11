"""The RabbitMQ event stream: pika (connected by ``connection.py``, like the poller), the exporter's own
queue on Celery's ``celeryev`` topic exchange, batches.

Celery publishes events to the topic exchange ``celeryev`` (``celery.events.event.event_exchange``:
``Exchange('celeryev', type='topic')``, i.e. durable, not auto-delete) with the event type as routing key
(``task.multi``, ``worker.heartbeat``...). Nothing is delivered unless a queue is bound, so we bind our own
with ``#``. Unlike Celery's receiver (an auto-delete queue with a 5 s message TTL, gone the moment the
connection blips), ours is built to survive a reconnect:

* name ``<event_queue_prefix>.<host>.<pid>.<random>``, fixed for the life of the process, so a reconnect
  finds the same queue and what was published meanwhile;
* not auto-delete, not exclusive, and durable (RabbitMQ 4 deprecates transient non-exclusive queues);
  ``x-queue-type=classic`` so a vhost defaulting to quorum queues does not make it a heavy quorum queue;
* ``x-expires`` = ``event_queue_expires``: RabbitMQ deletes it once we have been gone that long;
* ``x-message-ttl`` = ``event_queue_ttl`` (omitted when 0): a backlog cannot grow without bound;
* ``x-max-length`` = ``event_queue_max_length``, ``x-max-length-bytes`` = ``event_queue_max_bytes``,
  ``x-overflow=drop-head``: while the exporter is away (or after a crash, until ``x-expires``) the queue
  keeps only the newest events, so an orphan never holds more than this (docs/reliability.md sizes it).

A clean stop (``stop`` set: SIGTERM, SIGINT) deletes the queue before closing the connection, so
nothing collects events for a process that is gone. The name is unique per process, so a declare never
meets a queue declared with other arguments by another version; if it does all the same
(``PRECONDITION_FAILED``, a name reused by hand), the stream takes a fresh name instead of failing forever.

With ``--event-queue-name`` (``settings.queue_name``) the queue is ``<event_queue_prefix>.<name>``, the
same for every process of one replica (a StatefulSet pod name), and outlives a restart: a clean stop
leaves it (still bounded by the arguments above, and deleted by ``x-expires`` if nobody comes back), and
the next start declares it again and drains what arrived meanwhile. Two processes must never split one
queue's events, so the stable queue is consumed with ``exclusive=True``: RabbitMQ refuses a second
consumer (``ACCESS_REFUSED``) atomically, where a passive declare's ``consumer_count`` would race. A
refused process stays connected but not ready (``StreamStatus.waiting``, shown on ``/readyz``), logs it
once, and asks again every ``RECHECK`` seconds until the queue is free. A stable queue declared with other
arguments (an option changed) is replaced if nobody consumes it (``queue.delete(if_unused)``), its
backlog lost, and waited for otherwise.

Messages are consumed with ``basic.qos(prefetch_count=event_prefetch)``; everything one
``process_data_events`` call delivers is decoded as one batch by ``Ingest.feed_amqp`` and acknowledged
with a single ``basic.ack(multiple=True)``. Bodies that are not JSON are counted and acked, never
requeued. Heartbeats (30 s) and TCP keepalive notice a dead peer.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions
import structlog

from exporter.brokers.backoff import Backoff
from exporter.brokers.rabbitmq.connection import connection_parameters
from exporter.brokers.settings import StreamSettings
from exporter.brokers.supervisor import TICK, Supervisor, node_id
from exporter.events.ingest import Ingest
from exporter.status import StreamStatus

EXCHANGE = "celeryev"
CONNECT_TIMEOUT = 5.0
HEARTBEAT = 30


PRECONDITION_FAILED = 406
ACCESS_REFUSED = 403  # basic.consume(exclusive=True) on a queue that has a consumer
RECHECK = 2.0  # seconds between attempts on a stable queue another consumer holds

log = structlog.get_logger("exporter.events.stream")


def queue_arguments(ttl: float, expires: float, max_length: int, max_bytes: int) -> dict[str, Any]:
    """``queue.declare`` arguments: RabbitMQ wants whole milliseconds; a TTL of 0 means none."""
    args: dict[str, Any] = {"x-queue-type": "classic", "x-expires": max(1, round(expires * 1000)),
                            "x-max-length": max_length, "x-max-length-bytes": max_bytes,
                            "x-overflow": "drop-head"}
    if ttl > 0:
        args["x-message-ttl"] = max(1, round(ttl * 1000))
    return args


class AmqpEventStream:
    """Consumer of the ``celeryev`` exchange over AMQP 0-9-1; see the module docstring."""

    def __init__(
        self, settings: StreamSettings, ingest: Ingest, status: StreamStatus, backoff: Backoff | None = None,
    ) -> None:
        url = settings.broker_url
        self.ingest = ingest
        self.status = status
        self.queue_prefix = settings.queue_prefix
        self.stable = settings.queue_name is not None
        self.queue = f"{self.queue_prefix}.{settings.queue_name}"[:255] if self.stable else self._new_name()
        self.arguments = queue_arguments(settings.queue_ttl, settings.queue_expires,
                                         settings.queue_max_length, settings.queue_max_bytes)
        self.prefetch = prefetch = settings.prefetch
        self.transient = settings.queue_mode == "exclusive"
        self.client_name = f"celery-exporter events {self.queue}"
        self.parameters = connection_parameters(
            url, client_name=self.client_name, heartbeat=HEARTBEAT, socket_timeout=CONNECT_TIMEOUT,
            stack_timeout=CONNECT_TIMEOUT * 3,
            blocked_timeout=None,  # we never publish, so flow control cannot block us
        )
        # Our queue outlives a lost connection: events wait in it up to the TTL, until it expires.
        kept = min(settings.queue_ttl or settings.queue_expires, settings.queue_expires)
        self.supervisor = Supervisor("amqp", url, ingest, status, backoff,
                                     context={"queue": self.queue, "prefetch": prefetch},
                                     keeps_events_for=kept)
        self._pending: list[tuple[bytes, str | None, str | None]] = []
        self._last_tag = 0

    def _new_name(self) -> str:
        return f"{self.queue_prefix}.{node_id()}"[:255]

    def run(self, stop: threading.Event) -> None:
        self.supervisor.run(self.session, stop)

    def session(self, stop: threading.Event, on_up: Callable[[], None]) -> None:
        conn = pika.BlockingConnection(self.parameters)
        try:
            channel = self._attach(conn, stop)
            if channel is None:  # stopped while another consumer held the queue
                return
            on_up()
            self._consume(conn, channel, stop)
            if stop.is_set():
                self._leave(channel)
        finally:
            self.status.waiting = ""
            # Unacked deliveries go back to our queue when the connection closes.
            if conn.is_open:
                with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                    conn.close()

    def _attach(self, conn: pika.BlockingConnection, stop: threading.Event) -> Any:
        """Declare and consume our queue; a stable one another consumer holds is waited for, connected."""
        waiting_since: float | None = None
        while not stop.is_set():
            try:
                channel = self._declare(conn)
                channel.basic_qos(prefetch_count=self.prefetch)
                self._pending = []
                channel.basic_consume(self.queue, self._on_message, auto_ack=False, exclusive=self.stable)
            except pika.exceptions.ChannelClosedByBroker as exc:
                if not (self.stable and exc.reply_code in (ACCESS_REFUSED, PRECONDITION_FAILED)):
                    raise
            else:
                if waiting_since is not None:
                    log.info("event queue is free; consuming it", queue=self.queue,
                             waited=round(time.monotonic() - waiting_since, 1))
                return channel
            if waiting_since is None:
                waiting_since = time.monotonic()
                self.status.waiting = (f"event queue {self.queue} has another consumer (another exporter "
                                       f"with the same --event-queue-name?); waiting for it to be free")
                log.warning("event queue in use by another consumer; waiting for it to be free",
                            queue=self.queue, recheck_every=RECHECK)
            self._idle(conn, stop, RECHECK)
        return None

    def _idle(self, conn: pika.BlockingConnection, stop: threading.Event, seconds: float) -> None:
        """Keep the connection (and its heartbeats) serviced, and the liveness beat going, for ``seconds``."""
        deadline = time.monotonic() + seconds
        while not stop.is_set() and time.monotonic() < deadline:
            conn.process_data_events(time_limit=TICK)
            self.supervisor.turn()

    def _declare(self, conn: pika.BlockingConnection) -> Any:
        channel = conn.channel()
        try:
            # Passive first: an exchange Celery already declared is used as it is, whatever its flags.
            channel.exchange_declare(EXCHANGE, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != 404:
                raise
            if self.transient:  # never create it: no worker with events on has connected here
                raise ConnectionError("the celeryev exchange does not exist on this virtual host: no worker "
                                      "with events enabled has connected to it") from exc
            channel = conn.channel()  # the failed passive declare closed the channel
            channel.exchange_declare(EXCHANGE, exchange_type="topic", durable=True, auto_delete=False)
        if self.transient:
            channel.queue_declare(self.queue, durable=False, exclusive=True, auto_delete=True,
                                  arguments=self.arguments)
            channel.queue_bind(self.queue, EXCHANGE, routing_key="#")
            return channel
        try:
            channel.queue_declare(self.queue, durable=True, exclusive=False, auto_delete=False,
                                  arguments=self.arguments)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != PRECONDITION_FAILED:
                raise
            if self.stable:
                return self._replace(conn)
            # Someone else's queue by this name, with other arguments: never touch it, take a new name.
            old, self.queue = self.queue, self._new_name()
            log.warning("event queue name taken with other arguments; using a new name",
                        queue=old, new_queue=self.queue)
            self.supervisor.context["queue"] = self.queue
            channel = conn.channel()
            channel.queue_declare(self.queue, durable=True, exclusive=False, auto_delete=False,
                                  arguments=self.arguments)
        channel.queue_bind(self.queue, EXCHANGE, routing_key="#")
        return channel

    def _replace(self, conn: pika.BlockingConnection) -> Any:
        """Our stable queue, declared with other arguments (an option changed): replace it unless in use.

        ``if_unused`` makes RabbitMQ refuse (``PRECONDITION_FAILED``) while a consumer holds it, which
        ``_attach`` then waits out like any other consumer."""
        channel = conn.channel()
        channel.queue_delete(self.queue, if_unused=True)
        log.warning("event queue had other arguments (an option changed); replaced it, its backlog lost",
                    queue=self.queue)
        channel.queue_declare(self.queue, durable=True, exclusive=False, auto_delete=False,
                              arguments=self.arguments)
        channel.queue_bind(self.queue, EXCHANGE, routing_key="#")
        return channel

    def _leave(self, channel: Any) -> None:
        """On a clean stop: a stable queue stays for the next start, a per-process one is deleted."""
        if not self.stable:
            self._delete(channel)
            return
        log.info("event queue left for the next start", queue=self.queue,
                 expires_in=self.arguments["x-expires"] / 1000)

    def _delete(self, channel: Any) -> None:
        """Nobody will read this queue again (the next process has its own name)."""
        try:
            channel.queue_delete(self.queue)
        except (pika.exceptions.AMQPError, OSError) as exc:
            log.warning("cannot delete the event queue; it expires on its own", queue=self.queue,
                        error=type(exc).__name__)
        else:
            log.info("event queue deleted", queue=self.queue)

    def _on_message(self, _channel: Any, method: Any, properties: Any, body: bytes) -> None:
        self._pending.append((body, properties.content_type, properties.content_encoding))
        self._last_tag = method.delivery_tag

    def _consume(self, conn: pika.BlockingConnection, channel: Any, stop: threading.Event) -> None:
        process = conn.process_data_events
        feed = self.ingest.feed_amqp
        ack = channel.basic_ack
        turn = self.supervisor.turn
        while not stop.is_set():
            process(time_limit=TICK)
            if self._pending:
                batch, self._pending = self._pending, []
                feed(batch)
                ack(self._last_tag, multiple=True)
            turn()
