"""The stall signals' bookkeeping: tasks waiting in each queue and tasks running, kept apart from the task
table so that they outlive its LRU, and the orphan map that keeps the labels of tracked tasks the table
evicted.

``Stalls`` owns one ``WaitingTasks``, one ``RunningTasks`` and the orphans; the core's handlers feed the
trackers' dicts directly for the common cases and call ``Stalls`` for the rest. All are pure (time is
passed in) and bounded:

* ``WaitingTasks`` holds a task from its task-sent event until it starts or ends, keyed by uuid, so it
  survives the task table's LRU eviction under a backlog. At most ``cap`` tasks (``max_tracked_tasks``)
  are held in full; past it, one task in ``SAMPLE_STRIDE`` is sampled (up to ``cap // 4`` of them) and
  the rest are only counted (``untracked``). Consumption is roughly first-in first-out, so the tasks
  held are the oldest and the reported age stays exact while any of them waits; after that it is the
  age of the oldest sampled task still waiting, a lower bound at most ``SAMPLE_STRIDE`` sends behind.
  A task held longer than ``max_age`` is dropped (its task-started was lost).
* ``RunningTasks`` holds a started task until its attempt ends or its worker is lost, independent of
  the task table, so one task running for hours while a million others flow past is still reported.
  Capped the same way.
* The trackers hold one float per task; labels (and the worker) are read from the task table, or, for a
  record the table evicted, from the orphan map. The per-queue and per-name minima are computed when a
  snapshot is taken (one pass over at most ``cap`` entries), not on the event path, which pays a dict
  store and a dict pop per task and tracker.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from itertools import chain
from typing import Any

from exporter.labels import label_value
from exporter.state.entries import HELD, WORKER, K, TaskEntry

# Past WaitingTasks' cap, one sent task in this many is still tracked (as a sample).
SAMPLE_STRIDE = 64
# How often (exporter seconds) the waiting tracker is swept for tasks whose task-started was lost.
EXPIRE_EVERY = 60.0
_Key = tuple[str, str]
# How a tracker finds a task's label key: from the task table, or from the orphan map when the table
# evicted the record (Stalls.key_of).
KeyOf = Callable[[str], "_Key | None"]


class WaitingTasks:
    """Tasks sent and not yet started: uuid -> enqueued timestamp (and retries, only when not 0).

    One float per task: its labels are read from the task table when a snapshot is taken, not copied
    here, so tracking costs the event path one dict store and one pop per task."""

    __slots__ = ("cap", "expired", "max_age", "retries", "sampled", "ts", "untracked")

    def __init__(self, cap: int, max_age: float) -> None:
        self.cap = cap
        self.max_age = max_age
        self.ts: dict[str, float] = {}
        self.retries: dict[str, int] = {}
        self.sampled: dict[str, float] = {}  # past the cap: one task in SAMPLE_STRIDE
        self.untracked = 0
        self.expired = 0

    def add(self, uuid: str, enqueued: float, retries: int) -> None:
        if uuid not in self.ts and len(self.ts) >= self.cap:
            sampled = self.sampled
            if uuid not in sampled:
                self.untracked += 1
                if self.untracked % SAMPLE_STRIDE or len(sampled) >= self.cap // 4:
                    return
            sampled[uuid] = enqueued
        else:
            self.ts[uuid] = enqueued
        if retries:
            self.retries[uuid] = retries
        elif self.retries:
            self.retries.pop(uuid, None)

    def started(self, uuid: str, attempt: int | None) -> bool:
        """The task's ``attempt`` (its retries number; None when unknown) started: it stops waiting,
        unless what waits is a later attempt whose task-sent overtook this task-started. Returns whether
        it stopped waiting."""
        if attempt is not None and self.retries.get(uuid, 0) > attempt:
            return False
        if self.ts.pop(uuid, None) is None and (not self.sampled or self.sampled.pop(uuid, None) is None):
            return False
        if self.retries:
            self.retries.pop(uuid, None)
        return True

    def discard(self, uuid: str) -> None:
        if self.ts.pop(uuid, None) is None and self.sampled:
            self.sampled.pop(uuid, None)
        if self.retries:
            self.retries.pop(uuid, None)

    def __contains__(self, uuid: str) -> bool:
        return uuid in self.ts or uuid in self.sampled

    def expire(self, now: float) -> list[str]:
        """Drop tasks held past ``max_age`` (a task-started lost on the way); returns their uuids."""
        limit = now - self.max_age
        old = [u for u, t in chain(self.ts.items(), self.sampled.items()) if t < limit]
        for uuid in old:
            self.discard(uuid)
        self.expired += len(old)
        return old

    def oldest_by_queue(self, key_of: KeyOf) -> dict[str, float]:
        """queue -> enqueued timestamp of its oldest waiting task."""
        oldest: dict[str, float] = {}
        for uuid, enqueued in chain(self.ts.items(), self.sampled.items()):
            key = key_of(uuid)
            if key is None:
                continue
            queue = key[1]
            known = oldest.get(queue)
            if known is None or enqueued < known:
                oldest[queue] = enqueued
        return oldest


class RunningTasks:
    """Tasks started and not finished: uuid -> start of the oldest open attempt (labels and worker are
    read from the task table, as in WaitingTasks)."""

    __slots__ = ("cap", "starts", "untracked")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.starts: dict[str, float] = {}
        self.untracked = 0

    def start(self, uuid: str, ts: float) -> None:
        known = self.starts.get(uuid)
        if known is None:
            if len(self.starts) >= self.cap:
                self.untracked += 1
                return
        elif known <= ts:  # an overtaken earlier start stays the oldest
            return
        self.starts[uuid] = ts

    def next_attempt(self, uuid: str, start: float | None) -> None:
        """The oldest open attempt ended; ``start`` is the next one's (None: none is open)."""
        if start is None:
            self.starts.pop(uuid, None)
        elif uuid in self.starts:
            self.starts[uuid] = start

    def oldest_by_key(self, key_of: KeyOf) -> dict[_Key, float]:
        oldest: dict[_Key, float] = {}
        for uuid, start in self.starts.items():
            key = key_of(uuid)
            if key is None:
                continue
            known = oldest.get(key)
            if known is None or start < known:
                oldest[key] = start
        return oldest


