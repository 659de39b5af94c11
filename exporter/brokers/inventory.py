"""The in-flight inventory: what tasks the workers hold when the exporter starts (or its event stream
comes back), asked with Celery's own remote control (``inspect active``, ``reserved``, ``scheduled``).

Without it, a task already received or running when the exporter starts is invisible until it ends,
and its end counts under ``task_name="unknown"`` (task-succeeded carries no name). With it, the tasks
are tracked at once, under their own names, queues and workers, with their real start times.

Two halves, kept apart as everywhere under ``brokers/``:

* ``parse_replies`` (pure) turns the replies, exactly as they arrive (a list of ``{node: [request
  info, ...]}`` mappings), into ``HeldTask`` values. Anything a worker (or anyone who can publish on the
  reply exchange) sends is validated: ids, names and nodes are strings of sane length, times finite and
  not in the future; the rest is skipped. A request ``active`` lists without ``time_start`` (not yet
  acknowledged by the pool) is dated ``asked_at``, a lower bound of its running age.
* ``InventoryRunner`` does the I/O, in its own thread and never on the scrape path: on ``request()``
  (the stream calls it on every connect) it builds a throwaway Celery app on the broker URL and transport
  options the stream uses, with JSON as the only serializer both ways (a broadcast never pickles, and a
  pickled reply is refused), broadcasts ``active`` under the deadline, then ``reserved`` and
  ``scheduled`` to the workers that answered only (so those two return as soon as each has replied). The
  reply queue is Celery's own (auto-deleted on AMQP, deleted after the replies on Redis) and the app is
  closed afterwards, so nothing is left on the broker. No answer (remote control disabled, no workers)
  costs one deadline and one log line. The result goes to ``deliver`` (``Ingest.offer_inventory``),
  which hands it to the event loop, the state's one writer.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import structlog

from exporter.brokers.settings import InventorySettings
from exporter.inflight import ACTIVE, WAITING, HeldTask, Inventory
from exporter.labels import parse_iso
from exporter.secrets import describe_error, url_secrets

log = structlog.get_logger("exporter.inventory")

MAX_ID = 255  # Celery task ids are uuids; anything longer is not one
MAX_TASKS = 100_000  # one inventory never adopts more (the task table's default size)
# Seconds a worker's clock may run ahead of ours in a time_start before the value is not believed.
FUTURE_SKEW = 60.0


def _text(value: Any, limit: int) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= limit else None


def _time(value: Any, asked_at: float) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:  # an integer past float range
            return None
        if math.isfinite(seconds) and 0 < seconds <= asked_at + FUTURE_SKEW:
            return min(seconds, asked_at)
    return None


def by_node(replies: Any) -> dict[str, list[Any]]:
    """Celery's ``flatten_reply``, made safe: ``[{node: reply}, ...]`` -> ``{node: [items]}``; a reply
    that is not such a mapping, or whose value is not a list, is skipped."""
    out: dict[str, list[Any]] = {}
    for item in replies if isinstance(replies, list) else ():
        if not isinstance(item, Mapping):
            continue
        for node, value in item.items():
            name = _text(node, MAX_ID)
            if name is not None and isinstance(value, list):
                out.setdefault(name, []).extend(value)
    return out


def _held(info: Any, node: str, state: str, since: float) -> HeldTask | None:
    if not isinstance(info, Mapping):
        return None
    uuid, name = _text(info.get("id"), MAX_ID), _text(info.get("name"), 1024)
    if uuid is None or name is None:
        return None
    delivery = info.get("delivery_info")
    queue = None
    if isinstance(delivery, Mapping):
        queue = _text(delivery.get("routing_key"), 1024) or _text(delivery.get("exchange"), 1024)
    worker = _text(info.get("hostname"), MAX_ID) or node
    return HeldTask(uuid, name, queue, worker, state, since)


def parse_replies(active: Any, reserved: Any, scheduled: Any, asked_at: float,
                  limit: int = MAX_TASKS) -> Inventory:
    """Pure: the replies to the three inspect commands as they arrived -> an ``Inventory``. A task
    listed twice (it started between two replies) is kept once, running first."""
    nodes = by_node(active)
    tasks: dict[str, HeldTask] = {}

    def add(found: Iterable[HeldTask | None]) -> None:
        for task in found:
            if task is not None and task.uuid not in tasks and len(tasks) < limit:
                tasks[task.uuid] = task

    for node, items in nodes.items():
        add(_held(i, node, ACTIVE, (_time(i.get("time_start"), asked_at) if isinstance(i, Mapping)
                                    else None) or asked_at) for i in items)
    for node, items in by_node(scheduled).items():
        for entry in items:
            if not isinstance(entry, Mapping):
                continue
            eta = parse_iso(entry.get("eta")) if isinstance(entry.get("eta"), str) else None
            since = eta if eta is not None and math.isfinite(eta) else asked_at
            add((_held(entry.get("request"), node, WAITING, since),))
    for node, items in by_node(reserved).items():
        add(_held(i, node, WAITING, asked_at) for i in items)
    return Inventory(asked_at, tuple(nodes), tuple(tasks.values()))


class InventoryRunner:
    """Runs an inventory in its own thread whenever ``request()`` is called; see the module docstring."""

    def __init__(self, settings: InventorySettings, deliver: Callable[[Inventory], None],
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.deliver = deliver
        self.clock = clock
        self._wanted = threading.Event()
        self.secrets = url_secrets(settings.broker_url)

    def request(self) -> None:
        """Ask for an inventory (at most one runs at a time; requests made meanwhile make one more)."""
        self._wanted.set()

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            if self._wanted.wait(0.5):
                self._wanted.clear()
                if not stop.is_set():
                    self.deliver(self.take())

    def take(self) -> Inventory:
        """One inventory, never raising: broker trouble is logged (once) and reported as ``error``."""
        asked_at = self.clock()
        timeout = self.settings.timeout
        try:
            active, reserved, scheduled = self._ask(timeout)
        except Exception as exc:  # any broker or driver error: this inventory is skipped, not retried
            error = describe_error(exc, self.secrets)
            log.warning("in-flight inventory failed", error=error)
            return Inventory(asked_at, error=error)
        found = parse_replies(active, reserved, scheduled, asked_at)
        if not found.answered:
            log.info("no worker answered the in-flight inventory (remote control disabled, or no worker "
                     "up); tasks already running are seen from their next event", timeout=timeout)
        else:
            log.info("in-flight inventory taken", workers=len(found.answered), tasks=len(found.tasks),
                     seconds=round(self.clock() - asked_at, 2))
        return found

    def _ask(self, timeout: float) -> tuple[Any, Any, Any]:
        from celery import Celery  # only when an inventory runs: start-up does not pay for it

        app = Celery("celery-exporter-inventory", broker=self.settings.broker_url, set_as_current=False)
        app.conf.update(
            broker_transport_options=dict(self.settings.transport_options),
            broker_connection_retry_on_startup=False,
            broker_connection_timeout=timeout,
            broker_connection_max_retries=1,
            task_serializer="json",  # the broadcast's serializer
            accept_content=["json"],  # and what replies may be: a pickled one is refused by kombu
            result_accept_content=["json"],
        )
        try:
            control = app.control
            active = control.broadcast("active", reply=True, timeout=timeout)
            nodes = list(by_node(active))
            if not nodes:
                return active, [], []
            # Only the workers that answered, each once: these return as soon as every one has replied.
            reserved = control.broadcast("reserved", reply=True, timeout=timeout, destination=nodes)
            scheduled = control.broadcast("scheduled", reply=True, timeout=timeout, destination=nodes)
            return active, reserved, scheduled
        finally:
            app.close()
