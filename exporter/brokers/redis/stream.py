"""The Redis event stream, the fast path: one raw PSUBSCRIBE connection (built by ``connection.py``, like
the poller's) on the channels kombu publishes Celery's ``celeryev`` exchange on, read in batches straight
into ``Ingest.feed_redis``.

kombu's Redis transport (``kombu/transport/redis.py``) has no exchanges: a message to a fanout or topic
exchange is PUBLISHed on ``<global_keyprefix><keyprefix_fanout><exchange>/<routing key>``, where
``keyprefix_fanout`` is ``/{db}.`` formatted with the database number (``fanout_prefix=True``, the default;
a string ``fanout_prefix`` replaces it, ``False`` drops it), the ``/<routing key>`` part is there only
with ``fanout_patterns=True`` (the default), and ``global_keyprefix`` is prepended to PUBLISH and
PSUBSCRIBE channels by kombu's Prefixed client. Celery's EventReceiver binds with ``#``, which kombu turns
into the glob ``*``. So with defaults on db 0 we PSUBSCRIBE ``/0.celeryev/*`` and receive
``/0.celeryev/task.multi`` and friends, exactly what Celery's own receiver gets.

No kombu or redis-py PubSub objects, and no CLIENT SETNAME (some managed Redis services refuse it, which
would fail every connect): responses are read off one redis-py Connection (hiredis parser), everything
readable is drained into one batch, and the batch is fed under one lock acquisition. The loop
wakes every ``TICK`` without traffic to beat, run ``ingest.idle()`` and notice ``stop``; after
``health_interval`` seconds of silence it PINGs the subscription and treats a missing PONG as a dead
connection (TCP keepalive covers the rest).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from exporter.brokers.backoff import Backoff
from exporter.brokers.redis.connection import connection_pool, secrets_of
from exporter.brokers.settings import StreamSettings
from exporter.brokers.supervisor import TICK, Supervisor
from exporter.events.ingest import Ingest
from exporter.status import StreamStatus

EXCHANGE = "celeryev"
# Responses per batch: bounds the time the state lock is held (~4 ms) and the decoded events alive at once
# (~2 MB; at 2,000 the transient peak added ~6 MB to RSS).
MAX_BATCH = 500
# Below TRICKLE messages a batch, the next turn first waits LINGER seconds for more to arrive: at 20,000
# events/s arriving a message at a time this cut the exporter's CPU by a quarter (benchmark: 11.3 -> 8.3
# CPU-seconds for 600k events); the 2 ms delay is invisible next to scrape intervals.
TRICKLE = 32
LINGER = 0.002
CONNECT_TIMEOUT = 2.0
READ_TIMEOUT = 10.0  # for the rest of a response whose first bytes have arrived


def event_channel_pattern(db: int, transport_options: Mapping[str, Any]) -> str:
    """The PSUBSCRIBE pattern matching what kombu publishes the ``celeryev`` exchange on."""
    fanout_prefix = transport_options.get("fanout_prefix", True)
    if isinstance(fanout_prefix, str):
        prefix = fanout_prefix.format(db=db)
    elif fanout_prefix:
        prefix = f"/{db}."
    else:
        prefix = ""
    pattern = f"{transport_options.get('global_keyprefix', '') or ''}{prefix}{EXCHANGE}"
    if transport_options.get("fanout_patterns", True):
        pattern += "/*"
    return pattern


def _keepalive_options() -> dict[int, int]:
    opts = {}
    for name, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):  # Linux names; other platforms keep their defaults
            opts[getattr(socket, name)] = value
    return opts


def _connection_kwargs() -> dict[str, Any]:
    return {
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": READ_TIMEOUT,
        "socket_keepalive": True,
        "socket_keepalive_options": _keepalive_options(),
        "retry": Retry(NoBackoff(), 0),  # the Supervisor owns retrying, with its own backoff
        "protocol": 2,  # pub/sub replies as plain lists
        "socket_read_size": 1 << 16,
    }


class RedisEventStream:
    """PSUBSCRIBE reader for Redis (and Redis Sentinel) brokers; see the module docstring."""

    def __init__(
        self,
        settings: StreamSettings,
        ingest: Ingest,
        status: StreamStatus,
        backoff: Backoff | None = None,
        health_interval: float = 15.0,
        ping_timeout: float = 5.0,
    ) -> None:
        url = self.url = settings.broker_url
        self.transport_options = dict(settings.transport_options)
        self.ingest = ingest
        self.status = status
        self.health_interval = health_interval
        self.ping_timeout = ping_timeout
        # Validates the URL (and master_name) up front, so a typo fails at start, not in a retry loop.
        self._pool, self.db = connection_pool(url, self.transport_options, **_connection_kwargs())
        self.pattern = event_channel_pattern(self.db, self.transport_options)
        self.supervisor = Supervisor("redis", url, ingest, status, backoff,
                                     extra_secrets=secrets_of(self.transport_options),
                                     context={"pattern": self.pattern})

    def run(self, stop: threading.Event) -> None:
        try:
            self.supervisor.run(self.session, stop)
        finally:
            self._pool.disconnect()

    def session(self, stop: threading.Event, on_up: Callable[[], None]) -> None:
        conn = self._pool.make_connection()  # our own connection: the pool never hands it out
        try:
            conn.connect()
            conn.send_command("PSUBSCRIBE", self.pattern)
            reply = conn.read_response()
            if not isinstance(reply, list) or reply[0] != b"psubscribe":
                raise redis.ConnectionError(f"unexpected reply to PSUBSCRIBE: {reply!r:.200}")
            on_up()
            self._consume(conn, stop)
        finally:
            conn.disconnect()

    def _consume(self, conn: Any, stop: threading.Event) -> None:
        can_read = conn.can_read
        read = conn.read_response
        feed = self.ingest.feed_redis
        turn = self.supervisor.turn
        monotonic = time.monotonic
        sleep = time.sleep
        last_read = monotonic()
        ping_sent: float | None = None
        trickle = False
        while not stop.is_set():
            if can_read(TICK):
                if trickle:
                    # Messages trickling in one at a time (thousands a second from many workers) would
                    # each pay a whole loop turn; a moment's wait lets them arrive as one batch.
                    sleep(LINGER)
                batch: list[bytes] = []
                append = batch.append
                for _ in range(MAX_BATCH):
                    resp = read()
                    # ["pmessage", pattern, channel, data]; "pong" answers our health PING.
                    if resp[0] == b"pmessage":
                        append(resp[3])
                    if not can_read(0):
                        break
                trickle = len(batch) < TRICKLE
                if batch:
                    feed(batch)
                last_read = monotonic()
                ping_sent = None
            else:
                trickle = False
                now = monotonic()
                if ping_sent is not None:
                    if now - ping_sent > self.ping_timeout:
                        raise redis.TimeoutError(
                            f"no reply to PING within {self.ping_timeout:g}s: connection presumed dead")
                elif now - last_read >= self.health_interval:
                    conn.send_command("PING")
                    ping_sent = now
            turn()
