"""The seam between an event stream and ClusterState: decode a batch of raw messages, apply it under
one lock acquisition, count and (rate-limited) log what was refused.

Streams call ``feed_redis``/``feed_amqp``/``feed_objects`` from their one thread; nothing else writes
the state, so the scrape path only ever contends for the lock once per scrape. An in-flight inventory,
taken in its own thread, is handed over with ``offer_inventory`` and applied by the stream thread on
its next turn (``idle``), so that stays true. ``connected`` is what a stream calls on every (re)connect.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import structlog

from exporter.events.decode import (
    Decoded,
    decode_amqp_body,
    decode_event_objects,
    decode_redis_payload,
)
from exporter.inflight import Inventory
from exporter.logs import RateLimitedLog
from exporter.state import ClusterState

log = structlog.get_logger("exporter.events")


class Ingest:
    """Decode raw event messages and apply them to the state, batch by batch."""

    def __init__(self, state: ClusterState, clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.clock = clock
        self.invalid_log = RateLimitedLog(log)
        self.tick_interval = 5.0
        self._last_tick = clock()
        # Set by the app when an inventory runs on connect (InventoryRunner.request), else None.
        self.on_connect: Callable[[], None] | None = None
        self._inventories: deque[Inventory] = deque(maxlen=4)  # filled by the inventory thread

    def connected(self, events_lost: bool) -> None:
        """The stream is (re)connected; ``events_lost``: after an outage whose events the broker did not
        keep (Redis pub/sub keeps none). Tasks then waiting may have started meanwhile, so the state
        stops trusting them (the inventory confirms those a worker still holds). An inventory is asked
        for on every connect."""
        if events_lost:
            with self.state.lock:
                self.state.stream_resumed(self.on_connect is not None)
        if self.on_connect is not None:
            self.on_connect()

    def offer_inventory(self, inventory: Inventory) -> None:
        """From the inventory thread: applied by the stream thread on its next turn."""
        self._inventories.append(inventory)

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
            if decoded.clamped:
                state.clamped += decoded.clamped
        if refused or failed:
            for reason in (*refused, *failed):
                self.invalid_log.warning(reason, "invalid event message refused", reason=reason)
        return len(events) - len(failed)

    def idle(self) -> None:
        """Called by the stream loop on every turn (at least once a second, even with no traffic):
        housekeeping every ``tick_interval`` seconds, so the stream thread stays the only writer."""
        while self._inventories:
            inventory = self._inventories.popleft()
            with self.state.lock:
                self.state.adopt_inflight(inventory)
        now = self.clock()
        if now - self._last_tick >= self.tick_interval:
            self._last_tick = now
            with self.state.lock:
                self.state.tick()