class Stalls:
    """The two trackers and the orphan map: uuid -> (key, worker) of tracked tasks whose record the task
    table evicted, so their ages are still served under their labels."""

    def __init__(self, cap: int, max_age: float, tasks: Mapping[str, TaskEntry]) -> None:
        self.waiting = WaitingTasks(cap, max_age)
        self.running = RunningTasks(cap)
        self.orphans: dict[str, tuple[_Key, str | None]] = {}
        self._tasks = tasks
        self._expired_at = 0.0

    def unrecorded(self, uuid: str, ev: Mapping[str, Any], ts: float) -> None:
        """An event of a task out of the task table (evicted while it waited under a backlog, or already
        finished): the trackers, which outlive the table, still follow it."""
        etype = ev["type"]
        if etype == "task-started":
            orphan = self.orphans.get(uuid)
            if orphan is not None and self.waiting.started(uuid, None):
                host = ev.get("hostname")
                self.orphans[uuid] = (orphan[0], label_value(host) if host.__class__ is str else None)
                self.running.start(uuid, ts)
        elif etype == "task-retried":
            self.unrun(uuid)
        elif etype != "task-rejected" or ev.get("requeue") is False:
            self.waiting.discard(uuid)
            self.running.starts.pop(uuid, None)
            self.orphans.pop(uuid, None)

    def unrun(self, uuid: str) -> None:
        """The task's attempt stopped running (retried, or its worker was lost)."""
        self.running.starts.pop(uuid, None)
        if self.orphans and uuid not in self.waiting:
            self.orphans.pop(uuid, None)

    def orphan(self, uuid: str, entry: TaskEntry) -> None:
        """The task table evicted ``entry``: if a tracker still follows the task, keep its labels."""
        if entry[HELD] is None and (uuid in self.running.starts or uuid in self.waiting):
            self.orphans[uuid] = (entry[K], entry[WORKER])

    def orphans_of(self, hostname: str) -> list[str]:
        return [u for u, (_, host) in self.orphans.items() if host == hostname]

    def key_of(self, uuid: str) -> _Key | None:
        rec = self._tasks.get(uuid)
        if rec is not None and rec[HELD] is None:
            return rec[K]
        orphan = self.orphans.get(uuid)
        return orphan[0] if orphan is not None else None

    def expire(self, now: float) -> None:
        """Drop waiting tasks whose task-started was lost (a full pass, so once a minute, not per tick)."""
        if now - self._expired_at < EXPIRE_EVERY:
            return
        self._expired_at = now
        for uuid in self.waiting.expire(now):
            if uuid not in self.running.starts:
                self.orphans.pop(uuid, None)

    def oldest(self) -> tuple[dict[str, float], dict[_Key, float]]:
        """queue -> oldest waiting task's enqueue time, key -> oldest running task's start."""
        return self.waiting.oldest_by_queue(self.key_of), self.running.oldest_by_key(self.key_of)

    def untracked(self) -> dict[str, int]:
        return {"waiting_full": self.waiting.untracked, "waiting_expired": self.waiting.expired,
                "running_full": self.running.untracked}
