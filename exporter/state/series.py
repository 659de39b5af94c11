"""The per-task series and the guards that bound them: the accumulators collectors read (counters by
``(task_name, queue)``, failures and retries by exception class, revocations by reason, histograms,
active and lost gauges, newest-event timestamps), the caps on distinct task names, queues and exception
classes, the total series budget (``max_series``), and the queue a task name's events are labelled with
when they carry none (learnt from task-sent, else ``task_routes``, else the default queue).

Past a cap a value folds into ``OVERFLOW_LABEL``; past the budget a new series folds into the one
overflow key. Both are counted in ``overflow``.
"""

from __future__ import annotations

import fnmatch
import re
from bisect import bisect_left
from typing import Any

from exporter.labels import MAX_LABEL_BYTES, OVERFLOW_LABEL, UNKNOWN_TASK, exception_class, label_value
from exporter.state.rules import N_COUNTERS, STAMPED_STATES
from exporter.state.settings import KEY_CACHE_SIZE, MAX_OBSERVED_SECONDS, ROUTE_CACHE_SIZE, StateSettings
from exporter.state.snapshot import Histogram

_Key = tuple[str, str]
# Series one new (task_name, queue) key adds: the plain counters, failed{exception=""},
# retried{exception=""}, tasks_active, task_lost.
_KEY_SERIES = N_COUNTERS + 4
OVERFLOW_KEY = (OVERFLOW_LABEL, OVERFLOW_LABEL)


