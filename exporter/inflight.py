"""Leaf: the values an in-flight inventory hands the state (``HeldTask``, ``Inventory``).

``exporter.brokers.inventory`` asks the workers and builds them; ``ClusterState`` adopts them through
``Ingest``. They live here, importing nothing from ``exporter``, so the state needs no broker module
and the broker layer nothing from the state.
"""

from __future__ import annotations

from dataclasses import dataclass

ACTIVE, WAITING = "active", "waiting"


@dataclass(frozen=True, slots=True)
class HeldTask:
    """One task a worker holds: running (``ACTIVE``, ``since`` its start) or prefetched and not started
    (``WAITING``: reserved, or scheduled with an ETA; ``since`` its ETA, else since the inventory)."""

    uuid: str
    name: str
    queue: str | None  # delivery_info.routing_key (else exchange); None: the state routes by name
    worker: str
    state: str
    since: float


@dataclass(frozen=True)
class Inventory:
    """One inventory's outcome: the workers that answered and what they hold (nothing when none did,
    ``error`` when the broker could not be asked)."""

    asked_at: float
    answered: tuple[str, ...] = ()
    tasks: tuple[HeldTask, ...] = ()
    error: str = ""
