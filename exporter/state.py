"""ClusterState: everything the event stream teaches us, fed one decoded event dict at a time.

The event loop is the only writer. It calls ``apply()`` for each event while holding ``lock`` for a whole
batch of messages; scrapes take the same lock once to copy a ``Snapshot`` (a few dict copies, bounded by
the cardinality caps, independent of the event rate) and build metric families from the copy outside it.

Every delivery is counted under its task's own name, whatever order Celery's events arrive in:

* Only task-sent and task-received carry a name. The other task events of a uuid the exporter holds no
  record of are *held* in a placeholder record, counted nowhere, until a named event for the uuid
  arrives (they are then replayed under its name) or ``HOLD_SECONDS`` pass without one (they are then
  counted under ``task_name="unknown"``, and so is ``celery_exporter_unknown_tasks_total``). Re-keying a
  placeholder therefore never moves a counter backwards: nothing was counted under it.
* Finished tasks are remembered (uuid -> name, queue, which terminal events came) in a bounded LRU, so a
  task-rejected after task-failed, a redelivered terminal event or a late task-retried keep the name;
  a repeated terminal event and a task-started after the end change nothing but
  ``celery_exporter_events_ignored_total``. A task-received after the end is a new delivery (a DLX or a
  requeue brought the message back) and opens a new record under the same name and queue.
* Each record keeps the start times of its open attempts (oldest first) and the worker that started it:
  a task-retried closes the oldest, a final event the newest, so a retry's task-started overtaking the
  previous attempt's task-retried erases nothing. When a worker is lost (past ``worker_timeout``,
  worker-offline while it still runs tasks) or two heartbeats running report fewer active tasks than we
  hold for it, those tasks stop counting as active and count in ``celery_task_lost_total``.

Memory is bounded everywhere an outsider controls a key or a size: the task table is an LRU capped by
``max_tracked_tasks`` plus an age limit, the finished-task memory by ``max_finished_tasks``, distinct
task names, queues, exception classes and workers are capped (overflow folds into ``OVERFLOW_LABEL`` and
is counted), so is the total of per-task series (``max_series``), and every string that can become a
label value or a key is made valid UTF-8 and cut to a byte limit where it enters (``label_value``).
Time comes from the injected ``clock``, so time-outs are tested without sleeping.
"""

from __future__ import annotations

import fnmatch
import math
import re
import threading
import time
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Mapping
from itertools import islice
from typing import Any

from exporter.records import (
    ATTEMPTS,
    D_FAILED,
    D_RETRIED,
    D_SUCCEEDED,
    DEFAULT_DURATION_BUCKETS,
    DEFAULT_QUEUE_WAIT_BUCKETS,
    DURATION_STATES,
    EXHAUSTED,
    HELD,
    KEY_CACHE_SIZE,
    MAX_EVENT_TYPES,
    MAX_HELD_EVENTS,
    MAX_LABEL_BYTES,
    MAX_LABEL_LENGTH,
    MAX_OBSERVED_SECONDS,
    MAX_UUID_BYTES,
    N_COUNTERS,
    OVERFLOW_LABEL,
    RECEIVED,
    REJECTED,
    RETRIES,
    REVOKE_REASONS,
    REVOKED,
    SENT,
    STARTED,
    STARTS,
    SUCCEEDED,
    TOUCHED,
    UNKNOWN_TASK,
    WORKER,
    Done,
    FinishedTasks,
    Histogram,
    K,
    Snapshot,
    StateSettings,
    TaskEntry,
    WorkerRecord,
    attempt_index,
    exception_class,
    label_value,
    parse_eta,
    parse_iso,
    replace_attempt,
    retries_of,
    take_started_attempt,
)
from exporter.stalls import STAMPED_STATES, RunningTasks, WaitingTasks

# The value types live in exporter.records; they are re-exported here, where their users look for them.
__all__ = [
    "DEFAULT_DURATION_BUCKETS",
    "DEFAULT_QUEUE_WAIT_BUCKETS",
    "DURATION_STATES",
    "D_FAILED",
    "D_RETRIED",
    "D_SUCCEEDED",
    "EXHAUSTED",
    "HOLD_SECONDS",
    "MAX_LABEL_BYTES",
    "MAX_LABEL_LENGTH",
    "N_COUNTERS",
    "OVERFLOW_LABEL",
    "RECEIVED",
    "REJECTED",
    "REVOKED",
    "REVOKE_REASONS",
    "SENT",
    "STARTED",
    "SUCCEEDED",
    "UNKNOWN_TASK",
    "ClusterState",
    "Histogram",
    "Snapshot",
    "StateSettings",
    "WorkerRecord",
    "exception_class",
    "label_value",
    "parse_eta",
    "parse_iso",
]

# Terminal events, as bits of a finished task's memory: a second one of the same kind is a duplicate.
_DONE_BITS = {"task-succeeded": 1, "task-failed": 2, "task-revoked": 4, "task-rejected": 8}
# celery_exporter_events_ignored_total{reason}
IGNORED_REASONS = ("duplicate", "after_terminal", "no_uuid")
# How long nameless events wait for their task's name (a task-revoked of an expired task, published at
# receipt, overtakes the producer's task-sent): then they count under "unknown". Ticks come every 5 s.
HOLD_SECONDS = 10.0
# What a held event keeps of its event (tracebacks, args and results are not needed, nor stored).
_HELD_FIELDS = ("type", "timestamp", "hostname", "runtime", "terminated", "expired", "requeue")
# Series one new (task_name, queue) key adds: the plain counters, failed{exception=""},
# retried{exception=""}, tasks_active, task_lost.
_KEY_SERIES = N_COUNTERS + 4
_OVERFLOW_KEY = (OVERFLOW_LABEL, OVERFLOW_LABEL)
# Open attempts kept per task: more are a hostile stream (or lost events); the oldest is dropped.
_MAX_STARTS = 4
_Key = tuple[str, str]
_Ev = Mapping[str, Any]
_Rec = TaskEntry | None
_Nameless = Callable[["ClusterState", str, _Rec, _Key, _Ev, float], None]


