"""``ClusterState``, the public face of the state: the lock, periodic housekeeping (``tick``), the
snapshot scrapes copy, and what the pollers and tests may read. The event path is in ``core``.

The event loop is the only writer. It applies each batch of events while holding ``lock``; scrapes take
the same lock once to copy a ``Snapshot`` (a few dict copies, bounded by the cardinality caps,
independent of the event rate) and build metric families from the copy outside it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from exporter.inflight import Inventory
from exporter.state.attempts import NAMELESS_HANDLERS, after_end
from exporter.state.core import Core
from exporter.state.inflight import Inflight
from exporter.state.settings import StateSettings
from exporter.state.snapshot import Sizes, Snapshot


class ClusterState(Core):
    """Tasks, workers and per-task metric accumulators, built from decoded Celery events."""

    def __init__(self, settings: StateSettings, clock: Callable[[], float] = time.time) -> None:
        super().__init__(settings, clock, NAMELESS_HANDLERS, after_end)
        self._inflight = Inflight(self)
        self.clamped = 0  # events stamped too far ahead, applied with their arrival time (Ingest counts)
        self.lock = threading.Lock()

    def adopt_inflight(self, inventory: Inventory) -> None:
        """Track what the workers said they hold (``state/inflight.py``). Call with ``lock`` held."""
        self._inflight.adopt(inventory, self.clock())

    def stream_resumed(self, expect_inventory: bool) -> None:
        """The stream reconnected: waiting tasks are suspect until an inventory confirms them (dropped at
        once when none is coming). Call with ``lock`` held."""
        self._inflight.resumed(expect_inventory)

    def count_invalid(self, reason: str, n: int = 1) -> None:
        self.invalid_by_reason[reason] = self.invalid_by_reason.get(reason, 0) + n

    def tick(self) -> None:
        """Periodic housekeeping from the event loop: lose the tasks of workers silent past
        ``worker_timeout``, purge departed workers, count held events whose name never came, evict
        aged-out tasks, expire waiting tasks whose task-started was lost."""
        now = self.clock()
        self._workers.check(now)
        self._held.release(now)
        self._table.evict_aged(now)
        self._stalls.expire(now)

    @property
    def unnamed_tasks(self) -> int:
        return self._held.unnamed

    @property
    def workers_purged(self) -> int:
        return self._workers.purged

    def snapshot(self) -> Snapshot:
        """Copy what collectors need. Call with ``lock`` held (``take_snapshot`` does that)."""
        now = self.clock()
        series = self._series
        oldest_waiting, oldest_running = self._stalls.oldest()
        return Snapshot(
            now=now,
            counters={k: v[:] for k, v in series.counters.items()},
            failed=dict(series.failed),
            retried=dict(series.retried),
            durations={k: h.copy() for k, h in series.durations.items()},
            queue_wait={k: h.copy() for k, h in series.queue_wait.items()},
            active=dict(series.active),
            workers=self._workers.snapshot(now),
            events_by_type=dict(self.events_by_type),
            invalid_by_reason=dict(self.invalid_by_reason),
            overflow=dict(series.overflow),
            evicted=dict(self.evicted),
            tracked_tasks=len(self._tasks),
            last_event_ts=self.last_event_ts,
            workers_purged=self._workers.purged,
            duration_buckets=series.dbounds,
            queue_wait_buckets=series.wbounds,
            worker_timeout=self.settings.worker_timeout,
            queues_seen=tuple(series.queues),
            lost=dict(series.lost),
            revoked=dict(series.revoked),
            ignored=dict(self.ignored),
            unnamed_tasks=self._held.unnamed,
            oldest_waiting=oldest_waiting,
            oldest_running=oldest_running,
            last_events={k: v[:] for k, v in series.stamps.items()},
            stall_untracked=self._stalls.untracked(),
            events_missed=self._workers.missed,
            clamped=self.clamped,
        )

    def take_snapshot(self) -> Snapshot:
        with self.lock:
            return self.snapshot()

    def queues_seen(self) -> tuple[str, ...]:
        """Queue names seen in task-sent events (read by the broker pollers; a tuple copy is atomic)."""
        return tuple(self._series.queues)

    def sizes(self) -> Sizes:
        """How much the state holds (tests and benchmarks read this, not the private dicts)."""
        series = self._series
        return Sizes(tasks=tuple(self._tasks), finished=len(self._finished), task_names=len(series.names),
                     exception_types=len(series.exceptions), routes=len(series.route_cache),
                     series=series.count)
