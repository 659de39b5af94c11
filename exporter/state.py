"""ClusterState: everything the event stream teaches us, fed one decoded event dict at a time.

The event loop is the only writer. It calls ``apply()`` for each event while holding ``lock`` for a whole
batch of messages; scrapes take the same lock once to copy a ``Snapshot`` (a few dict copies, bounded by
the cardinality caps, independent of the event rate) and build metric families from the copy outside it.

Memory is bounded everywhere an outsider controls a key: the task table is an LRU capped by
``max_tracked_tasks`` plus an age limit, distinct task names and exception classes are capped (overflow
folds into ``OVERFLOW_LABEL`` and is counted), and so is the number of tracked workers. Time comes from
the injected ``clock``, so time-outs are tested without sleeping.
"""

from __future__ import annotations

import fnmatch
import re
import threading
import time
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from exporter.records import (
    ACTIVE,
    ATTEMPTS,
    D_FAILED,
    D_RETRIED,
    D_SUCCEEDED,
    DEFAULT_DURATION_BUCKETS,
    DEFAULT_QUEUE_WAIT_BUCKETS,
    DURATION_STATES,
    EXHAUSTED,
    KEY_CACHE_SIZE,
    MAX_EVENT_TYPES,
    MAX_LABEL_LENGTH,
    MAX_OBSERVED_SECONDS,
    N_COUNTERS,
    OVERFLOW_LABEL,
    RECEIVED,
    REJECTED,
    RETRIES,
    REVOKED,
    SENT,
    STARTED,
    STARTED_AT,
    SUCCEEDED,
    TOUCHED,
    Histogram,
    K,
    Snapshot,
    StateSettings,
    TaskEntry,
    WorkerRecord,
    attempt_index,
    exception_class,
    parse_eta,
    parse_iso,
    replace_attempt,
    retries_of,
    take_started_attempt,
)