class ClusterState:
    """Tasks, workers and per-task metric accumulators, built from decoded Celery events."""

    def __init__(self, settings: StateSettings | None = None, clock: Callable[[], float] = time.time) -> None:
        if settings is None:  # the defaults live in one place, config's OPTIONS
            from exporter.config import state_settings

            settings = state_settings()
        self.settings = s = settings
        self.clock = clock
        self.lock = threading.Lock()
        self._tasks: OrderedDict[str, TaskEntry] = OrderedDict()
        self._finished = FinishedTasks(s.max_finished_tasks)
        # hostname -> {uuid: start timestamp} of the tasks each worker is running, oldest first.
        self._running: dict[str, dict[str, float]] = {}
        self._holding: dict[str, float] = {}  # uuid -> when its first held event came, oldest first
        self._routes = tuple((re.compile(fnmatch.translate(g)), q) for g, q in s.task_routes)
        self._route_cache: dict[str, str] = {}
        self._key_cache: dict[tuple[Any, Any], _Key] = {}
        self._canonical: dict[_Key, _Key] = {}
        self._dbounds = s.duration_buckets
        self._wbounds = s.queue_wait_buckets
        self.series = 0
        self.counters: dict[_Key, list[int]] = {}
        self.failed: dict[tuple[str, str, str], int] = {}
        self.retried: dict[tuple[str, str, str], int] = {}
        self.revoked: dict[tuple[str, str, str], int] = {}  # terminated and expired; plain ones in counters
        self.durations: dict[tuple[str, str, int], Histogram] = {}
        self.queue_wait: dict[_Key, Histogram] = {}
        self.active: dict[_Key, int] = {}
        self.lost: dict[_Key, int] = {}
        self.workers: dict[str, WorkerRecord] = {}
        self._names: set[str] = set()
        self._exceptions: set[str] = set()
        self._queues: dict[str, None] = {}
        self.events_by_type: dict[str, int] = {}
        self.invalid_by_reason: dict[str, int] = {}
        self.ignored: dict[str, int] = dict.fromkeys(IGNORED_REASONS, 0)
        self.unnamed_tasks = 0
        self.overflow: dict[str, int] = {"task_name": 0, "exception": 0, "worker": 0, "queue": 0, "series": 0}
        self.evicted: dict[str, int] = {"capacity": 0, "age": 0}
        self.workers_purged = 0
        self.last_event_ts: float | None = None
        # The stall signals (exporter.stalls): waiting and running tasks outlive the task table's LRU.
        self._waiting = WaitingTasks(s.max_tracked_tasks, s.task_max_age)
        self._run_ages = RunningTasks(s.max_tracked_tasks)
        # Their dicts, for the common cases inlined in the handlers (a method call per event cost ~5%).
        self._wait_ts, self._run_starts = self._waiting.ts, self._run_ages.starts
        self._stall_cap = s.max_tracked_tasks
        # uuid -> (key, worker) of tracked tasks whose record the task table evicted.
        self._orphans: dict[str, tuple[_Key, str | None]] = {}
        self._waiting_checked = 0.0
        # (task_name, queue) -> newest timestamp per STAMPED_STATES (0.0: no series yet).
        self._stamps: dict[_Key, list[float]] = {}
        # Handlers of the events that carry no name: (self, uuid, live record or None once finished, key,
        # event, timestamp), reached through _task_event. Plain functions looked up by type there rather
        # than bound with functools.partial: CPython cannot inline a call through a partial (a C call
        # starts a new interpreter frame loop), a dict lookup and a Python-to-Python call are cheaper.
        self._nameless: dict[str, _Nameless] = {
            "task-started": ClusterState._task_started,
            "task-succeeded": ClusterState._task_succeeded,
            "task-failed": ClusterState._task_failed,
            "task-retried": ClusterState._task_retried,
            "task-rejected": ClusterState._task_rejected,
            "task-revoked": ClusterState._task_revoked,
        }
        self._handlers: dict[str, Callable[[_Ev, float], None]] = {
            "task-sent": self._task_sent,
            "task-received": self._task_received,
            **dict.fromkeys(self._nameless, self._task_event),
            "worker-online": self._worker_alive,
            "worker-heartbeat": self._worker_alive,
            "worker-offline": self._worker_offline,
        }

    # ------------------------------------------------------------------ feeding
    def apply(self, event: Mapping[str, Any]) -> None:
        """Apply one decoded event (``type`` and a float ``timestamp`` already validated)."""
        etype = event["type"]
        by_type = self.events_by_type
        if etype in by_type:
            by_type[etype] += 1
        elif len(by_type) < MAX_EVENT_TYPES or etype in self._handlers:
            label = label_value(etype)  # anyone can invent one, and it becomes a label value
            by_type[label] = by_type.get(label, 0) + 1
        else:  # anyone who can publish on the channel can invent event types: fold the rest
            by_type[OVERFLOW_LABEL] = by_type.get(OVERFLOW_LABEL, 0) + 1
        ts = event["timestamp"]
        if self.last_event_ts is None or ts > self.last_event_ts:
            self.last_event_ts = ts
        handler = self._handlers.get(etype)
        if handler is not None:
            handler(event, ts)

    def count_invalid(self, reason: str, n: int = 1) -> None:
        self.invalid_by_reason[reason] = self.invalid_by_reason.get(reason, 0) + n

    def _ignore(self, reason: str) -> None:
        self.ignored[reason] = self.ignored.get(reason, 0) + 1

    def tick(self) -> None:
        """Periodic housekeeping from the event loop: lose the tasks of workers silent past
        ``worker_timeout``, purge departed workers and aged-out tasks."""
        now = self.clock()
        timeout = self.settings.worker_timeout
        for hostname in list(self._running):
            worker = self.workers.get(hostname)
            # A worker never heard from (its worker-online came before the exporter started) gets the
            # same grace, counted from the newest event of the tasks it runs.
            last = worker.heartbeat_seen if worker is not None else self._newest_touch(hostname)
            if now - last > timeout:
                self._lose_worker(hostname)
        purge = self.settings.worker_purge_after
        gone = [h for h, w in self.workers.items() if now - w.seen > purge]
        for hostname in gone:
            del self.workers[hostname]
        self.workers_purged += len(gone)
        self._release_held(now)
        self._evict_aged(now)
        if now - self._waiting_checked >= 60.0:  # a full pass, so not every tick
            self._waiting_checked = now
            for uuid in self._waiting.expire(now):
                if uuid not in self._run_starts:
                    self._orphans.pop(uuid, None)

    def _newest_touch(self, hostname: str) -> float:
        tasks = self._tasks
        return max((tasks[u][TOUCHED] for u in self._running.get(hostname, ()) if u in tasks), default=0.0)

    # ------------------------------------------------------------------ label guards
    def _room(self, n: int) -> bool:
        """Whether ``n`` more per-task series fit under ``max_series`` (taken if so; counted if not)."""
        if self.series + n <= self.settings.max_series:
            self.series += n
            return True
        self.overflow["series"] += 1
        return False

    def _key_for(self, name: Any, queue: Any) -> _Key:
        """The canonical ``(task_name, queue)`` label key for an event's raw name and queue.

        One tuple per key, shared by every task-table entry (a fresh tuple of the event's own strings
        cost ~170 bytes a tracked task), and a cache from the raw values so the guards run once per
        distinct pair. Results that counted an overflow are not cached, so every such event is counted.
        """
        cacheable = False
        if name.__class__ is str and (queue is None or queue.__class__ is str):
            key = self._key_cache.get((name, queue))
            if key is not None:
                return key
            # Only short raw values: the cache must not keep a hostile megabyte-long name alive.
            cacheable = len(name) <= MAX_LABEL_BYTES and (queue is None or len(queue) <= MAX_LABEL_BYTES)
        ov = self.overflow
        overflowed = ov["task_name"] + ov["queue"] + ov["series"]
        key = self._guard_key(name, queue)
        key = self._canonical.setdefault(key, key)
        if (cacheable and len(self._key_cache) < KEY_CACHE_SIZE
                and overflowed == ov["task_name"] + ov["queue"] + ov["series"]):
            self._key_cache[(name, queue)] = key
        return key

    def _guard_key(self, name: Any, queue: Any) -> _Key:
        if not isinstance(name, str) or not name:
            name = UNKNOWN_TASK
        elif name not in self._names:
            name = label_value(name) or UNKNOWN_TASK
            if name in self._names or name == UNKNOWN_TASK:
                pass
            elif len(self._names) >= self.settings.max_task_names:
                self.overflow["task_name"] += 1
                name = OVERFLOW_LABEL
            else:
                self._names.add(name)
        if not isinstance(queue, str) or not queue:
            queue = self._route(name)
        elif queue not in self._queues:
            queue = label_value(queue)
            if queue in self._queues:
                pass
            elif not queue:
                queue = self._route(name)
            elif len(self._queues) >= self.settings.max_queues:
                self.overflow["queue"] += 1
                queue = OVERFLOW_LABEL
            else:
                self._queues[queue] = None
        key = (name, queue)
        if key not in self.counters:
            if not self._room(_KEY_SERIES):
                return self._overflow_key()
            self._init_key(key)
        return key

    def _init_key(self, key: _Key) -> None:
        # Every series of a task starts at zero, so rate() and ratios work before the first failure.
        self.counters[key] = [0] * N_COUNTERS
        self.failed[(*key, "")] = 0
        self.retried[(*key, "")] = 0
        self.active[key] = 0
        self.lost[key] = 0

    def _overflow_key(self) -> _Key:
        if _OVERFLOW_KEY not in self.counters:  # past max_series: the one key that may still be added
            self._init_key(_OVERFLOW_KEY)
        return _OVERFLOW_KEY

    def _learn_route(self, raw_name: Any, key: _Key) -> None:
        """Remember the queue task-sent events give a task name, for that name's events that arrive
        without one: a task-received that overtakes its task-sent (they travel on different
        connections) then still gets the queue producers really use, not the configured fallback."""
        name, queue = key
        if queue == OVERFLOW_LABEL or self._route_cache.get(name) == queue:
            return
        if name in self._route_cache or len(self._route_cache) < 100_000:
            self._route_cache[name] = queue
            if raw_name.__class__ is str:
                self._key_cache.pop((raw_name, None), None)

    def _route(self, name: str) -> str:
        queue = self._route_cache.get(name)
        if queue is None:
            queue = self.settings.default_queue
            for pattern, target in self._routes:
                if pattern.match(name):
                    queue = target
                    break
            if len(self._route_cache) < 100_000:
                self._route_cache[name] = queue
        return queue

    def _stamp(self, key: _Key, i: int, ts: float) -> None:
        """Newest event timestamp of kind ``STAMPED_STATES[i]`` for ``key``; a new series must fit under
        ``max_series`` (else it folds into the overflow key). The handlers inline the common case, a
        slot already set."""
        stamps = self._stamps.get(key)
        if stamps is None or stamps[i] == 0.0:
            stamps = self._stamp_slot(key, i)
        if ts > stamps[i]:
            stamps[i] = ts

    def _stamp_slot(self, key: _Key, i: int) -> list[float]:
        if not self._room(1):
            key = _OVERFLOW_KEY
        stamps = self._stamps.get(key)
        if stamps is None:
            stamps = self._stamps[key] = [0.0] * len(STAMPED_STATES)
        return stamps

    def _exception(self, text: Any, traceback: Any = None) -> str:
        exc = exception_class(text, traceback)
        if exc not in self._exceptions:
            if len(self._exceptions) >= self.settings.max_exception_types:
                self.overflow["exception"] += 1
                return OVERFLOW_LABEL
            self._exceptions.add(exc)
        return exc

    def _count_by_label(self, table: dict[tuple[str, str, str], int], key: _Key, label: str) -> None:
        """+1 on ``table[(*key, label)]``, a series that may be new: past ``max_series`` it folds."""
        lkey = (key[0], key[1], label)
        if lkey in table:
            table[lkey] += 1
            return
        if not self._room(1):
            lkey = (*self._overflow_key(), OVERFLOW_LABEL)
        table[lkey] = table.get(lkey, 0) + 1

    # ------------------------------------------------------------------ task table
    def _new_record(self, uuid: str, key: _Key | None, now: float,
                    held: tuple[Any, ...] | None = None) -> TaskEntry:
        tasks = self._tasks
        entry = tasks[uuid] = (key, (), (), 0, None, now, held)
        if len(tasks) > self.settings.max_tracked_tasks:
            old_uuid, old = tasks.popitem(last=False)
            self._forget(old, old_uuid)
            self._orphan(old_uuid, old)
            self.evicted["capacity"] += 1
        else:
            self._evict_aged(now)
        return entry

    def _evict_aged(self, now: float) -> None:
        tasks = self._tasks
        limit = now - self.settings.task_max_age
        while tasks:
            uuid = next(iter(tasks))
            oldest = tasks[uuid]
            if oldest[TOUCHED] >= limit:
                break
            del tasks[uuid]
            self._forget(oldest, uuid)
            self._orphan(uuid, oldest)
            self.evicted["age"] += 1

    def _forget(self, entry: TaskEntry, uuid: str | None = None) -> None:
        if entry[STARTS]:
            self.active[entry[K]] -= len(entry[STARTS])
        if entry[WORKER] is not None:
            self._unrun(entry[WORKER], uuid)
        if entry[HELD] is not None and uuid is not None:  # never named: counted as unknown now
            self._count_unnamed(uuid, entry[HELD])

    def _unrun(self, hostname: str, uuid: str | None) -> None:
        running = self._running.get(hostname)
        if running is not None and uuid is not None:
            running.pop(uuid, None)
            if not running:
                del self._running[hostname]

    def _finish(self, uuid: str, rec: TaskEntry, key: _Key, bit: int, ts: float) -> None:
        """The task ended: it leaves the table (and its worker's running set) for the finished memory,
        which keeps any older attempt still open, for that attempt's late task-retried."""
        starts = rec[STARTS]
        if starts:
            self.active[key] -= len(starts)
            worker = rec[WORKER]
            if worker is not None:
                running = self._running.get(worker)
                if running is not None:
                    running.pop(uuid, None)
                    if not running:
                        del self._running[worker]
        del self._tasks[uuid]
        if uuid in self._wait_ts or self._waiting.sampled:
            self._waiting.discard(uuid)
        self._run_starts.pop(uuid, None)
        if self._orphans:
            self._orphans.pop(uuid, None)
        self._finished.remember(uuid, key, bit, starts, ts)

    @staticmethod
    def _uuid(value: Any) -> str | None:
        if value.__class__ is not str or not value:
            return None
        if len(value) > 40 and len(value.encode("utf-8", "surrogatepass")) > MAX_UUID_BYTES:
            value = label_value(value, MAX_UUID_BYTES)  # a hostile megabyte-long id is not stored
        return value

    # ------------------------------------------------------------------ named task events
    def _adopt(self, uuid: str, rec: _Rec, key: _Key, now: float) -> tuple[TaskEntry, tuple[Any, ...]]:
        """A named event for ``uuid``: its live record (a new one if none), placeholder or not, and the
        held events to replay under ``key`` once the named event is applied."""
        if rec is None:
            return self._new_record(uuid, key, now), ()
        held = rec[HELD]
        if held is None:
            return rec, ()
        self._holding.pop(uuid, None)
        if key[0] == UNKNOWN_TASK:
            self.unnamed_tasks += 1
        return (key, (), (), 0, None, now, None), held

    def _replay(self, held: tuple[Any, ...]) -> None:
        handlers = self._handlers
        for item in held:
            handlers[item["type"]](item, item["timestamp"])

    def _task_sent(self, ev: Mapping[str, Any], ts: float) -> None:
        now = self.clock()
        uuid = ev.get("uuid")
        if uuid.__class__ is not str or len(uuid) > 40:
            uuid = self._uuid(uuid)
        rec = self._tasks.get(uuid) if uuid is not None else None
        queue = ev.get("queue") or ev.get("routing_key")
        sent_key = self._key_for(ev.get("name"), queue)
        if queue.__class__ is str:
            self._learn_route(ev.get("name"), sent_key)
        if uuid is None:
            self.counters[sent_key][SENT] += 1
            stamps = self._stamps.get(sent_key)
            if stamps is None or not stamps[0]:
                self._stamp(sent_key, 0, ts)
            elif ts > stamps[0]:
                stamps[0] = ts
            return
        if rec is None:
            fin = self._finished  # FinishedTasks.get, its miss inlined: every task's task-sent misses
            done = fin.get(uuid) if uuid in fin.young.keys or uuid in fin.old.keys else None
            if done is not None:
                # A task-sent slower than the task itself (the producer's connection): counted with the
                # rest of the task, no record reopened.
                key = done[0] if done[0][0] != UNKNOWN_TASK else sent_key
                self.counters[key][SENT] += 1
                stamps = self._stamps.get(key)
                if stamps is None or not stamps[0]:
                    self._stamp(key, 0, ts)
                elif ts > stamps[0]:
                    stamps[0] = ts
                return
            if sent_key[0] == UNKNOWN_TASK:
                self.unnamed_tasks += 1
            key = sent_key
        else:
            self._tasks.move_to_end(uuid)
            # task-received overtook task-sent (they travel on different connections): the task keeps
            # the key its first named event gave it, so no counter moves between series.
            key = rec[K] if rec[HELD] is None else sent_key
        held: tuple[Any, ...] = ()
        if rec is None:
            rec = self._new_record(uuid, key, now)
        elif rec[HELD] is not None:
            rec, held = self._adopt(uuid, rec, key, now)
        n = retries_of(ev.get("retries"))
        attempts, i = attempt_index(rec[ATTEMPTS], n)
        eta = parse_eta(ev.get("eta"))
        if i >= 0:
            att = attempts[i]
            attempts = replace_attempt(attempts, i, (att[0], ts, eta, att[3]))
        if not rec[STARTS] or n > rec[RETRIES]:  # else this attempt started before its task-sent came
            enqueued = eta if eta is not None and eta > ts else ts
            if n or len(self._wait_ts) >= self._stall_cap:
                self._waiting.add(uuid, enqueued, n)
            else:
                self._wait_ts[uuid] = enqueued
        self._tasks[uuid] = (key, attempts, rec[STARTS], max(n, rec[RETRIES]), rec[WORKER], now, None)
        self.counters[key][SENT] += 1
        stamps = self._stamps.get(key)
        if stamps is None or not stamps[0]:
            self._stamp(key, 0, ts)
        elif ts > stamps[0]:
            stamps[0] = ts
        if held:
            self._replay(held)

    def _task_received(self, ev: Mapping[str, Any], ts: float) -> None:
        now = self.clock()
        uuid = ev.get("uuid")
        if uuid.__class__ is not str or len(uuid) > 40:
            uuid = self._uuid(uuid)
        rec = self._tasks.get(uuid) if uuid is not None else None
        if rec is not None:
            self._tasks.move_to_end(uuid)  # type: ignore[arg-type]
            key = rec[K] if rec[HELD] is None else self._key_for(ev.get("name"), None)
        else:
            done = self._finished.get(uuid) if uuid is not None else None
            if done is not None:
                key = done[0] if done[0][0] != UNKNOWN_TASK else self._key_for(ev.get("name"), None)
                if ts <= done[3]:
                    # An earlier attempt's, overtaken by the task's end (that attempt's worker flushed its
                    # events late): counted, no record reopened.
                    self.counters[key][RECEIVED] += 1
                    return
                # A new delivery of a finished task (a DLX ladder or a requeue brought the message back):
                # a new record, under the name and queue the task had.
                self._finished.pop(uuid)  # type: ignore[arg-type]
            else:
                key = self._key_for(ev.get("name"), None)
                if key[0] == UNKNOWN_TASK and uuid is not None:
                    self.unnamed_tasks += 1
        if uuid is None:
            self.counters[key][RECEIVED] += 1
            return
        held: tuple[Any, ...] = ()
        if rec is None:
            rec = self._new_record(uuid, key, now)
        elif rec[HELD] is not None:
            rec, held = self._adopt(uuid, rec, key, now)
        n = retries_of(ev.get("retries"))
        attempts, i = attempt_index(rec[ATTEMPTS], n)
        if i >= 0:
            att = attempts[i]
            eta = att[2] if att[2] is not None else parse_eta(ev.get("eta"))
            attempts = replace_attempt(attempts, i, (att[0], att[1], eta, ts))
        self._tasks[uuid] = (key, attempts, rec[STARTS], max(n, rec[RETRIES]), rec[WORKER], now, None)
        self.counters[key][RECEIVED] += 1
        if held:
            self._replay(held)

    # ------------------------------------------------------------------ nameless task events
    def _task_event(self, ev: _Ev, ts: float) -> None:
        """Route an event without a name to its task, to its type's handler in ``_nameless``: the live
        record, the finished memory, or (for a uuid never seen) a placeholder holding it until the name
        is known."""
        uuid = ev.get("uuid")
        if uuid.__class__ is not str or len(uuid) > 40:
            uuid = self._uuid(uuid)
            if uuid is None:
                self._ignore("no_uuid")
                return
        rec = self._tasks.get(uuid)
        if rec is not None:
            if rec[HELD] is None:
                self._tasks.move_to_end(uuid)
                self._nameless[ev["type"]](self, uuid, rec, rec[K], ev, ts)
            else:
                self._hold(uuid, rec, ev, ts)
            return
        self._unrecorded(uuid, ev, ts)
        done = self._finished.get(uuid)
        if done is None:
            self._hold(uuid, None, ev, ts)
        else:
            self._after_end(uuid, done, self._nameless[ev["type"]], ev, ts)

    def _unrecorded(self, uuid: str, ev: _Ev, ts: float) -> None:
        """An event of a task out of the task table (evicted while it waited under a backlog, or already
        finished): the waiting and running trackers, which outlive the table, still follow it."""
        etype = ev["type"]
        if etype == "task-started":
            orphan = self._orphans.get(uuid)
            if orphan is not None and self._waiting.started(uuid, None):
                host = ev.get("hostname")
                self._orphans[uuid] = (orphan[0], label_value(host) if host.__class__ is str else None)
                self._run_ages.start(uuid, ts)
        elif etype == "task-retried":
            self._unrun_stall(uuid)
        elif etype != "task-rejected" or ev.get("requeue") is False:
            self._waiting.discard(uuid)
            self._run_starts.pop(uuid, None)
            self._orphans.pop(uuid, None)

    def _unrun_stall(self, uuid: str) -> None:
        self._run_starts.pop(uuid, None)
        if self._orphans and uuid not in self._waiting:
            self._orphans.pop(uuid, None)

    def _orphan(self, uuid: str, entry: TaskEntry) -> None:
        """The task table evicted ``entry``: if a tracker still follows the task, keep its labels."""
        if entry[HELD] is None and (uuid in self._run_starts or uuid in self._waiting):
            self._orphans[uuid] = (entry[K], entry[WORKER])

    def _stall_key(self, uuid: str) -> _Key | None:
        rec = self._tasks.get(uuid)
        if rec is not None and rec[HELD] is None:
            return rec[K]
        orphan = self._orphans.get(uuid)
        return orphan[0] if orphan is not None else None

    def _after_end(self, uuid: str, done: Done, handler: _Nameless, ev: _Ev, ts: float) -> None:
        """An event of a finished task: a repeat changes nothing but a self-metric, a late one of an
        earlier attempt (or a contradicting outcome) counts under the task's name."""
        etype = ev["type"]
        key, bits, starts, end = done
        if etype == "task-started":
            if ts in starts:
                self._ignore("duplicate")
            elif ts > end:  # no new delivery (that opens with task-received) started it
                self._ignore("after_terminal")
            else:  # an earlier attempt's, overtaken by the end: left open for its late task-retried
                self.counters[key][STARTED] += 1
                stamps = self._stamps.get(key)
                if stamps is None or not stamps[1]:
                    self._stamp(key, 1, ts)
                elif ts > stamps[1]:
                    stamps[1] = ts
                self._finished.put(uuid, (key, bits, (ts, *starts), end))
            return
        bit = _DONE_BITS.get(etype, 0)
        if bits & bit:
            self._ignore("duplicate")  # a redelivered or repeated terminal event
            return
        if bit:
            self._finished.put(uuid, (key, bits | bit, starts, end))
        handler(self, uuid, None, key, ev, ts)

    def _hold(self, uuid: str, rec: _Rec, ev: _Ev, ts: float) -> None:
        """Keep a nameless event of a task not yet seen named, counted nowhere. When the task ends (or
        holds too many) without a name, what it holds is counted under ``unknown``."""
        item: dict[str, Any] = {k: ev[k] for k in _HELD_FIELDS if k in ev}
        item["uuid"] = uuid
        item["timestamp"] = ts
        if "exception" in ev:  # reduced now: the traceback it may need is not kept
            item["exception"] = exception_class(ev.get("exception"), ev.get("traceback"))
        now = self.clock()
        if rec is None:
            held: tuple[Any, ...] = (item,)
            self._new_record(uuid, None, now, held)
            self._holding[uuid] = now
        else:
            held = (*rec[HELD], item)
            self._tasks[uuid] = (None, (), (), 0, None, now, held)
            self._tasks.move_to_end(uuid)
        if len(held) >= MAX_HELD_EVENTS:
            del self._tasks[uuid]
            self._count_unnamed(uuid, held)

    def _count_unnamed(self, uuid: str, held: tuple[Any, ...]) -> None:
        """The task's name never came (within HOLD_SECONDS, or before it held too many events, or before
        it was evicted): what it held counts under ``unknown``, through the finished-task memory, so its
        later events count there too and nothing is counted twice."""
        self._holding.pop(uuid, None)
        self.unnamed_tasks += 1
        self._finished.remember(uuid, self._key_for(None, None), 0, (), math.inf)
        self._replay(held)

    def _release_held(self, now: float) -> None:
        holding = self._holding
        while holding:
            uuid = next(iter(holding))
            if now - holding[uuid] < HOLD_SECONDS:
                break
            del holding[uuid]
            rec = self._tasks.get(uuid)
            if rec is not None and rec[HELD] is not None:
                del self._tasks[uuid]
                self._count_unnamed(uuid, rec[HELD])

    def _take_start(self, uuid: str, rec: TaskEntry, key: _Key) -> tuple[float | None, tuple[float, ...]]:
        """Close the oldest open attempt (a task-retried or task-rejected ends it)."""
        starts = rec[STARTS]
        if not starts:
            return None, starts
        self.active[key] -= 1
        if len(starts) == 1 and rec[WORKER] is not None:
            self._unrun(rec[WORKER], uuid)
        self._run_ages.next_attempt(uuid, starts[1] if len(starts) > 1 else None)
        return starts[0], starts[1:]

    def _task_started(self, uuid: str, rec: _Rec, key: _Key, ev: _Ev, ts: float) -> None:
        assert rec is not None  # a task-started of a finished task is ignored before this
        starts = rec[STARTS]
        if ts in starts:
            self._ignore("duplicate")  # the same task-started twice
            return
        now = self.clock()
        self.counters[key][STARTED] += 1
        stamps = self._stamps.get(key)
        if stamps is None or not stamps[1]:
            self._stamp(key, 1, ts)
        elif ts > stamps[1]:
            stamps[1] = ts
        attempts = rec[ATTEMPTS]
        if len(attempts) == 1:  # the usual case, take_started_attempt's answer without a call
            att, attempts = attempts[0], ()
        else:
            att, attempts = take_started_attempt(attempts)
        wait_ts = self._wait_ts
        if uuid in wait_ts and not self._waiting.retries:  # the common case, inlined
            del wait_ts[uuid]
        elif uuid in wait_ts or self._waiting.sampled:
            self._waiting.started(uuid, att[0] if att is not None else None)
        if att is not None:
            enqueued = att[1] if att[1] is not None else att[3]
            if enqueued is not None:
                eta = att[2]
                if eta is not None and eta > enqueued:
                    enqueued = eta
                self._observe_wait(key, ts - enqueued)
        if starts:
            starts = (*starts, ts)
            if len(starts) > _MAX_STARTS:
                starts = starts[1:]
            else:
                self.active[key] += 1
        else:
            starts = (ts,)
            self.active[key] += 1
        # The worker's name only ties the task to a worker record (never a label): kept raw when short,
        # which a sane node name always is; _worker() keys its records by label_value(), the same string
        # for those.
        host = ev.get("hostname")
        if host.__class__ is not str or len(host) > MAX_LABEL_BYTES:
            host = None
        worker = rec[WORKER]
        if worker is not None and worker != host:
            self._unrun(worker, uuid)
        if host is not None:
            running = self._running.get(host)
            if running is None:
                running = self._running[host] = {}
            running[uuid] = ts
        run = self._run_starts
        if uuid not in run and len(run) < self._stall_cap:
            run[uuid] = starts[0]
        else:
            self._run_ages.start(uuid, starts[0])
        self._tasks[uuid] = (key, attempts, starts, rec[RETRIES], host, now, None)

    def _runtime(self, value: Any) -> float | None:
        if value.__class__ is float:
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # decode refuses these; a direct caller may not have
                return None
        return None

    def _task_succeeded(self, uuid: str, rec: _Rec, key: _Key, ev: _Ev, ts: float) -> None:
        self.counters[key][SUCCEEDED] += 1
        stamps = self._stamps.get(key)
        if stamps is None or not stamps[2]:
            self._stamp(key, 2, ts)
        elif ts > stamps[2]:
            stamps[2] = ts
        runtime = ev.get("runtime")
        if runtime.__class__ is not float:
            runtime = self._runtime(runtime)
        starts = rec[STARTS] if rec is not None else ()
        if runtime is not None:
            self._observe_duration(key, D_SUCCEEDED, runtime)
        elif starts:
            self._observe_duration(key, D_SUCCEEDED, ts - starts[-1])  # the final attempt is the newest
        if rec is not None:
            self._finish(uuid, rec, key, 1, ts)

    def _task_failed(self, uuid: str, rec: _Rec, key: _Key, ev: _Ev, ts: float) -> None:
        self._count_by_label(self.failed, key, self._exception(ev.get("exception"), ev.get("traceback")))
        stamps = self._stamps.get(key)
        if stamps is None or not stamps[3]:
            self._stamp(key, 3, ts)
        elif ts > stamps[3]:
            stamps[3] = ts
        if rec is not None:
            if rec[RETRIES] >= 1:
                self.counters[key][EXHAUSTED] += 1
            if rec[STARTS]:
                self._observe_duration(key, D_FAILED, ts - rec[STARTS][-1])
            self._finish(uuid, rec, key, 2, ts)

    def _task_retried(self, uuid: str, rec: _Rec, key: _Key, ev: _Ev, ts: float) -> None:
        self._count_by_label(self.retried, key, self._exception(ev.get("exception"), ev.get("traceback")))
        stamps = self._stamps.get(key)
        if stamps is None or not stamps[4]:
            self._stamp(key, 4, ts)
        elif ts > stamps[4]:
            stamps[4] = ts
        if rec is None:  # after the task's end: the attempt it closes was left open in the finished memory
            done = self._finished.get(uuid)
            if done is not None and len(done[2]) > 1:  # the last start is the final attempt's
                self._observe_duration(key, D_RETRIED, ts - done[2][0])
                self._finished.put(uuid, (done[0], done[1], done[2][1:], done[3]))
            return
        start, starts = self._take_start(uuid, rec, key)
        if start is not None:
            self._observe_duration(key, D_RETRIED, ts - start)
        self._tasks[uuid] = (key, rec[ATTEMPTS], starts, rec[RETRIES], rec[WORKER] if starts else None,
                             self.clock(), None)

    def _task_rejected(self, uuid: str, rec: _Rec, key: _Key, ev: _Ev, ts: float) -> None:
        self.counters[key][REJECTED] += 1
        if rec is None:
            return
        if ev.get("requeue") is False:  # dropped (or dead-lettered): this delivery is over
            self._finish(uuid, rec, key, 8, ts)
            return
        # Requeued: the attempt is over, the task is not; the message comes back with a task-received.
        _, starts = self._take_start(uuid, rec, key)
        self._tasks[uuid] = (key, rec[ATTEMPTS], starts, rec[RETRIES], rec[WORKER] if starts else None,
                             self.clock(), None)

    def _task_revoked(self, uuid: str, rec: _Rec, key: _Key, ev: _Ev, ts: float) -> None:
        if ev.get("expired") is True:
            self._count_by_label(self.revoked, key, "expired")
        elif ev.get("terminated") is True:
            self._count_by_label(self.revoked, key, "terminated")
        else:
            self.counters[key][REVOKED] += 1
        if rec is not None:
            self._finish(uuid, rec, key, 4, ts)

    def _observe_duration(self, key: _Key, state: int, seconds: float) -> None:
        if not 0.0 <= seconds <= MAX_OBSERVED_SECONDS:  # NaN, clock skew, or a poisoned runtime
            seconds = 0.0
        hkey = (key[0], key[1], state)
        hist = self.durations.get(hkey)
        if hist is None:
            if not self._room(len(self._dbounds) + 3):  # buckets, +Inf, _sum, _count
                hkey = (*self._overflow_key(), state)
                hist = self.durations.get(hkey)
            if hist is None:
                hist = self.durations[hkey] = Histogram(len(self._dbounds))
        hist.counts[bisect_left(self._dbounds, seconds)] += 1
        hist.total += seconds

    def _observe_wait(self, key: _Key, seconds: float) -> None:
        if not 0.0 <= seconds <= MAX_OBSERVED_SECONDS:
            seconds = 0.0
        hist = self.queue_wait.get(key)
        if hist is None:
            if not self._room(len(self._wbounds) + 3):
                key = self._overflow_key()
                hist = self.queue_wait.get(key)
            if hist is None:
                hist = self.queue_wait[key] = Histogram(len(self._wbounds))
        hist.counts[bisect_left(self._wbounds, seconds)] += 1
        hist.total += seconds

    # ------------------------------------------------------------------ lost tasks
    def _lose(self, uuid: str) -> None:
        """A started task whose worker is gone (or no longer runs it): not active any more, counted in
        celery_task_lost_total. Its record stays, so a later event for it still counts normally."""
        self._unrun_stall(uuid)
        rec = self._tasks.get(uuid)
        if rec is None or rec[HELD] is not None or not rec[STARTS]:
            return
        key = rec[K]
        self.active[key] -= len(rec[STARTS])
        self.lost[key] += 1
        if rec[WORKER] is not None:
            self._unrun(rec[WORKER], uuid)
        self._tasks[uuid] = (key, rec[ATTEMPTS], (), rec[RETRIES], None, rec[TOUCHED], None)

    def _lose_worker(self, hostname: str) -> None:
        for uuid in [u for u, (_, host) in self._orphans.items() if host == hostname]:
            self._unrun_stall(uuid)  # evicted from the table, so not in _running: found here
        for uuid in list(self._running.get(hostname, ())):
            self._lose(uuid)
        self._running.pop(hostname, None)

    def _reconcile(self, hostname: str, rec: WorkerRecord, ts: float) -> None:
        """The worker's heartbeat says how many tasks it runs. Fewer than we hold for it means tasks
        ended without an event (``Ignore``, a crashed child whose message went back): the excess,
        oldest first and started before the heartbeat, is suspect; still in excess at the next
        heartbeat (its final event may merely be in flight: Celery buffers task events but not
        heartbeats), it is lost."""
        running = self._running.get(hostname)
        if not running:
            rec.suspects = ()
            return
        excess = len(running) - int(rec.active)
        if excess <= 0:
            rec.suspects = ()
            return
        # The first ``excess`` only: the scan stops there instead of walking all the worker runs.
        candidates = list(islice((u for u, started_at in running.items() if started_at < ts), excess))
        suspects = rec.suspects
        for uuid in candidates:
            if uuid in suspects:
                self._lose(uuid)
        rec.suspects = tuple(u for u in candidates if u not in suspects)

    # ------------------------------------------------------------------ worker events
    def _worker(self, ev: Mapping[str, Any], now: float, ts: float) -> tuple[str, WorkerRecord] | None:
        hostname = ev.get("hostname")
        if not isinstance(hostname, str) or not hostname:
            return None
        hostname = label_value(hostname)
        if not hostname:  # nothing left once made safe ("\x00")
            return None
        rec = self.workers.get(hostname)
        if rec is None:
            if len(self.workers) >= self.settings.max_workers:
                self.overflow["worker"] += 1
                return None
            rec = self.workers[hostname] = WorkerRecord(seen=now, heartbeat_seen=now, heartbeat_ts=ts)
        return hostname, rec

    def _worker_alive(self, ev: Mapping[str, Any], ts: float) -> None:
        now = self.clock()
        found = self._worker(ev, now, ts)
        if found is None:
            return
        hostname, rec = found
        rec.seen = rec.heartbeat_seen = now
        rec.heartbeat_ts = ts
        rec.online = True
        active = ev.get("active")
        # Bounded: Inf (JSON 1e999) or 1e300 would otherwise be served until the worker's next heartbeat.
        if isinstance(active, (int, float)) and not isinstance(active, bool) and 0 <= active <= 1e6:
            rec.active = float(active)
            if ev["type"] == "worker-heartbeat":
                self._reconcile(hostname, rec, ts)
        if ev["type"] == "worker-online" or not rec.version:
            ver, system = ev.get("sw_ver"), ev.get("sw_sys")
            rec.version = label_value(ver, 64) if isinstance(ver, str) else ""
            rec.system = label_value(system, 64) if isinstance(system, str) else ""

    def _worker_offline(self, ev: Mapping[str, Any], ts: float) -> None:
        now = self.clock()
        found = self._worker(ev, now, ts)
        if found is not None:
            hostname, rec = found
            rec.seen = now
            rec.online = False
            rec.active = 0.0
            rec.suspects = ()
            # A warm shutdown waits for its tasks and sends their events first: whatever it still runs
            # now is lost (a cold shutdown, or a child killed on the way out).
            self._lose_worker(hostname)

    # ------------------------------------------------------------------ reading
    def snapshot(self) -> Snapshot:
        """Copy what collectors need. Call with ``lock`` held (``take_snapshot`` does that)."""
        now = self.clock()
        purge = self.settings.worker_purge_after
        return Snapshot(
            now=now,
            counters={k: v[:] for k, v in self.counters.items()},
            failed=dict(self.failed),
            retried=dict(self.retried),
            durations={k: h.copy() for k, h in self.durations.items()},
            queue_wait={k: h.copy() for k, h in self.queue_wait.items()},
            active=dict(self.active),
            # Departed workers vanish from the scrape as soon as they pass the purge age, even if the
            # event loop has not run its housekeeping yet.
            workers={
                h: WorkerRecord(**vars(w)) for h, w in self.workers.items() if now - w.seen <= purge
            },
            events_by_type=dict(self.events_by_type),
            invalid_by_reason=dict(self.invalid_by_reason),
            overflow=dict(self.overflow),
            evicted=dict(self.evicted),
            tracked_tasks=len(self._tasks),
            last_event_ts=self.last_event_ts,
            workers_purged=self.workers_purged,
            duration_buckets=self._dbounds,
            queue_wait_buckets=self._wbounds,
            worker_timeout=self.settings.worker_timeout,
            queues_seen=tuple(self._queues),
            lost=dict(self.lost),
            revoked=dict(self.revoked),
            ignored=dict(self.ignored),
            unnamed_tasks=self.unnamed_tasks,
            oldest_waiting=self._waiting.oldest_by_queue(self._stall_key),
            oldest_running=self._run_ages.oldest_by_key(self._stall_key),
            last_events={k: v[:] for k, v in self._stamps.items()},
            stall_untracked={"waiting_full": self._waiting.untracked,
                             "waiting_expired": self._waiting.expired,
                             "running_full": self._run_ages.untracked},
        )

    def take_snapshot(self) -> Snapshot:
        with self.lock:
            return self.snapshot()

    def queues_seen(self) -> tuple[str, ...]:
        """Queue names seen in task-sent events (read by the broker pollers; a tuple copy is atomic)."""
        return tuple(self._queues)
