"""The generic fallback: Celery's own ``EventReceiver`` over any kombu transport (SQS, Azure, ZooKeeper,
``memory://``, ``filesystem://``...): every scheme ``brokers/registry.py`` gives no package of its own.
This is the slow path: kombu builds a Message object per event message and Celery dispatches each event
to a handler. Redis and RabbitMQ have dedicated readers in their packages, several times faster.

What we keep from Celery: the queue it declares (``<event_queue_prefix>.<node id>`` bound to the
``celeryev`` exchange with ``#``, with our TTL and expiry), its consumer, its splitting of ``task.multi``
batches, and ``accept=["json"]`` so kombu refuses to deserialise pickle, yaml or msgpack. What we change:
``event_from_message`` is overridden to hand over the body untouched, because our decoder validates it
and makes the ``utcoffset`` adjustment itself (doing it twice would shift timestamps twice), and to skip
Celery's Lamport-clock bookkeeping, which the exporter never reads. We do not send Celery's ``heartbeat``
broadcast on connect (``wakeup``): the stream never writes to the broker. A body kombu refuses (wrong
content type, broken JSON) goes to ``Ingest.feed_amqp`` with its raw bytes and content type, so it is
counted under the same reasons as on the fast paths, and the loop goes on.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

from celery import Celery
from celery.events.receiver import EventReceiver
from kombu import Consumer

from exporter.brokers.backoff import Backoff
from exporter.brokers.settings import StreamSettings
from exporter.brokers.supervisor import TICK, Supervisor, node_id
from exporter.events.ingest import Ingest
from exporter.status import StreamStatus

MAX_BATCH = 1_000


class RawEventReceiver(EventReceiver):
    """Celery's receiver, passing each event on as received (no timestamp or clock adjustment)."""

    def event_from_message(self, body: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        return (body.get("type") if isinstance(body, dict) else None), body


class KombuEventStream:
    """Event reader for any kombu transport, through Celery's EventReceiver; see the module docstring."""

    def __init__(
        self, settings: StreamSettings, ingest: Ingest, status: StreamStatus, backoff: Backoff | None = None,
    ) -> None:
        url, queue_prefix = settings.broker_url, settings.queue_prefix
        self.ingest = ingest
        self.status = status
        self.app = Celery("celery-exporter", broker=url, set_as_current=False)
        self.app.conf.broker_transport_options = dict(settings.transport_options)
        self.app.conf.broker_connection_retry_on_startup = False
        self.queue_prefix = queue_prefix
        self.node_id = node_id()  # one queue name for the life of the process
        self.queue_ttl = settings.queue_ttl or None  # 0 means none, for Celery as for us
        self.queue_expires = settings.queue_expires or None
        self.supervisor = Supervisor("kombu", url, ingest, status, backoff,
                                     context={"queue": f"{queue_prefix}.{self.node_id}"})
        self._pending: list[Any] = []

    def run(self, stop: threading.Event) -> None:
        self.supervisor.run(self.session, stop)

    def session(self, stop: threading.Event, on_up: Callable[[], None]) -> None:
        conn = self.app.connection_for_read()
        try:
            conn.connect()
            channel = conn.channel()
            receiver = RawEventReceiver(
                channel, handlers={"*": self._pending.append}, app=self.app, node_id=self.node_id,
                queue_prefix=self.queue_prefix, accept=["json"], queue_ttl=self.queue_ttl,
                queue_expires=self.queue_expires,
            )
            (consumer,) = receiver.get_consumers(partial(Consumer, channel), channel)
            consumer.on_decode_error = self._on_decode_error
            consumer.consume()
            self._pending.clear()
            # kombu's Redis transport subscribes to the fanout channel on the first drain, not in
            # consume(): drain once before reporting "up", so nothing published after that is missed.
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=0.01)
            on_up()
            self._consume(conn, stop)
        finally:
            conn.release()

    def _on_decode_error(self, message: Any, _exc: Exception) -> None:
        # Hand the raw body to the byte decoder: it names the reason (content type, JSON) and counts it.
        body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
        self.ingest.feed_amqp([(body, message.content_type, message.content_encoding)])

    def _consume(self, conn: Any, stop: threading.Event) -> None:
        drain = conn.drain_events
        pending = self._pending
        feed = self.ingest.feed_objects
        turn = self.supervisor.turn
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):  # socket.timeout: nothing (more) to read
                drain(timeout=TICK)
                while len(pending) < MAX_BATCH:
                    drain(timeout=0)
            if pending:
                batch = pending[:]
                pending.clear()  # the receiver's handler appends to this very list
                feed(batch)
            turn()
