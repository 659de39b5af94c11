"""The stall signals' bookkeeping: tasks waiting in each queue, tasks running, the newest event of each
kind per task, and (for the Redis poller) how long the same message has sat at a queue's head.

``ClusterState`` owns one ``WaitingTasks`` and one ``RunningTasks`` and feeds them from its event handlers
(it keeps the newest timestamps itself, under its series cap); ``HeadTracker`` is fed by the Redis
poller. All are pure (time is passed in) and bounded:

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
  record the table evicted, from ClusterState's orphan map. The per-queue and per-name minima are
  computed when a snapshot is taken (one pass over at most ``cap`` entries), not on the event path,
  which pays a dict store and a dict pop per task and tracker.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from itertools import chain
from typing import Any

# Task event states whose newest timestamp is served (celery_task_last_event_timestamp_seconds).
STAMPED_STATES = ("sent", "started", "succeeded", "failed", "retried")
# Past WaitingTasks' cap, one sent task in this many is still tracked (as a sample).
SAMPLE_STRIDE = 64
_Key = tuple[str, str]


# How a tracker finds a task's label key (and worker): from the task table, or from the orphan map when
# the table evicted the record (ClusterState._stall_key).
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


class HeadTracker:
    """Since when the same message has sat at each end of a queue that is consumed next.

    Fed by the Redis poller with ``{queue: {sub-list: task id}}`` once per poll (kombu LPUSHes and
    BRPOPs, so a list's oldest message is at its tail). A message that stays at the tail for ``t``
    seconds has waited at least ``t``: the lower bound served when producers send no task-sent events.
    """

    __slots__ = ("_seen", "limit")

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._seen: dict[tuple[str, int], tuple[str, float]] = {}

    def update(self, heads: Mapping[str, Mapping[int, str]], now: float) -> dict[str, tuple[str, float]]:
        """queue -> (task id, first seen at the head) of its longest-standing head message."""
        seen: dict[tuple[str, int], tuple[str, float]] = {}
        out: dict[str, tuple[str, float]] = {}
        for queue, by_step in heads.items():
            for step, task_id in by_step.items():
                if len(seen) >= self.limit:
                    break
                slot = (queue, step)
                old = self._seen.get(slot)
                since = old[1] if old is not None and old[0] == task_id else now
                seen[slot] = (task_id, since)
                best = out.get(queue)
                if best is None or since < best[1]:
                    out[queue] = (task_id, since)
        self._seen = seen  # a queue drained (no head) forgets its entry
        return out


def message_task_id(raw: Any) -> str | None:
    """The task id in a kombu Redis message (its JSON ``headers.id``, protocol 2; ``properties
    .correlation_id`` otherwise), or None when the message is not one."""
    if raw is None:
        return None
    try:
        message = json.loads(raw)
    except (ValueError, TypeError, RecursionError):
        return None
    if not isinstance(message, dict):
        return None
    for part, field in (("headers", "id"), ("properties", "correlation_id")):
        section = message.get(part)
        if isinstance(section, dict):
            value = section.get(field)
            if isinstance(value, str) and value and len(value) <= 255:
                return value
    return None


def queues_union(*groups: Iterable[str]) -> list[str]:
    names: dict[str, None] = {}
    for group in groups:
        names.update(dict.fromkeys(group))
    return list(names)
