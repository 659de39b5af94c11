"""ClusterState's hot path: ``apply_many`` and the dispatch table, the named events (task-sent and
task-received, which open and re-key a task's entry) and the routing of the nameless ones to their
handlers (``attempts``), to the placeholders (``held``) or to the finished-task memory.

Hot path, not for reuse (the model is Celery's ``_create_dispatcher``): every decoded event goes through
here, so the rooms' dicts and methods are bound to the instance once in ``__init__`` and the handlers
use them directly, the clock is read once per batch and handed down, and the common cases are written
out rather than delegated. What each event type does (counter, timestamp slot, done bit, attempt) is
read from ``rules.RULES``; everything that is not per event (housekeeping, snapshots) lives in
``cluster.ClusterState`` and the rooms.

Every delivery is counted under its task's own name, whatever order Celery's events arrive in:

* Only task-sent and task-received carry a name; the other events of a uuid never seen are held
  (``held``) until one comes.
* Finished tasks are remembered (``entries.FinishedTasks``), so a task-rejected after task-failed, a
  redelivered terminal event or a late task-retried keep the name; a repeated terminal event and a
  task-started after the end change nothing but ``celery_exporter_events_ignored_total``. A task-received
  after the end is a new delivery (a DLX or a requeue brought the message back) and opens a new record
  under the same name and queue.
* Each record keeps the start times of its open attempts (oldest first) and the worker that started it:
  a task-retried closes the oldest, a final event the newest, so a retry's task-started overtaking the
  previous attempt's task-retried erases nothing.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from exporter.labels import (
    MAX_UUID_BYTES,
    OVERFLOW_LABEL,
    UNKNOWN_TASK,
    label_value,
    parse_eta,
)
from exporter.state.entries import (
    ATTEMPTS,
    HELD,
    RETRIES,
    STARTS,
    WORKER,
    FinishedTasks,
    K,
    TaskEntry,
    attempt_index,
    replace_attempt,
    retries_of,
)
from exporter.state.held import Held
from exporter.state.rules import COUNTER, DONE_BITS, IGNORED_REASONS, NAMELESS, STAMP
from exporter.state.series import Series
from exporter.state.settings import MAX_EVENT_TYPES, StateSettings
from exporter.state.stalls import Stalls
from exporter.state.table import TaskTable
from exporter.state.workers import Workers

_Key = tuple[str, str]
_Ev = Mapping[str, Any]
_Rec = TaskEntry | None
# The rows the named handlers read, bound once.
_C_SENT, _S_SENT, _C_RECEIVED = COUNTER["task-sent"], STAMP["task-sent"], COUNTER["task-received"]
_C_STARTED, _S_STARTED = COUNTER["task-started"], STAMP["task-started"]


class Core:
    """The rooms, wired, and the event path through them (``cluster.ClusterState`` adds the rest)."""

    def __init__(self, settings: StateSettings, clock: Callable[[], float],
                 nameless: Mapping[str, Callable[..., None]], after_end: Callable[..., None]) -> None:
        self.settings = s = settings
        self.clock = clock
        self._finished = FinishedTasks(s.max_finished_tasks, DONE_BITS["task-succeeded"])
        self._series = series = Series(s)
        self._tasks = tasks = OrderedDict[str, TaskEntry]()  # the task table's (table.TaskTable)
        self._stalls = stalls = Stalls(s.max_tracked_tasks, s.task_max_age, tasks)
        self._workers = workers = Workers(s, tasks, series.active, series.lost, series.overflow, stalls)
        self._table = table = TaskTable(s, tasks, self._finished, series.active, workers, stalls)
        self._held = held = Held(tasks, self._finished, series.key_for, table.new, self._replay,
                                 workers.count_starts)
        self._adopted: dict[str, float] = {}  # uuid -> start an inventory gave it (state/inflight.py)
        table.count_unnamed = held.count_unnamed
        # The rooms' dicts and methods, bound once (a method call per event cost ~5%).
        self.counters, self.failed, self.retried = series.counters, series.failed, series.retried
        self.revoked = series.revoked
        self.active, self.lost, self.overflow = series.active, series.lost, series.overflow
        self.durations, self.queue_wait = series.durations, series.queue_wait
        self._stamps, self._route_cache, self._key_cache = series.stamps, series.route_cache, series.key_cache
        self._key_for, self._learn_route, self._stamp = series.key_for, series.learn_route, series.stamp
        self._count_by_label, self._exception = series.count_by_label, series.exception
        self._observe_duration, self._observe_wait = series.observe_duration, series.observe_wait
        self.workers, self._running, self._unrun = workers.workers, workers.running, workers.unrun
        self._waiting, self._run_ages = stalls.waiting, stalls.running
        self._wait_ts, self._run_starts = stalls.waiting.ts, stalls.running.starts
        self._orphans = stalls.orphans
        self._stall_cap = s.max_tracked_tasks
        self._hold, self._adopt = held.hold, held.adopt
        self._other_types: dict[str, int] = {}  # events_by_type of the types without a handler
        self.invalid_by_reason: dict[str, int] = {}
        self.ignored: dict[str, int] = dict.fromkeys(IGNORED_REASONS, 0)
        self.evicted = table.evicted
        self._new_record, self._bound, self._finish = table.new, table.bound, table.finish
        self._newest = -math.inf  # last_event_ts
        # The events that carry no name and what an event does once its task ended (``attempts``, given
        # by ClusterState: the hot handlers read this class's dicts, so this module cannot import them).
        self._nameless, self._after_end = nameless, after_end
        self._handlers: dict[str, Callable[[_Ev, float, float], None]] = {
            "task-sent": self._task_sent,
            "task-received": self._task_received,
            **dict.fromkeys(NAMELESS, self._task_event),
            "worker-online": workers.alive,
            "worker-heartbeat": workers.alive,
            "worker-offline": workers.offline,
        }
        # The dispatch table, one lookup an event: type -> [events seen, handler, nameless handler or None].
        self._dispatch: dict[str, list[Any]] = {
            etype: [0, handler, nameless.get(etype)] for etype, handler in self._handlers.items()
        }

    # ------------------------------------------------------------------ feeding
    def apply(self, event: Mapping[str, Any], now: float | None = None) -> None:
        """Apply one decoded event (``type`` and a finite ``timestamp`` already validated); ``now`` is the
        exporter's time, read from the clock when not given."""
        self.apply_many((event,), self.clock() if now is None else now)

    def apply_many(self, events: Iterable[Mapping[str, Any]], now: float) -> None:
        """Apply decoded events in order, all at exporter time ``now`` (a batch reads the clock once).

        An event that raises stops the loop with its exception, already consumed from ``events``: the
        caller may count it and call again with the same iterator to go on (``Ingest`` does)."""
        dispatch, tasks = self._dispatch, self._tasks
        newest = self._newest
        try:
            for event in events:
                etype = event["type"]
                ts = event["timestamp"]
                if ts > newest:
                    newest = ts
                route = dispatch.get(etype)
                if route is None:  # a type without a handler: only counted
                    self._count_type(etype)
                    continue
                route[0] += 1
                body = route[2]
                if body is not None:  # a nameless event of a task the table holds named: straight in
                    uuid = event.get("uuid")
                    if uuid.__class__ is str and len(uuid) <= 40:
                        rec = tasks.get(uuid)
                        if rec is not None and rec[HELD] is None:
                            body(self, uuid, rec, rec[K], event, ts, now)
                            continue
                route[1](event, ts, now)
        finally:
            self._newest = newest

    def _count_type(self, etype: str) -> None:
        """celery_exporter_events_total of a type without a handler: anyone who can publish on the event
        channel can invent types, so they are made label values and capped (the rest fold)."""
        others = self._other_types
        if etype in others:
            others[etype] += 1
            return
        seen = len(others) + sum(1 for route in self._dispatch.values() if route[0])
        if seen < MAX_EVENT_TYPES:
            label = label_value(etype)
            route = self._dispatch.get(label)
            if route is not None:  # made valid, it is one of ours ("task-sent\x00")
                route[0] += 1
            else:
                others[label] = others.get(label, 0) + 1
        else:
            others[OVERFLOW_LABEL] = others.get(OVERFLOW_LABEL, 0) + 1

    @property
    def events_by_type(self) -> dict[str, int]:
        """celery_exporter_events_total: events seen, by type (a copy)."""
        seen = {etype: route[0] for etype, route in self._dispatch.items() if route[0]}
        seen.update(self._other_types)
        return seen

    @property
    def last_event_ts(self) -> float | None:
        return self._newest if self._newest > -math.inf else None

    def _ignore(self, reason: str) -> None:
        self.ignored[reason] = self.ignored.get(reason, 0) + 1

    def _replay(self, held: tuple[Any, ...], now: float) -> None:
        handlers = self._handlers
        for item in held:
            handlers[item["type"]](item, item["timestamp"], now)

    # ------------------------------------------------------------------ task table
    @staticmethod
    def _uuid(value: Any) -> str | None:
        if value.__class__ is not str or not value:
            return None
        if len(value) > 40 and len(value.encode("utf-8", "surrogatepass")) > MAX_UUID_BYTES:
            value = label_value(value, MAX_UUID_BYTES)  # a hostile megabyte-long id is not stored
        return value

    def _open(self, uuid: str, rec: _Rec, key: _Key, now: float) -> tuple[TaskEntry, tuple[Any, ...]]:
        """The live entry for a named event of ``uuid`` (a new one if none) and the held events to replay
        under ``key`` once the named event is applied (a placeholder's)."""
        if rec is None:
            return self._new_record(uuid, key, now), ()
        held = rec[HELD]
        if held is None:
            return rec, ()
        return self._adopt(uuid, held, key, now), held

    # ------------------------------------------------------------------ named task events
    def _task_sent(self, ev: _Ev, ts: float, now: float) -> None:
        uuid = ev.get("uuid")
        if uuid.__class__ is not str or len(uuid) > 40:
            uuid = self._uuid(uuid)
        name = ev.get("name")
        queue = ev.get("queue") or ev.get("routing_key")
        key = self._key_cache.get((name, queue)) if name.__class__ is str and queue.__class__ is str else None
        if key is None:  # Series.key_for's cache hit, above, without the call
            key = self._key_for(name, queue)
        if queue.__class__ is str and self._route_cache.get(key[0]) != key[1]:
            self._learn_route(name, key)
        tasks = self._tasks
        rec = tasks.get(uuid) if uuid is not None else None
        fin = self._finished  # FinishedTasks.get, its miss inlined: every task's task-sent misses
        if rec is None and (uuid is None or uuid in fin.young.keys or uuid in fin.old.keys):
            # No uuid, or a task-sent slower than the task itself (the producer's connection): counted
            # with the rest of the task, no record reopened.
            done = fin.get(uuid) if uuid is not None else None
            if done is not None and done[0][0] != UNKNOWN_TASK:
                key = done[0]
            self.counters[key][_C_SENT] += 1
            self._stamp(key, _S_SENT, ts)
            return
        assert uuid is not None  # for the type checker: a None uuid returned above
        n = ev.get("retries")
        if n.__class__ is not int:
            n = retries_of(n)
        eta = ev.get("eta")
        if eta is not None:
            eta = parse_eta(eta)
        enqueued = eta if eta is not None and eta > ts else ts
        held: tuple[Any, ...] = ()
        if rec is None:  # a new task, the common case: its entry written once, with its first attempt
            if key[0] == UNKNOWN_TASK:
                self._held.unnamed += 1
            tasks[uuid] = (key, ((n, ts, eta, None),), (), n if n > 0 else 0, None, now, None)
            if len(tasks) > self._table.max_tracked or now >= self._table.age_check:
                self._bound(now)
            waits = True
        else:
            tasks.move_to_end(uuid)
            # task-received overtook task-sent (they travel on different connections): the task keeps
            # the key its first named event gave it, so no counter moves between series.
            if rec[HELD] is None:
                key = rec[K]
            rec, held = self._open(uuid, rec, key, now)
            attempts, i = attempt_index(rec[ATTEMPTS], n)
            if i >= 0:
                att = attempts[i]
                attempts = replace_attempt(attempts, i, (att[0], ts, eta, att[3]))
            waits = not rec[STARTS] or n > rec[RETRIES]  # else this attempt started before its task-sent came
            tasks[uuid] = (key, attempts, rec[STARTS], max(n, rec[RETRIES]), rec[WORKER], now, None)
        if waits:
            if n or len(self._wait_ts) >= self._stall_cap:
                self._waiting.add(uuid, enqueued, n)
            else:
                self._wait_ts[uuid] = enqueued
        self.counters[key][_C_SENT] += 1
        self._stamp(key, _S_SENT, ts)
        if held:
            self._replay(held, now)

    def _task_received(self, ev: _Ev, ts: float, now: float) -> None:
        uuid = ev.get("uuid")
        if uuid.__class__ is not str or len(uuid) > 40:
            uuid = self._uuid(uuid)
        tasks = self._tasks
        rec = tasks.get(uuid) if uuid is not None else None
        if rec is None or rec[HELD] is not None:
            self._received_unrecorded(uuid, rec, ev, ts, now)
            return
        tasks.move_to_end(uuid)  # type: ignore[arg-type]
        key = rec[K]
        n = ev.get("retries")
        if n.__class__ is not int:
            n = retries_of(n)
        attempts = rec[ATTEMPTS]
        if len(attempts) == 1 and attempts[0][0] == n:  # the attempt its task-sent opened, the common case
            att = attempts[0]
            attempts = ((n, att[1], att[2] if att[2] is not None else parse_eta(ev.get("eta")), ts),)
        else:
            attempts = _received_attempt(attempts, n, ev, ts)
        retries = rec[RETRIES]
        tasks[uuid] = (key, attempts, rec[STARTS], n if n > retries else retries, rec[WORKER], now,  # type: ignore[index]
                       None)
        self.counters[key][_C_RECEIVED] += 1

    def _received_unrecorded(self, uuid: str | None, rec: _Rec, ev: _Ev, ts: float, now: float) -> None:
        """A task-received of a task without a named entry: the first event seen of it (task-sent events
        off, or overtaken), a placeholder's name at last, or a new delivery of a finished task."""
        if rec is not None:
            self._tasks.move_to_end(uuid)  # type: ignore[arg-type]
            key = self._key_for(ev.get("name"), None)
        else:
            done = self._finished.get(uuid) if uuid is not None else None
            if done is not None:
                key = done[0] if done[0][0] != UNKNOWN_TASK else self._key_for(ev.get("name"), None)
                if ts <= done[3]:
                    # An earlier attempt's, overtaken by the task's end (that attempt's worker flushed its
                    # events late): counted, no record reopened.
                    self.counters[key][_C_RECEIVED] += 1
                    return
                # A new delivery of a finished task (a DLX ladder or a requeue brought the message back):
                # a new record, under the name and queue the task had.
                self._finished.pop(uuid)  # type: ignore[arg-type]
            else:
                key = self._key_for(ev.get("name"), None)
                if key[0] == UNKNOWN_TASK and uuid is not None:
                    self._held.unnamed += 1
        if uuid is None:
            self.counters[key][_C_RECEIVED] += 1
            return
        rec, held = self._open(uuid, rec, key, now)
        n = retries_of(ev.get("retries"))
        attempts = _received_attempt(rec[ATTEMPTS], n, ev, ts)
        self._tasks[uuid] = (key, attempts, rec[STARTS], max(n, rec[RETRIES]), rec[WORKER], now, None)
        self.counters[key][_C_RECEIVED] += 1
        if held:
            self._replay(held, now)

    # ------------------------------------------------------------------ nameless task events
    def _task_event(self, ev: _Ev, ts: float, now: float) -> None:
        """Route an event without a name to its task, to its type's handler in ``_nameless``: the live
        record, the finished memory, or (for a uuid never seen) a placeholder holding it until the name
        is known. (``apply`` takes the first way itself, for a record held named.)"""
        uuid = ev.get("uuid")
        if uuid.__class__ is not str or len(uuid) > 40:
            uuid = self._uuid(uuid)
            if uuid is None:
                self._ignore("no_uuid")
                return
        rec = self._tasks.get(uuid)
        if rec is not None:
            if rec[HELD] is None:
                self._nameless[ev["type"]](self, uuid, rec, rec[K], ev, ts, now)
            else:
                self._hold(uuid, rec, ev, ts, now)
            return
        self._stalls.unrecorded(uuid, ev, ts)
        done = self._finished.get(uuid)
        if done is None:
            self._hold(uuid, None, ev, ts, now)
        else:
            self._after_end(self, uuid, done, ev, ts, now)


def _received_attempt(attempts: tuple[Any, ...], n: int, ev: _Ev, ts: float) -> tuple[Any, ...]:
    """``attempts`` with attempt ``n`` marked received at ``ts`` (its eta from the event if its task-sent
    gave none)."""
    attempts, i = attempt_index(attempts, n)
    if i >= 0:
        att = attempts[i]
        eta = att[2] if att[2] is not None else parse_eta(ev.get("eta"))
        attempts = replace_attempt(attempts, i, (att[0], att[1], eta, ts))
    return attempts
