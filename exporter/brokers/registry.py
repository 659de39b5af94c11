"""The one scheme registry: which broker package streams and polls a broker URL.

Each line of ``BROKERS`` names a broker package under ``exporter/brokers/``, the URL schemes kombu gives
that transport, its event stream class (built as ``Stream(settings, ingest, status)``), when the broker
can be polled its ``pollers(settings, queues_seen, monotonic) -> list[Poller]`` function, and when its
databases can be searched for dead-letter queues beside any broker (``--dead-letter-redis-url``) its
``dead_letter_pollers(settings, urls, monotonic) -> list[Poller]`` function. Adding a broker is one
package and one line here. Modules are imported only when chosen, so a Redis deployment
never imports pika. The scheme of the first URL of a ``;`` failover list decides; a scheme no line lists
goes to ``kombu`` (Celery's EventReceiver, no poller).
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from exporter.brokers.scheduler import Poller
from exporter.brokers.settings import BrokerSettingsError, PollSettings, StreamSettings
from exporter.brokers.supervisor import EventStream
from exporter.events.ingest import Ingest
from exporter.status import StreamStatus


@dataclass(frozen=True)
class Broker:
    schemes: tuple[str, ...]
    stream: str  # "<module>:<class>" under exporter.brokers
    pollers: str | None  # "<module>:<function>" under exporter.brokers, None when it cannot be polled
    dead_letter_pollers: str | None = None  # "<module>:<function>": DLQ-only pollers of extra databases


BROKERS: dict[str, Broker] = {
    "redis": Broker(("redis", "rediss", "redis+socket", "socket", "sentinel"),
                    "redis.stream:RedisEventStream", "redis:pollers", "redis:dead_letter_pollers"),
    "rabbitmq": Broker(("amqp", "amqps", "pyamqp", "librabbitmq"),
                       "rabbitmq.stream:AmqpEventStream", "rabbitmq:pollers"),
    "kombu": Broker((), "kombu.stream:KombuEventStream", None),  # the fallback for every other scheme
}
FALLBACK = "kombu"
SCHEMES: dict[str, str] = {scheme: name for name, b in BROKERS.items() for scheme in b.schemes}


def scheme_of(url: str) -> str:
    return urlsplit(url.split(";", 1)[0].strip()).scheme.lower()


def broker_for(url: str) -> str:
    """The name of the broker package for ``url`` (``redis``, ``rabbitmq`` or the ``kombu`` fallback)."""
    return SCHEMES.get(scheme_of(url), FALLBACK)


def _load(ref: str) -> Any:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(f"exporter.brokers.{module}"), name)


def build_stream(settings: StreamSettings, ingest: Ingest, status: StreamStatus) -> EventStream:
    """The event stream of the broker package for ``settings.broker_url``."""
    stream: EventStream = _load(BROKERS[broker_for(settings.broker_url)].stream)(settings, ingest, status)
    return stream


def pollers_for(settings: PollSettings, queues_seen: Callable[[], Iterable[str]],
                monotonic: Callable[[], float] = time.monotonic) -> list[Poller] | None:
    """The broker package's pollers for ``settings.broker_url``, or None when it has no poller."""
    ref = BROKERS[broker_for(settings.broker_url)].pollers
    if ref is None:
        return None
    pollers: list[Poller] = _load(ref)(settings, queues_seen, monotonic)
    return pollers


def dead_letter_pollers_for(settings: PollSettings,
                            monotonic: Callable[[], float] = time.monotonic) -> list[Poller]:
    """The DLQ-only pollers of ``settings.dead_letter_redis_urls``, each URL handed to the broker package
    its scheme names (the configuration admits only Redis URLs there), in the order given."""
    out: list[Poller] = []
    urls = settings.dead_letter_redis_urls
    for name in dict.fromkeys(broker_for(url) for url in urls):
        ref = BROKERS[name].dead_letter_pollers
        if ref is None:
            raise BrokerSettingsError("dead_letter_redis_urls", f"a {name} URL cannot be searched for "
                                      "dead-letter queues; give a Redis URL")
        out += _load(ref)(settings, tuple(u for u in urls if broker_for(u) == name), monotonic)
    return out
