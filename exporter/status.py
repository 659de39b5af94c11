"""What the event stream and the pollers publish and the collectors read: ``StreamStatus`` (the event
stream's connection state), and per poll source a ``SourceView`` holding its last ``PollResult`` (queue
depths as ``QueueDepth``, retry queues, DLQs). Streams and pollers write these, collectors read them;
neither side imports the other. A leaf: nothing from ``exporter`` is imported here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


class StreamStatus:
    """Connection state of the event stream; written by the stream thread, read by scrapes."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.connected = False
        self.reconnects = 0
        self.connects = 0
        self.last_error = ""
        self.waiting = ""  # why a connected stream does not consume yet (its queue is in use): /readyz
        self.heartbeat = clock()  # bumped by the stream loop on every turn: /healthz reads it

    def up(self) -> None:
        if self.connects:
            self.reconnects += 1
        self.connects += 1
        self.connected = True
        self.waiting = ""

    def down(self, error: str) -> None:
        self.connected = False
        self.last_error = error

    def beat(self) -> None:
        self.heartbeat = self.clock()


@dataclass(frozen=True)
class QueueDepth:
    """A queue's depth: ready messages, and where the broker knows them, unacked messages, consumers and
    ``published_total``, the cumulative count of messages published into the queue as the broker counts
    them (RabbitMQ's management statistics). For a DLQ (``PollResult.dead_letter_depth``) a present
    ``published_total`` drives ``celery_dead_letter_messages_added_total`` instead of length differences."""

    ready: float
    unacked: float | None = None
    consumers: float | None = None
    published_total: float | None = None


@dataclass(frozen=True)
class PollResult:
    """One successful poll of one source. ``dead_letter_oldest`` holds Unix timestamps (not ages), so the
    age keeps growing between polls and is computed at scrape time from the injected clock."""

    queues: Mapping[str, QueueDepth] = field(default_factory=dict)
    retry: Mapping[str, float] = field(default_factory=dict)
    dead_letter: Mapping[str, float] = field(default_factory=dict)
    dead_letter_oldest: Mapping[str, float] = field(default_factory=dict)
    broker_unacked: float | None = None
    # Optional detail of a DLQ named in ``dead_letter`` (a poller that knows the broker's publish count
    # sets ``published_total`` here); ``dead_letter`` stays the length the gauges report.
    dead_letter_depth: Mapping[str, QueueDepth] = field(default_factory=dict)
    # What this poll could not read and skipped: reason -> count (``celery_exporter_poll_skipped_total``).
    skipped: Mapping[str, int] = field(default_factory=dict)
    # Options whose value does not match what the broker holds (``celery_exporter_poll_option_mismatch``).
    mismatched_options: tuple[str, ...] = ()
    # Task queue -> (task id, Unix time it was first seen at the end consumed next) of the message that
    # has stood there longest (Redis only: a lower bound of the oldest task's wait).
    queue_heads: Mapping[str, tuple[str, float]] = field(default_factory=dict)
    # What one Redis poll read at those ends (queue -> {priority step: task id}), before the poller's
    # HeadTracker turns it into ``queue_heads``.
    head_ids: Mapping[str, Mapping[int, str]] = field(default_factory=dict)
    # Why each reported queue is reported and has its kind, in a few words ("kombu binding", "broker:
    # another queue dead-letters into it"): the status page and doctor show it. An explanation, not a
    # measurement: left out of equality.
    reasons: Mapping[str, str] = field(default_factory=dict, compare=False)
    # Queue -> its dead-letter exchange, for failure routes whose letters reach no queue (the DLX has no
    # queue bound, so RabbitMQ drops them): the doctor's dead_letter_routes check.
    unrouted_dead_letters: Mapping[str, str] = field(default_factory=dict)

    def names(self) -> set[str]:
        return set(self.queues) | set(self.retry) | set(self.dead_letter)


@dataclass(frozen=True)
class SourceView:
    """What a scrape sees of one source."""

    source: str
    success: bool | None  # None until the first poll has finished
    duration: float
    errors: int
    result: PollResult | None  # None before the first success, or once the last one went stale
    dead_letter_added: Mapping[str, float] = field(default_factory=dict)
    skipped: Mapping[str, int] = field(default_factory=dict)  # reason -> total since start
