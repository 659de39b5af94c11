"""Assembling the background polling: queue depth, unacked messages, consumers, retry queues and DLQs.

``build_polling(settings, queues_seen)`` asks ``registry.py`` for the broker package's pollers (Redis;
RabbitMQ through the management API or passive declares; none for SQS and other kombu transports) and
for the DLQ-only pollers of the ``--dead-letter-redis-url`` databases, caps each poller's queue names,
and returns a ``Polling``: ``run(stop)`` polls in the background every ``settings.interval`` seconds,
each poll under a ``settings.timeout`` deadline, and ``views`` reads the last good results
(``QueueCollector`` serves them). No broker package is named here: the registry names them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import structlog

from exporter.brokers.model import cap_queues, pinned_queues
from exporter.brokers.registry import dead_letter_pollers_for, pollers_for, scheme_of
from exporter.brokers.scheduler import STALE_POLLS, Poller, Polling, PollStore, SourceRunner
from exporter.brokers.settings import PollSettings
from exporter.labels import OVERFLOW_LABEL
from exporter.secrets import option_secrets, url_secrets
from exporter.status import PollResult

log = structlog.get_logger("exporter.brokers")


class Capped:
    """A poller whose results keep at most ``max_queues`` queue names (see ``cap_queues``)."""

    def __init__(self, inner: Poller, max_queues: int, pinned: tuple[str, ...]) -> None:
        self.inner, self.max_queues, self.pinned = inner, max_queues, pinned
        self.source = inner.source

    def poll(self, deadline: float) -> PollResult:
        return cap_queues(self.inner.poll(deadline), self.max_queues, self.pinned)

    def close(self) -> None:
        self.inner.close()


def build_pollers(settings: PollSettings, queues_seen: Callable[[], Iterable[str]],
                  monotonic: Callable[[], float] = time.monotonic) -> list[Poller]:
    """The (capped) pollers for ``settings.broker_url``; none for a broker we cannot poll."""
    pollers = pollers_for(settings, queues_seen, monotonic)
    if pollers is None:
        log.info("queue polling is not available for this broker transport",
                 scheme=scheme_of(settings.broker_url))
        pollers = []
    pollers += dead_letter_pollers_for(settings, monotonic)  # beside any broker, Redis or RabbitMQ
    return [Capped(p, settings.max_queues, pinned_queues(settings)) for p in pollers]


def build_polling(settings: PollSettings, queues_seen: Callable[[], Iterable[str]],
                  monotonic: Callable[[], float] = time.monotonic) -> Polling:
    """The background polling: run ``polling.run``; ``polling.views`` reads its last results."""

    def seen() -> list[str]:
        # Names the broker cannot take are each poller's to skip and count (poll_skipped_total).
        return [q for q in queues_seen() if q and q != OVERFLOW_LABEL]

    pollers = build_pollers(settings, seen, monotonic)
    store = PollStore([p.source for p in pollers], STALE_POLLS * settings.interval, monotonic)
    # Every password of every URL and of the transport options, as written and percent-decoded, is
    # masked in poll errors.
    secrets = [*url_secrets(settings.broker_url), *url_secrets(settings.management_url or ""),
               *(s for url in settings.dead_letter_redis_urls for s in url_secrets(url)),
               *option_secrets(settings.transport_options)]  # sentinel_kwargs.password
    runners = [SourceRunner(p, store, settings.timeout, secrets, monotonic) for p in pollers]
    return Polling(runners, settings.interval, store.views)
