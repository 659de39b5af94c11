"""The value types and pure helpers of the cluster state: settings, label and size limits, histograms,
task-table entries and their attempt helpers, worker records, snapshots, and the parsers that reduce event
fields to bounded label values (exception classes, ISO times). ``exporter.state`` holds the one class
that mutates them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from exporter.labels import (  # noqa: F401  (re-exported for the state's importers)
    MAX_LABEL_BYTES,
    MAX_LABEL_LENGTH,
    MAX_UUID_BYTES,
    OVERFLOW_LABEL,
    UNKNOWN_TASK,
    exception_class,
    label_value,
    parse_eta,
    parse_iso,
)

# Indexes into the per-(task_name, queue) counter list.
SENT, RECEIVED, STARTED, SUCCEEDED, REJECTED, REVOKED, EXHAUSTED = range(7)
N_COUNTERS = 7
# Indexes into the duration histogram list per (task_name, queue).
D_SUCCEEDED, D_FAILED, D_RETRIED = range(3)
DURATION_STATES = ("succeeded", "failed", "retried")

MAX_PENDING_ATTEMPTS = 8
# Events held for a task not yet seen named (see ClusterState._hold): past this the task is counted as
# "unknown" at once rather than holding more.
MAX_HELD_EVENTS = 8
# Raw (name, queue) pairs remembered by _key_for; past this, keys are still right, only computed each time.
KEY_CACHE_SIZE = 4_096
# celery_task_revoked_total{reason}: from the task-revoked event's own flags.
REVOKE_REASONS = ("revoked", "terminated", "expired")
# Distinct event types counted by name in celery_exporter_events_total; Celery's own always are.
MAX_EVENT_TYPES = 64
# Durations and waits outside [0, a year] are clock trouble or hostile input; they are observed as 0 like
# NaN, since a single 1e300 (or Inf) would otherwise stick in the histogram's _sum for good.
MAX_OBSERVED_SECONDS = 365 * 86_400.0

DEFAULT_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
DEFAULT_QUEUE_WAIT_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


@dataclass(frozen=True)
class StateSettings:
    """The slice of the configuration that ClusterState needs. Its defaults live in one place, the
    ``OPTIONS`` of ``exporter.config``; build it with ``exporter.config.state_settings``."""

    max_tracked_tasks: int
    task_max_age: float
    worker_timeout: float
    worker_purge_after: float
    default_queue: str
    task_routes: tuple[tuple[str, str], ...]
    duration_buckets: tuple[float, ...]
    queue_wait_buckets: tuple[float, ...]
    max_task_names: int
    max_exception_types: int
    max_workers: int
    max_queues: int
    # Finished tasks remembered (uuid -> name, queue) so that their late events (task-rejected after
    # task-failed, a redelivered terminal event) keep their name.
    max_finished_tasks: int
    # Total series across the per-task families; the default keeps a full scrape well under a second
    # (docs/metrics.md, "Series cap").
    max_series: int


class Histogram:
    """Per-bucket counts (non-cumulative, last slot is +Inf) and a sum; cumulated at scrape time."""

    __slots__ = ("counts", "total")

    def __init__(self, n_bounds: int) -> None:
        self.counts = [0] * (n_bounds + 1)
        self.total = 0.0

    def copy(self) -> Histogram:
        h = Histogram.__new__(Histogram)
        h.counts = self.counts[:]
        h.total = self.total
        return h


# The task table maps a task uuid to an entry, what we remember about the task between its events:
#     (key, attempts, starts, retries, worker, touched, held)
# ``starts`` holds the timestamps of the task-started events whose attempt has not ended yet, oldest
# first (normally zero or one; two when a retry's task-started overtakes the task-retried of the attempt
# before it); each one counts in celery_tasks_active. ``worker`` is the (sanitised) hostname of the
# latest task-started, so a lost worker's tasks can be found. ``held`` is None for a task seen named;
# for a task whose first events came without a name it holds those events (see ClusterState._hold).
# ``attempts`` holds the attempts published or received but not yet started, oldest first, each as
# ``(retries, sent_ts, eta_ts, received_ts)``. Events of consecutive attempts arrive out of order (a
# retry's task-sent and task-received often overtake the task-started of the attempt that retried, because
# the parent and child processes publish on different connections), so task-started is matched to the
# oldest received attempt rather than to whatever came last.
#
# Entries are tuples of atomic values, replaced rather than mutated, because the cyclic garbage collector
# stops tracking such tuples: a full table (100,000 tasks by default) then adds nothing to its work. As
# objects and lists, a full table made each full collection walk ~250,000 containers, a pause of ~200 ms
# (on the benchmark machine) that stalled ingest and scrapes alike every few seconds.
K, ATTEMPTS, STARTS, RETRIES, WORKER, TOUCHED, HELD = range(7)
TaskEntry = tuple[Any, ...]
Attempt = tuple[Any, Any, Any, Any]


def attempt_index(attempts: tuple[Attempt, ...], n: int) -> tuple[tuple[Attempt, ...], int]:
    """``attempts`` with an attempt ``n`` in it, and its index (-1 if adding it pushed it past the cap)."""
    for i, att in enumerate(attempts):
        if att[0] == n:
            return attempts, i
    new = (n, None, None, None)
    attempts = (*attempts, new)
    if len(attempts) > 1:
        attempts = tuple(sorted(attempts, key=_first))
        if len(attempts) > MAX_PENDING_ATTEMPTS:
            attempts = attempts[1:]
    for i, att in enumerate(attempts):
        if att is new:
            return attempts, i
    return attempts, -1


def replace_attempt(attempts: tuple[Attempt, ...], i: int, att: Attempt) -> tuple[Attempt, ...]:
    return (*attempts[:i], att, *attempts[i + 1:])


def take_started_attempt(attempts: tuple[Attempt, ...]) -> tuple[Attempt | None, tuple[Attempt, ...]]:
    """The attempt a task-started belongs to (the oldest one a worker has received) and the rest."""
    for i, att in enumerate(attempts):
        if att[3] is not None:
            return att, (*attempts[:i], *attempts[i + 1:])
    if attempts:
        return attempts[0], attempts[1:]
    return None, attempts


def retries_of(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _first(att: Attempt) -> Any:
    return att[0]


# A finished task, remembered: (key, terminal-event bits, starts, end timestamp). ``starts`` are the
# attempts' start times open at the end, the last one being the final attempt's (closed by the end): the
# others wait for their late task-retried. A task-started at one of these times is a repeat.
Done = tuple[Any, int, tuple[float, ...], float]


class _Generation:
    __slots__ = ("bits", "ends", "keys", "starts")

    def __init__(self) -> None:
        # Parallel dicts of atomic values (and shared key tuples): a tuple per finished task would be
        # a new GC-tracked object surviving each collection; 20,000 of them made the event benchmark's
        # young-generation collections 8x as frequent and the state ~30% slower.
        self.keys: dict[str, Any] = {}
        self.bits: dict[str, int] = {}
        self.ends: dict[str, float] = {}
        self.starts: dict[str, Any] = {}  # a float (one start) or a tuple (several) or None


class FinishedTasks:
    """Bounded memory of recently finished tasks (uuid -> ``Done``): two generations, the older dropped
    whole when the younger fills half the size, so remembering a task costs a few dict stores."""

    __slots__ = ("half", "old", "young")

    def __init__(self, size: int) -> None:
        self.half = max(1, size // 2)
        self.young = _Generation()
        self.old = _Generation()

    def get(self, uuid: str) -> Done | None:
        gen = self.young
        key = gen.keys.get(uuid)
        if key is None:
            gen = self.old
            key = gen.keys.get(uuid)
            if key is None:
                return None
        starts = gen.starts[uuid]
        return key, gen.bits[uuid], starts if starts.__class__ is tuple else (starts,) if starts else (), \
            gen.ends[uuid]

    def put(self, uuid: str, done: Done) -> None:
        key, bits, starts, end = done
        self.remember(uuid, key, bits, starts, end)

    def remember(self, uuid: str, key: Any, bits: int, starts: tuple[float, ...], end: float) -> None:
        young = self.young
        young.keys[uuid] = key
        young.bits[uuid] = bits
        young.ends[uuid] = end
        young.starts[uuid] = starts[0] if len(starts) == 1 else starts if starts else None
        if len(young.keys) >= self.half:
            self.old, self.young = young, _Generation()

    def pop(self, uuid: str) -> None:
        for gen in (self.young, self.old):
            if gen.keys.pop(uuid, None) is not None:
                del gen.bits[uuid], gen.ends[uuid], gen.starts[uuid]

    def __len__(self) -> int:
        return len(self.young.keys) + len(self.old.keys)


@dataclass
class WorkerRecord:
    """One Celery node, as seen through its worker-* events."""

    seen: float  # exporter clock of the last event of any kind
    heartbeat_seen: float  # exporter clock of the last worker-online/heartbeat
    heartbeat_ts: float  # the worker's own (offset-adjusted) timestamp of that event
    online: bool = True
    active: float = 0.0
    version: str = ""
    system: str = ""
    # uuids a heartbeat found in excess (the worker reported fewer active tasks than we hold for it);
    # if the next heartbeat still finds them in excess they are counted lost.
    suspects: tuple[str, ...] = ()


@dataclass
class Snapshot:
    """A consistent copy of everything collectors need, taken under the state lock."""

    now: float
    counters: dict[tuple[str, str], list[int]]
    failed: dict[tuple[str, str, str], int]
    retried: dict[tuple[str, str, str], int]
    durations: dict[tuple[str, str, int], Histogram]
    queue_wait: dict[tuple[str, str], Histogram]
    active: dict[tuple[str, str], int]
    workers: dict[str, WorkerRecord]
    events_by_type: dict[str, int]
    invalid_by_reason: dict[str, int]
    overflow: dict[str, int]
    evicted: dict[str, int]
    tracked_tasks: int
    last_event_ts: float | None
    workers_purged: int
    duration_buckets: tuple[float, ...]
    queue_wait_buckets: tuple[float, ...]
    worker_timeout: float
    queues_seen: tuple[str, ...] = field(default_factory=tuple)
    lost: dict[tuple[str, str], int] = field(default_factory=dict)
    revoked: dict[tuple[str, str, str], int] = field(default_factory=dict)
    ignored: dict[str, int] = field(default_factory=dict)
    unnamed_tasks: int = 0
    # The stall signals (exporter.stalls): queue -> enqueued timestamp of its oldest waiting task,
    # (task_name, queue) -> start of its oldest running task, (task_name, queue) -> newest timestamp per
    # STAMPED_STATES (0.0: none), and tasks not tracked because a tracker was full.
    oldest_waiting: dict[str, float] = field(default_factory=dict)
    oldest_running: dict[tuple[str, str], float] = field(default_factory=dict)
    last_events: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    stall_untracked: dict[str, int] = field(default_factory=dict)


