"""The generic fallback for every kombu transport without a package of its own (SQS, Azure Service Bus,
ZooKeeper, ``memory://``, ``filesystem://``...): ``stream.py`` reads events with Celery's own
``EventReceiver``; there is no poller, since kombu offers no transport-independent way to count a queue.

``event_stream()`` and ``pollers()`` are what ``brokers/registry.py`` calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import structlog

from exporter.brokers.scheduler import Poller
from exporter.brokers.settings import PollSettings, StreamSettings
from exporter.brokers.supervisor import EventStream
from exporter.events.ingest import Ingest, StreamStatus

log = structlog.get_logger("exporter.brokers")


def event_stream(settings: StreamSettings, ingest: Ingest, status: StreamStatus) -> EventStream:
    from exporter.brokers.kombu.stream import KombuEventStream

    return KombuEventStream.from_settings(settings, ingest, status)


def pollers(settings: PollSettings, queues_seen: Callable[[], Iterable[str]],
            monotonic: Callable[[], float] = time.monotonic) -> list[Poller]:
    from exporter.brokers.registry import scheme_of

    log.info("queue polling is not available for this broker transport",
             scheme=scheme_of(settings.broker_url))
    return []
