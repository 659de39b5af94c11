"""The one scheme registry: which broker package streams and polls a broker URL.

A broker package (``brokers/redis/``, ``brokers/rabbitmq/``, ``brokers/kombu/``) exposes two functions,
``event_stream(settings, ingest, status) -> EventStream`` and ``pollers(settings, queues_seen, monotonic)
-> list[Poller]``. Adding a broker is one package and one line in ``BROKERS``. Packages are imported only
when chosen, so a Redis deployment never imports pika. The scheme of the first URL of a ``;`` failover
list decides; a scheme not listed goes to the ``kombu`` fallback (Celery's EventReceiver, no poller).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import ModuleType
from urllib.parse import urlsplit

from exporter.brokers.settings import StreamSettings
from exporter.brokers.supervisor import EventStream
from exporter.events.ingest import Ingest, StreamStatus

FALLBACK = "kombu"
# broker package -> the URL schemes kombu gives that transport
BROKERS: Mapping[str, tuple[str, ...]] = {
    "redis": ("redis", "rediss", "redis+socket", "socket", "sentinel"),
    "rabbitmq": ("amqp", "amqps", "pyamqp", "librabbitmq"),
}
SCHEMES: Mapping[str, str] = {scheme: name for name, schemes in BROKERS.items() for scheme in schemes}


def scheme_of(url: str) -> str:
    return urlsplit(url.split(";", 1)[0].strip()).scheme.lower()


def broker_for(url: str) -> str:
    """The name of the broker package for ``url`` (``redis``, ``rabbitmq`` or the ``kombu`` fallback)."""
    return SCHEMES.get(scheme_of(url), FALLBACK)


def package_for(url: str) -> ModuleType:
    return importlib.import_module(f"exporter.brokers.{broker_for(url)}")


def build_stream(settings: StreamSettings, ingest: Ingest, status: StreamStatus) -> EventStream:
    """The event stream of the broker package for ``settings.broker_url``."""
    stream: EventStream = package_for(settings.broker_url).event_stream(settings, ingest, status)
    return stream
