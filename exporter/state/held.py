"""Nameless events held for their task's name. Only task-sent and task-received carry a task name; the
other events of a uuid the state holds no record of wait in a placeholder entry of the task table,
counted nowhere, until a named event comes (they are then replayed under its name: ``adopt``) or
``HOLD_SECONDS`` pass without one (they are then counted under ``task_name="unknown"``: ``release``).
Re-keying a placeholder never moves a counter backwards, since nothing was counted under it.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from exporter.labels import UNKNOWN_TASK, exception_class
from exporter.state.entries import HELD, FinishedTasks, TaskEntry
from exporter.state.settings import HOLD_SECONDS, MAX_HELD_EVENTS

# What a held event keeps of its event (tracebacks, args and results are not needed, nor stored).
_HELD_FIELDS = ("type", "timestamp", "hostname", "runtime", "terminated", "expired", "requeue")
_Key = tuple[str, str]


class Held:
    """The placeholders' clock (uuid -> when its first event was held, oldest first) and what happens
    when a name comes, or does not."""

    def __init__(self, tasks: OrderedDict[str, TaskEntry], finished: FinishedTasks,
                 key_for: Callable[[Any, Any], _Key],
                 new_record: Callable[[str, Any, float, tuple[Any, ...] | None], TaskEntry],
                 replay: Callable[[tuple[Any, ...], float], None],
                 count_starts: Callable[[Any, int], None]) -> None:
        self.holding: dict[str, float] = {}
        self.unnamed = 0  # tasks counted under "unknown" (celery_exporter_unknown_tasks_total)
        self._tasks = tasks
        self._finished = finished
        self._key_for = key_for
        self._new_record = new_record
        self._replay = replay
        # A held task-started counts for its worker's missed-event check when it arrives (it did arrive),
        # and is handed back before its replay, which counts it again.
        self._count_starts = count_starts

    def hold(self, uuid: str, rec: TaskEntry | None, ev: Mapping[str, Any], ts: float, now: float) -> None:
        """Keep a nameless event of a task not yet seen named, counted nowhere. When the task ends (or
        holds too many) without a name, what it holds is counted under ``unknown``."""
        item: dict[str, Any] = {k: ev[k] for k in _HELD_FIELDS if k in ev}
        item["uuid"] = uuid
        item["timestamp"] = ts
        if item["type"] == "task-started":
            self._count_starts(item.get("hostname"), 1)
        if "exception" in ev:  # reduced now: the traceback it may need is not kept
            item["exception"] = exception_class(ev.get("exception"), ev.get("traceback"))
        if rec is None:
            held: tuple[Any, ...] = (item,)
            self._new_record(uuid, None, now, held)
            self.holding[uuid] = now
        else:
            held = (*rec[HELD], item)
            self._tasks[uuid] = (None, (), (), 0, None, now, held)
            self._tasks.move_to_end(uuid)
        if len(held) >= MAX_HELD_EVENTS:
            del self._tasks[uuid]
            self.count_unnamed(uuid, held, now)

    def adopt(self, uuid: str, held: tuple[Any, ...], key: _Key, now: float) -> TaskEntry:
        """A named event for a placeholder: its new entry under ``key`` (``held`` is then replayed)."""
        self.holding.pop(uuid, None)
        if key[0] == UNKNOWN_TASK:
            self.unnamed += 1
        self._hand_back(held)
        return (key, (), (), 0, None, now, None)

    def count_unnamed(self, uuid: str, held: tuple[Any, ...], now: float) -> None:
        """The task's name never came (within HOLD_SECONDS, or before it held too many events, or before
        it was evicted): what it held counts under ``unknown``, through the finished-task memory, so its
        later events count there too and nothing is counted twice."""
        self.holding.pop(uuid, None)
        self.unnamed += 1
        self._finished.remember(uuid, self._key_for(None, None), 0, (), math.inf)
        self._hand_back(held)
        self._replay(held, now)

    def _hand_back(self, held: tuple[Any, ...]) -> None:
        for item in held:
            if item["type"] == "task-started":
                self._count_starts(item.get("hostname"), -1)

    def release(self, now: float) -> None:
        """Count the placeholders that waited HOLD_SECONDS for a name."""
        holding = self.holding
        while holding:
            uuid = next(iter(holding))
            if now - holding[uuid] < HOLD_SECONDS:
                break
            del holding[uuid]
            rec = self._tasks.get(uuid)
            if rec is not None and rec[HELD] is not None:
                del self._tasks[uuid]
                self.count_unnamed(uuid, rec[HELD], now)
