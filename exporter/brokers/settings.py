"""The settings slices the broker layer receives, and the error it raises for a bad one.

``exporter.config`` builds ``StreamSettings``, ``PollSettings`` and ``InventorySettings`` from the
validated ``Config`` (which owns every default); nothing under ``brokers/`` or ``events/`` reads
``Config`` itself, so these fields have no defaults here. ``BrokerSettingsError`` is what a builder
raises when the settings cannot work with the broker (a ``sentinel://`` URL without ``master_name``);
``__main__`` reports it like a configuration error, with exit status 2.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class BrokerSettingsError(ValueError):
    """Settings the broker cannot be used with; names the option, never shows its value."""

    def __init__(self, key: str, message: str) -> None:
        self.key, self.message = key, message
        super().__init__(f"invalid configuration: {key} (from configuration): {message}")


@dataclass(frozen=True)
class StreamSettings:
    """What an event stream needs: the broker, its transport options, and our event queue (AMQP, kombu)."""

    broker_url: str
    transport_options: Mapping[str, Any]
    queue_prefix: str
    queue_name: str | None  # a stable name (kept on a clean stop), or None for a per-process one
    queue_ttl: float
    queue_expires: float
    queue_max_length: int
    queue_max_bytes: int
    prefetch: int
    # RabbitMQ: "durable" (the default, see rabbitmq/stream.py) or "exclusive": an exclusive, auto-delete
    # queue gone with its connection, and Celery's exchange only declared passively (doctor's: it
    # changes nothing on the broker).
    queue_mode: str


@dataclass(frozen=True)
class PollSettings:
    """What the pollers need: the broker, which queues to report and how, and the poll budget."""

    broker_url: str
    transport_options: Mapping[str, Any]
    management_url: str | None
    live_queues: tuple[str, ...]
    interval: float
    timeout: float
    default_queue: str
    queues: tuple[str, ...]
    retry_queues: tuple[str, ...]
    dead_letter_queues: tuple[str, ...]
    exclude_queues: tuple[str, ...]
    event_queue_prefix: str
    max_queues: int
    max_scan_keys: int
    dlq_timestamp_field: str
    dead_letter_redis_urls: tuple[str, ...]  # more Redis databases searched for DLQs only


@dataclass(frozen=True)
class InventorySettings:
    """The inventory's slice: the broker as the event stream reaches it, and the deadline (0: off)."""

    broker_url: str
    transport_options: Mapping[str, Any]
    timeout: float