# The value types live in exporter.records; they are re-exported here, where their users look for them.
__all__ = [
    "DEFAULT_DURATION_BUCKETS",
    "DEFAULT_QUEUE_WAIT_BUCKETS",
    "DURATION_STATES",
    "D_FAILED",
    "D_RETRIED",
    "D_SUCCEEDED",
    "EXHAUSTED",
    "MAX_LABEL_LENGTH",
    "N_COUNTERS",
    "OVERFLOW_LABEL",
    "RECEIVED",
    "REJECTED",
    "REVOKED",
    "SENT",
    "STARTED",
    "SUCCEEDED",
    "ClusterState",
    "Histogram",
    "Snapshot",
    "StateSettings",
    "WorkerRecord",
    "exception_class",
    "parse_eta",
    "parse_iso",
]


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
        self._routes = tuple((re.compile(fnmatch.translate(g)), q) for g, q in s.task_routes)
        self._route_cache: dict[str, str] = {}
        self._key_cache: dict[tuple[Any, Any], tuple[str, str]] = {}
        self._canonical: dict[tuple[str, str], tuple[str, str]] = {}
        self._dbounds = s.duration_buckets
        self._wbounds = s.queue_wait_buckets
        self.counters: dict[tuple[str, str], list[int]] = {}
        self.failed: dict[tuple[str, str, str], int] = {}
        self.retried: dict[tuple[str, str, str], int] = {}
        self.durations: dict[tuple[str, str, int], Histogram] = {}
        self.queue_wait: dict[tuple[str, str], Histogram] = {}
        self.active: dict[tuple[str, str], int] = {}
        self.workers: dict[str, WorkerRecord] = {}
        self._names: set[str] = set()
        self._exceptions: set[str] = set()
        self._queues: dict[str, None] = {}
        self.events_by_type: dict[str, int] = {}
        self.invalid_by_reason: dict[str, int] = {}
        self.overflow: dict[str, int] = {"task_name": 0, "exception": 0, "worker": 0, "queue": 0}
        self.evicted: dict[str, int] = {"capacity": 0, "age": 0}
        self.workers_purged = 0
        self.last_event_ts: float | None = None
        self._handlers: dict[str, Callable[[Mapping[str, Any], float], None]] = {
            "task-sent": self._task_sent,
            "task-received": self._task_received,
            "task-started": self._task_started,
            "task-succeeded": self._task_succeeded,
            "task-failed": self._task_failed,
            "task-retried": self._task_retried,
            "task-rejected": self._task_rejected,
            "task-revoked": self._task_revoked,
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
            by_type[etype] = 1
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

    def tick(self) -> None:
        """Periodic housekeeping from the event loop: purge departed workers and aged-out tasks."""
        now = self.clock()
        purge = self.settings.worker_purge_after
        gone = [h for h, w in self.workers.items() if now - w.seen > purge]
        for hostname in gone:
            del self.workers[hostname]
        self.workers_purged += len(gone)
        self._evict_aged(now)

    # ------------------------------------------------------------------ label guards
    def _key_for(self, name: Any, queue: Any) -> tuple[str, str]:
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
            cacheable = len(name) <= MAX_LABEL_LENGTH and (queue is None or len(queue) <= MAX_LABEL_LENGTH)
        overflowed = self.overflow["task_name"] + self.overflow["queue"]
        key = self._guard_key(name, queue)
        key = self._canonical.setdefault(key, key)
        if (cacheable and len(self._key_cache) < KEY_CACHE_SIZE
                and overflowed == self.overflow["task_name"] + self.overflow["queue"]):
            self._key_cache[(name, queue)] = key
        return key

    def _guard_key(self, name: Any, queue: Any) -> tuple[str, str]:
        if not isinstance(name, str) or not name:
            name = "unknown"
        elif name not in self._names:
            name = name[:MAX_LABEL_LENGTH]
            if name in self._names:
                pass
            elif len(self._names) >= self.settings.max_task_names:
                self.overflow["task_name"] += 1
                name = OVERFLOW_LABEL
            else:
                self._names.add(name)
        if not isinstance(queue, str) or not queue:
            queue = self._route(name)
        elif queue not in self._queues:
            queue = queue[:MAX_LABEL_LENGTH]
            if queue in self._queues:
                pass
            elif len(self._queues) >= self.settings.max_queues:
                self.overflow["queue"] += 1
                queue = OVERFLOW_LABEL
            else:
                self._queues[queue] = None
        key = (name, queue)
        if key not in self.counters:
            self._init_key(key)
        return key

    def _init_key(self, key: tuple[str, str]) -> None:
        # Every series of a task starts at zero, so rate() and ratios work before the first failure.
        self.counters[key] = [0] * N_COUNTERS
        self.failed[(*key, "")] = 0
        self.retried[(*key, "")] = 0
        self.active[key] = 0

    def _learn_route(self, raw_name: Any, key: tuple[str, str]) -> None:
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

    def _exception(self, text: Any) -> str:
        exc = exception_class(text)
        if exc not in self._exceptions:
            if len(self._exceptions) >= self.settings.max_exception_types:
                self.overflow["exception"] += 1
                return OVERFLOW_LABEL
            self._exceptions.add(exc)
        return exc

    # ------------------------------------------------------------------ task table
    def _record(self, uuid: Any) -> TaskEntry | None:
        """The entry of ``uuid`` (moved to the young end of the LRU); the caller stores it back touched,
        or drops it."""
        entry = self._tasks.get(uuid) if isinstance(uuid, str) else None
        if entry is not None:
            self._tasks.move_to_end(uuid)
        return entry

    def _new_record(self, uuid: str, key: tuple[str, str], now: float) -> TaskEntry:
        tasks = self._tasks
        entry = tasks[uuid] = (key, (), None, 0, False, now)
        if len(tasks) > self.settings.max_tracked_tasks:
            _, old = tasks.popitem(last=False)
            self._forget(old)
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
            self._forget(oldest)
            self.evicted["age"] += 1

    def _forget(self, entry: TaskEntry) -> None:
        if entry[ACTIVE]:
            self.active[entry[K]] -= 1

    def _drop(self, uuid: str) -> None:
        self._tasks.pop(uuid, None)

    def _finish(self, entry: TaskEntry | None, key: tuple[str, str]) -> None:
        if entry is not None and entry[ACTIVE]:
            self.active[key] -= 1

    # ------------------------------------------------------------------ task events
    def _task_sent(self, ev: Mapping[str, Any], ts: float) -> None:
        now = self.clock()
        uuid = ev.get("uuid")
        rec = self._record(uuid)
        queue = ev.get("queue") or ev.get("routing_key")
        sent_key = self._key_for(ev.get("name"), queue)
        if queue.__class__ is str:
            self._learn_route(ev.get("name"), sent_key)
        if rec is None:
            key = sent_key
            if isinstance(uuid, str):
                rec = self._new_record(uuid, key, now)
        else:
            # task-received overtook task-sent (they travel on different connections): the task keeps
            # the key its first event gave it, so no counter moves between series.
            key = rec[K]
        if rec is not None:
            n = retries_of(ev.get("retries"))
            attempts, i = attempt_index(rec[ATTEMPTS], n)
            if i >= 0:
                att = attempts[i]
                attempts = replace_attempt(attempts, i, (att[0], ts, parse_eta(ev.get("eta")), att[3]))
            self._tasks[ev["uuid"]] = (key, attempts, rec[STARTED_AT], max(n, rec[RETRIES]), rec[ACTIVE], now)
        self.counters[key][SENT] += 1

    def _lookup(self, ev: Mapping[str, Any], now: float) -> tuple[TaskEntry | None, tuple[str, str]]:
        uuid = ev.get("uuid")
        rec = self._record(uuid)
        if rec is not None:
            return rec, rec[K]
        key = self._key_for(ev.get("name"), None)
        if isinstance(uuid, str):
            return self._new_record(uuid, key, now), key
        return None, key

    def _task_received(self, ev: Mapping[str, Any], ts: float) -> None:
        now = self.clock()
        rec, key = self._lookup(ev, now)
        if rec is not None:
            n = retries_of(ev.get("retries"))
            attempts, i = attempt_index(rec[ATTEMPTS], n)
            if i >= 0:
                att = attempts[i]
                eta = att[2] if att[2] is not None else parse_eta(ev.get("eta"))
                attempts = replace_attempt(attempts, i, (att[0], att[1], eta, ts))
            self._tasks[ev["uuid"]] = (key, attempts, rec[STARTED_AT], max(n, rec[RETRIES]), rec[ACTIVE], now)
        self.counters[key][RECEIVED] += 1

    def _task_started(self, ev: Mapping[str, Any], ts: float) -> None:
        now = self.clock()
        rec, key = self._lookup(ev, now)
        self.counters[key][STARTED] += 1
        if rec is None:
            return
        att, attempts = take_started_attempt(rec[ATTEMPTS])
        if att is not None:
            enqueued = att[1] if att[1] is not None else att[3]
            if enqueued is not None:
                eta = att[2]
                if eta is not None and eta > enqueued:
                    enqueued = eta
                self._observe_wait(key, ts - enqueued)
        if not rec[ACTIVE]:
            self.active[key] += 1
        self._tasks[ev["uuid"]] = (key, attempts, ts, rec[RETRIES], True, now)

    def _task_succeeded(self, ev: Mapping[str, Any], ts: float) -> None:
        rec, key = self._lookup(ev, self.clock())
        self.counters[key][SUCCEEDED] += 1
        runtime = ev.get("runtime")
        if isinstance(runtime, (int, float)) and not isinstance(runtime, bool):
            self._observe_duration(key, D_SUCCEEDED, float(runtime))
        elif rec is not None and rec[STARTED_AT] is not None:
            self._observe_duration(key, D_SUCCEEDED, ts - rec[STARTED_AT])
        if rec is not None:
            self._finish(rec, key)
            self._drop(ev["uuid"])

    def _task_failed(self, ev: Mapping[str, Any], ts: float) -> None:
        rec, key = self._lookup(ev, self.clock())
        exc = self._exception(ev.get("exception"))
        fkey = (key[0], key[1], exc)
        self.failed[fkey] = self.failed.get(fkey, 0) + 1
        if rec is not None:
            if rec[RETRIES] >= 1:
                self.counters[key][EXHAUSTED] += 1
            if rec[STARTED_AT] is not None:
                self._observe_duration(key, D_FAILED, ts - rec[STARTED_AT])
            self._finish(rec, key)
            self._drop(ev["uuid"])

    def _task_retried(self, ev: Mapping[str, Any], ts: float) -> None:
        now = self.clock()
        rec, key = self._lookup(ev, now)
        exc = self._exception(ev.get("exception"))
        rkey = (key[0], key[1], exc)
        self.retried[rkey] = self.retried.get(rkey, 0) + 1
        if rec is not None:
            if rec[STARTED_AT] is not None:
                self._observe_duration(key, D_RETRIED, ts - rec[STARTED_AT])
            self._finish(rec, key)
            self._tasks[ev["uuid"]] = (key, rec[ATTEMPTS], None, rec[RETRIES], False, now)

    def _task_rejected(self, ev: Mapping[str, Any], ts: float) -> None:
        now = self.clock()
        rec, key = self._lookup(ev, now)
        self.counters[key][REJECTED] += 1
        if rec is not None:
            self._finish(rec, key)
            self._tasks[ev["uuid"]] = (key, rec[ATTEMPTS], rec[STARTED_AT], rec[RETRIES], False, now)

    def _task_revoked(self, ev: Mapping[str, Any], ts: float) -> None:
        rec, key = self._lookup(ev, self.clock())
        self.counters[key][REVOKED] += 1
        if rec is not None:
            self._finish(rec, key)
            self._drop(ev["uuid"])

    def _observe_duration(self, key: tuple[str, str], state: int, seconds: float) -> None:
        if not 0.0 <= seconds <= MAX_OBSERVED_SECONDS:  # NaN, clock skew, or a poisoned runtime
            seconds = 0.0
        hkey = (key[0], key[1], state)
        hist = self.durations.get(hkey)
        if hist is None:
            hist = self.durations[hkey] = Histogram(len(self._dbounds))
        hist.counts[bisect_left(self._dbounds, seconds)] += 1
        hist.total += seconds

    def _observe_wait(self, key: tuple[str, str], seconds: float) -> None:
        if not 0.0 <= seconds <= MAX_OBSERVED_SECONDS:
            seconds = 0.0
        hist = self.queue_wait.get(key)
        if hist is None:
            hist = self.queue_wait[key] = Histogram(len(self._wbounds))
        hist.counts[bisect_left(self._wbounds, seconds)] += 1
        hist.total += seconds

    # ------------------------------------------------------------------ worker events
    def _worker(self, ev: Mapping[str, Any], now: float, ts: float) -> WorkerRecord | None:
        hostname = ev.get("hostname")
        if not isinstance(hostname, str) or not hostname:
            return None
        hostname = hostname[:MAX_LABEL_LENGTH]
        rec = self.workers.get(hostname)
        if rec is None:
            if len(self.workers) >= self.settings.max_workers:
                self.overflow["worker"] += 1
                return None
            rec = self.workers[hostname] = WorkerRecord(seen=now, heartbeat_seen=now, heartbeat_ts=ts)
        return rec

    def _worker_alive(self, ev: Mapping[str, Any], ts: float) -> None:
        now = self.clock()
        rec = self._worker(ev, now, ts)
        if rec is None:
            return
        rec.seen = rec.heartbeat_seen = now
        rec.heartbeat_ts = ts
        rec.online = True
        active = ev.get("active")
        # Bounded: Inf (JSON 1e999) or 1e300 would otherwise be served until the worker's next heartbeat.
        if isinstance(active, (int, float)) and not isinstance(active, bool) and 0 <= active <= 1e6:
            rec.active = float(active)
        if ev["type"] == "worker-online" or not rec.version:
            ver, system = ev.get("sw_ver"), ev.get("sw_sys")
            rec.version = ver[:64] if isinstance(ver, str) else ""
            rec.system = system[:64] if isinstance(system, str) else ""

    def _worker_offline(self, ev: Mapping[str, Any], ts: float) -> None:
        now = self.clock()
        rec = self._worker(ev, now, ts)
        if rec is not None:
            rec.seen = now
            rec.online = False
            rec.active = 0.0

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
        )

    def take_snapshot(self) -> Snapshot:
        with self.lock:
            return self.snapshot()

    def queues_seen(self) -> tuple[str, ...]:
        """Queue names seen in task-sent events (read by the broker pollers; a tuple copy is atomic)."""
        return tuple(self._queues)
