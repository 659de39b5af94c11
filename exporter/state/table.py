"""The task table: task uuid -> entry (the layout is in ``entries``), least recently touched first, an
LRU bounded by ``max_tracked_tasks`` and ``task_max_age``. A task leaves it when it ends (``finish``: for
the finished-task memory) or when it is evicted (``bound``, ``evict_aged``: its open attempts stop
counting as active, a placeholder's held events count as ``unknown``, and the stall trackers keep the
labels of a task they still follow).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from exporter.state.entries import HELD, STARTS, TOUCHED, WORKER, FinishedTasks, K, TaskEntry
from exporter.state.settings import StateSettings
from exporter.state.stalls import Stalls
from exporter.state.workers import Workers

_Key = tuple[str, str]


class TaskTable:
    """The entries, their eviction, and a task's way out to the finished memory."""

    def __init__(self, s: StateSettings, tasks: OrderedDict[str, TaskEntry], finished: FinishedTasks,
                 active: dict[_Key, int], workers: Workers, stalls: Stalls) -> None:
        self.tasks = tasks  # empty: the rooms that read it were handed it first
        self.evicted: dict[str, int] = {"capacity": 0, "age": 0}
        # No entry can age out before this exporter time: new tasks skip the age eviction until then.
        self.age_check = -math.inf
        self.max_tracked, self._max_age = s.max_tracked_tasks, s.task_max_age
        self._finished, self._active = finished, active
        self._running, self._unrun = workers.running, workers.unrun
        self._stalls = stalls
        self._waiting, self._wait_ts = stalls.waiting, stalls.waiting.ts
        self._run_starts, self._orphans = stalls.running.starts, stalls.orphans
        # What an evicted placeholder's held events become (held.Held.count_unnamed, wired by the core).
        self.count_unnamed: Callable[[str, tuple[Any, ...], float], None] = lambda uuid, held, now: None

    def new(self, uuid: str, key: _Key | None, now: float, held: tuple[Any, ...] | None = None) -> TaskEntry:
        entry = self.tasks[uuid] = (key, (), (), 0, None, now, held)
        self.bound(now)
        return entry

    def bound(self, now: float) -> None:
        """After an insertion: the oldest entry goes past ``max_tracked_tasks``; aged-out ones are looked
        for only once the oldest entry can have aged out (``age_check``), not on every new task."""
        tasks = self.tasks
        if len(tasks) > self.max_tracked:
            old_uuid, old = tasks.popitem(last=False)
            self._forget(old_uuid, old, now)
            self.evicted["capacity"] += 1
        elif now >= self.age_check:
            self.evict_aged(now)

    def evict_aged(self, now: float) -> None:
        tasks = self.tasks
        limit = now - self._max_age
        while tasks:
            uuid = next(iter(tasks))
            oldest = tasks[uuid]
            if oldest[TOUCHED] >= limit:
                # Entries are touched in table order, so none ages out before this one does.
                self.age_check = oldest[TOUCHED] + self._max_age
                return
            del tasks[uuid]
            self._forget(uuid, oldest, now)
            self.evicted["age"] += 1
        self.age_check = now + self._max_age

    def _forget(self, uuid: str, entry: TaskEntry, now: float) -> None:
        if entry[STARTS]:
            self._active[entry[K]] -= len(entry[STARTS])
        if entry[WORKER] is not None:
            self._unrun(entry[WORKER], uuid)
        if entry[HELD] is not None:  # never named: counted as unknown now
            self.count_unnamed(uuid, entry[HELD], now)
        self._stalls.orphan(uuid, entry)

    def finish(self, uuid: str, rec: TaskEntry, key: _Key, bit: int, ts: float) -> None:
        """The task ended: it leaves the table (and its worker's running set) for the finished memory,
        which keeps any older attempt still open, for that attempt's late task-retried."""
        starts = rec[STARTS]
        if starts:
            self._active[key] -= len(starts)
            worker = rec[WORKER]
            if worker is not None:
                running = self._running.get(worker)
                if running is not None:
                    running.pop(uuid, None)
                    if not running:
                        del self._running[worker]
        del self.tasks[uuid]
        if uuid in self._wait_ts or self._waiting.sampled:
            self._waiting.discard(uuid)
        self._run_starts.pop(uuid, None)
        if self._orphans:
            self._orphans.pop(uuid, None)
        self._finished.remember(uuid, key, bit, starts, ts)