class Series:
    """Label guards, the series budget and the accumulators; the core aliases the dicts it writes."""

    def __init__(self, s: StateSettings) -> None:
        self.settings = s
        self.max_series = s.max_series
        self.count = 0  # series in use, against max_series
        self.overflow: dict[str, int] = {"task_name": 0, "exception": 0, "worker": 0, "queue": 0, "series": 0}
        self.counters: dict[_Key, list[int]] = {}
        self.failed: dict[tuple[str, str, str], int] = {}
        self.retried: dict[tuple[str, str, str], int] = {}
        self.revoked: dict[tuple[str, str, str], int] = {}  # terminated and expired; plain ones in counters
        self.durations: dict[tuple[str, str, int], Histogram] = {}
        self.queue_wait: dict[_Key, Histogram] = {}
        self.active: dict[_Key, int] = {}
        self.lost: dict[_Key, int] = {}
        # (task_name, queue) -> newest timestamp per STAMPED_STATES (0.0: no series yet).
        self.stamps: dict[_Key, list[float]] = {}
        self.dbounds = s.duration_buckets
        self.wbounds = s.queue_wait_buckets
        self.names: set[str] = set()
        self.exceptions: set[str] = set()
        self.queues: dict[str, None] = {}  # in the order first seen
        self._routes = tuple((re.compile(fnmatch.translate(g)), q) for g, q in s.task_routes)
        self.route_cache: dict[str, str] = {}
        self.key_cache: dict[tuple[Any, Any], _Key] = {}
        self._canonical: dict[_Key, _Key] = {}

    def room(self, n: int) -> bool:
        """Whether ``n`` more per-task series fit under ``max_series`` (taken if so; counted if not)."""
        if self.count + n <= self.max_series:
            self.count += n
            return True
        self.overflow["series"] += 1
        return False

    def key_for(self, name: Any, queue: Any) -> _Key:
        """The canonical ``(task_name, queue)`` label key for an event's raw name and queue.

        One tuple per key, shared by every task-table entry (a fresh tuple of the event's own strings
        cost ~170 bytes a tracked task), and a cache from the raw values so the guards run once per
        distinct pair. Results that counted an overflow are not cached, so every such event is counted.
        """
        cacheable = False
        if name.__class__ is str and (queue is None or queue.__class__ is str):
            key = self.key_cache.get((name, queue))
            if key is not None:
                return key
            # Only short raw values: the cache must not keep a hostile megabyte-long name alive.
            cacheable = len(name) <= MAX_LABEL_BYTES and (queue is None or len(queue) <= MAX_LABEL_BYTES)
        ov = self.overflow
        overflowed = ov["task_name"] + ov["queue"] + ov["series"]
        key = self._guard_key(name, queue)
        key = self._canonical.setdefault(key, key)
        if (cacheable and len(self.key_cache) < KEY_CACHE_SIZE
                and overflowed == ov["task_name"] + ov["queue"] + ov["series"]):
            self.key_cache[(name, queue)] = key
        return key

    def _guard_key(self, name: Any, queue: Any) -> _Key:
        if not isinstance(name, str) or not name:
            name = UNKNOWN_TASK
        elif name not in self.names:
            name = label_value(name) or UNKNOWN_TASK
            if name in self.names or name == UNKNOWN_TASK:
                pass
            elif len(self.names) >= self.settings.max_task_names:
                self.overflow["task_name"] += 1
                name = OVERFLOW_LABEL
            else:
                self.names.add(name)
        if not isinstance(queue, str) or not queue:
            queue = self.route(name)
        elif queue not in self.queues:
            queue = label_value(queue)
            if queue in self.queues:
                pass
            elif not queue:
                queue = self.route(name)
            elif len(self.queues) >= self.settings.max_queues:
                self.overflow["queue"] += 1
                queue = OVERFLOW_LABEL
            else:
                self.queues[queue] = None
        key = (name, queue)
        if key not in self.counters:
            if not self.room(_KEY_SERIES):
                return self.overflow_key()
            self._init_key(key)
        return key

    def _init_key(self, key: _Key) -> None:
        # Every series of a task starts at zero, so rate() and ratios work before the first failure.
        self.counters[key] = [0] * N_COUNTERS
        self.failed[(*key, "")] = 0
        self.retried[(*key, "")] = 0
        self.active[key] = 0
        self.lost[key] = 0

    def overflow_key(self) -> _Key:
        if OVERFLOW_KEY not in self.counters:  # past max_series: the one key that may still be added
            self._init_key(OVERFLOW_KEY)
        return OVERFLOW_KEY

    def learn_route(self, raw_name: Any, key: _Key) -> None:
        """Remember the queue task-sent events give a task name, for that name's events that arrive
        without one: a task-received that overtakes its task-sent (they travel on different
        connections) then still gets the queue producers really use, not the configured fallback."""
        name, queue = key
        if queue == OVERFLOW_LABEL or self.route_cache.get(name) == queue:
            return
        if name in self.route_cache or len(self.route_cache) < ROUTE_CACHE_SIZE:
            self.route_cache[name] = queue
            if raw_name.__class__ is str:
                self.key_cache.pop((raw_name, None), None)

    def route(self, name: str) -> str:
        queue = self.route_cache.get(name)
        if queue is None:
            queue = self.settings.default_queue
            for pattern, target in self._routes:
                if pattern.match(name):
                    queue = target
                    break
            if len(self.route_cache) < ROUTE_CACHE_SIZE:
                self.route_cache[name] = queue
        return queue

    def stamp(self, key: _Key, i: int, ts: float) -> None:
        """Newest event timestamp of kind ``STAMPED_STATES[i]`` for ``key``; a new series must fit under
        ``max_series`` (else it folds into the overflow key)."""
        stamps = self.stamps.get(key)
        if stamps is None or not stamps[i]:
            if not self.room(1):
                key = OVERFLOW_KEY
            stamps = self.stamps.get(key)
            if stamps is None:
                stamps = self.stamps[key] = [0.0] * len(STAMPED_STATES)
        if ts > stamps[i]:
            stamps[i] = ts

    def exception(self, text: Any, traceback: Any = None) -> str:
        exc = exception_class(text, traceback)
        if exc not in self.exceptions:
            if len(self.exceptions) >= self.settings.max_exception_types:
                self.overflow["exception"] += 1
                return OVERFLOW_LABEL
            self.exceptions.add(exc)
        return exc

    def count_by_label(self, table: dict[tuple[str, str, str], int], key: _Key, label: str) -> None:
        """+1 on ``table[(*key, label)]``, a series that may be new: past ``max_series`` it folds."""
        lkey = (key[0], key[1], label)
        if lkey in table:
            table[lkey] += 1
            return
        if not self.room(1):
            lkey = (*self.overflow_key(), OVERFLOW_LABEL)
        table[lkey] = table.get(lkey, 0) + 1

    def observe_duration(self, key: _Key, state: int, seconds: float) -> None:
        if not 0.0 <= seconds <= MAX_OBSERVED_SECONDS:  # NaN, clock skew, or a poisoned runtime
            seconds = 0.0
        hkey = (key[0], key[1], state)
        hist = self.durations.get(hkey)
        if hist is None:
            if not self.room(len(self.dbounds) + 3):  # buckets, +Inf, _sum, _count
                hkey = (*self.overflow_key(), state)
                hist = self.durations.get(hkey)
            if hist is None:
                hist = self.durations[hkey] = Histogram(len(self.dbounds))
        hist.counts[bisect_left(self.dbounds, seconds)] += 1
        hist.total += seconds

    def observe_wait(self, key: _Key, seconds: float) -> None:
        if not 0.0 <= seconds <= MAX_OBSERVED_SECONDS:
            seconds = 0.0
        hist = self.queue_wait.get(key)
        if hist is None:
            if not self.room(len(self.wbounds) + 3):
                key = self.overflow_key()
                hist = self.queue_wait.get(key)
            if hist is None:
                hist = self.queue_wait[key] = Histogram(len(self.wbounds))
        hist.counts[bisect_left(self.wbounds, seconds)] += 1
        hist.total += seconds
