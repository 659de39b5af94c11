"""The seam between an event stream and ClusterState: decode a batch of raw messages, apply it under
one lock acquisition, count and (rate-limited) log what was refused. Also holds ``StreamStatus``, the
little bit of state a stream reader publishes about its broker connection.

Streams call ``feed_redis``/``feed_amqp``/``feed_objects`` from their one thread; nothing else writes
the state, so the scrape path only ever contends for the lock once per scrape.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import structlog

from exporter.events.decode import (
    Decoded,
    decode_amqp_body,
    decode_event_objects,
    decode_redis_payload,
)
from exporter.logs import RateLimitedLog
from exporter.state import ClusterState

log = structlog.get_logger("exporter.events")


class StreamStatus:
    """Connection state of the event stream; written by the stream thread, read by scrapes."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.connected = False
        self.reconnects = 0
        self.connects = 0
        self.last_error = ""
        self.heartbeat = clock()  # bumped by the stream loop on every turn: /healthz reads it

    def up(self) -> None:
        if self.connects:
            self.reconnects += 1
        self.connects += 1
        self.connected = True

    def down(self, error: str) -> None:
        self.connected = False
        self.last_error = error

    def beat(self) -> None:
        self.heartbeat = self.clock()


class Ingest:
    """Decode raw event messages and apply them to the state, batch by batch."""

    def __init__(self, state: ClusterState, clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.clock = clock
        self.invalid_log = RateLimitedLog(log)
        self.tick_interval = 5.0
        self._last_tick = clock()

    def feed_redis(self, payloads: Iterable[bytes | str]) -> int:
        """Apply a batch of Redis pub/sub payloads; returns how many events were applied."""
        now = self.clock()
        out = Decoded()
        for p in payloads:
            decode_redis_payload(p, now, None, out)
        return self._apply(out)

    def feed_amqp(self, messages: Iterable[tuple[bytes, str | None, str | None]]) -> int:
        """Apply a batch of AMQP ``(body, content_type, content_encoding)`` messages."""
        now = self.clock()
        out = Decoded()
        for b, ct, ce in messages:
            decode_amqp_body(b, ct, ce, now, None, out)
        return self._apply(out)

    def feed_objects(self, bodies: Iterable[Any]) -> int:
        """Apply already-deserialised bodies (the generic kombu fallback path)."""
        now = self.clock()
        out = Decoded()
        for b in bodies:
            decode_event_objects(b, now, None, out)
        return self._apply(out)

    def _apply(self, decoded: Decoded) -> int:
        """Apply a whole batch under one lock acquisition: the only lock the event path takes."""
        state = self.state
        events = decoded.events
        refused = decoded.invalid
        failed: list[str] = []
        now = state.clock()  # once per batch: the state's handlers share it
        remaining = iter(events)
        with state.lock:
            while True:
                try:  # free in CPython 3.11+ unless it raises
                    state.apply_many(remaining, now)
                    break
                except Exception as exc:  # a shape we did not foresee must not stop the batch: go on
                    state.count_invalid("apply_error")
                    failed.append(f"apply_error:{type(exc).__name__}")
            for reason in refused:
                state.count_invalid(reason)
        if refused or failed:
            for reason in (*refused, *failed):
                self.invalid_log.warning(reason, "invalid event message refused", reason=reason)
        return len(events) - len(failed)

    def idle(self) -> None:
        """Called by the stream loop on every turn (at least once a second, even with no traffic):
        housekeeping every ``tick_interval`` seconds, so the stream thread stays the only writer."""
        now = self.clock()
        if now - self._last_tick >= self.tick_interval:
            self._last_tick = now
            with self.state.lock:
                self.state.tick()
