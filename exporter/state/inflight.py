"""What the state does with an in-flight inventory (``exporter.inflight.Inventory``: the tasks the
workers said they hold, asked at start and after each stream reconnect) and with a reconnect itself.

* ``adopt``: each task is tracked as if its events had been seen, under its own name and queue: a
  running one counts in ``celery_tasks_active`` from its real start, tied to its worker (so a lost
  worker loses it), a prefetched one waits in its queue. What the stream taught the state meanwhile
  wins: a task already finished is not brought back, one already started keeps its start, and nameless
  events held for the task are replayed under the name the inventory gives. No event counter moves (the
  inventory is not an event). A ``task-started`` that comes after (Celery buffers task events) replaces
  the adopted start instead of opening a second attempt: ``adopted`` remembers which start was the
  inventory's, and ``core._task_started`` reads it on its rare path (a task already started).
* ``resumed``: the events of an outage are lost, so a task waiting when the stream dropped may have
  started meanwhile and would count as waiting until ``task_max_age``. Every task then waiting becomes a
  suspect; the next inventory confirms those a worker still holds and the rest are dropped from the
  waiting tracker (all of them at once when no inventory is coming).
"""

from __future__ import annotations

from itertools import chain

from exporter.inflight import ACTIVE, HeldTask, Inventory
from exporter.labels import MAX_LABEL_BYTES
from exporter.state.core import Core
from exporter.state.entries import ATTEMPTS, HELD, RETRIES, STARTS, K, TaskEntry

_Key = tuple[str, str]


class Inflight:
    """Adoption of inventories and the suspects of a reconnect (see the module docstring)."""

    def __init__(self, core: Core) -> None:
        self._core = core
        # uuid -> the start the inventory gave it, while that is still the task's open attempt.
        self.adopted = core._adopted
        # uuid -> enqueued time of the tasks waiting when the stream reconnected, until an inventory.
        self.suspects: dict[str, float] = {}

    def resumed(self, expect_inventory: bool) -> None:
        waiting = self._core._waiting
        self.suspects.update(chain(waiting.ts.items(), waiting.sampled.items()))
        if not expect_inventory:
            self._drop_suspects(set())

    def adopt(self, inventory: Inventory, now: float) -> None:
        confirmed: set[str] = set()
        for task in inventory.tasks:
            uuid = self._core._uuid(task.uuid)
            if uuid is not None and self._adopt_one(uuid, task, now):
                confirmed.add(uuid)
        self._drop_suspects(confirmed)
        tasks = self._core._tasks
        cap = self._core.settings.max_tracked_tasks
        for uuid, start in list(self.adopted.items()):  # a few hundred at most: inventories are rare
            rec = tasks.get(uuid)
            if rec is None or not rec[STARTS] or rec[STARTS][-1] != start or len(self.adopted) > cap:
                del self.adopted[uuid]

    def _adopt_one(self, uuid: str, task: HeldTask, now: float) -> bool:
        """Track one task; True when it is confirmed waiting."""
        core = self._core
        if core._finished.get(uuid) is not None:
            return False  # the stream saw it end before the answer came
        rec = core._tasks.get(uuid)
        held: tuple[object, ...] = ()
        if rec is None or rec[HELD] is not None:
            key = core._key_for(task.name, task.queue)
            if rec is None:
                rec = core._new_record(uuid, key, now)
            else:
                held = rec[HELD]
                rec = core._adopt(uuid, held, key, now)
                core._tasks[uuid] = rec
        if rec[STARTS]:
            confirmed = False  # the stream saw it start: its own start stands
        elif task.state == ACTIVE:
            self._start(uuid, rec, task, now)
            confirmed = False
        else:
            if uuid not in core._waiting:
                core._waiting.add(uuid, task.since, rec[RETRIES])
            confirmed = True
        if held:
            core._replay(held, now)
        return confirmed

    def _start(self, uuid: str, rec: TaskEntry, task: HeldTask, now: float) -> None:
        core = self._core
        key: _Key = rec[K]
        start = task.since
        core._waiting.discard(uuid)
        core.active[key] += 1
        host = task.worker if len(task.worker) <= MAX_LABEL_BYTES else None
        if host is not None:
            core._running.setdefault(host, {})[uuid] = start
        core._run_ages.start(uuid, start)
        core._tasks[uuid] = (key, rec[ATTEMPTS], (start,), rec[RETRIES], host, now, None)
        self.adopted[uuid] = start

    def _drop_suspects(self, confirmed: set[str]) -> None:
        core = self._core
        waiting, stalls = core._waiting, core._stalls
        for uuid, enqueued in self.suspects.items():
            if uuid in confirmed:
                continue
            # Untouched since the reconnect (a retry's new task-sent would have changed it): dropped.
            if waiting.ts.get(uuid) == enqueued or waiting.sampled.get(uuid) == enqueued:
                waiting.discard(uuid)
                if uuid not in core._run_starts:
                    stalls.orphans.pop(uuid, None)
        self.suspects.clear()


