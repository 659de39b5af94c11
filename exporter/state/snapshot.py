"""What a scrape reads: ``Snapshot``, the consistent copy of the state taken under its lock, and the
value types in it (``Histogram``, ``WorkerRecord``), plus ``Sizes``, a read-only count of what the state
holds (for tests and benchmarks, which have no business in its private dicts).
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
    # Missed events (state/workers.py): the last heartbeat's ``processed`` (tasks the worker accepted
    # since it started; a drop means it restarted), the task-started events received from it (the task
    # event every accepted task sends; duplicates excluded), and the starts its heartbeats report that
    # never arrived, since the exporter first heard it.
    processed: int = 0
    task_events: int = 0
    missed: int = 0
    # The count's baseline: processed and task_events at the first heartbeat seen or the worker's
    # restart (-1: no heartbeat with processed yet), and the shortfall already counted since then.
    base_processed: int = -1
    base_events: int = 0
    deficit: int = 0
    # Seconds the worker's clock runs ahead (+) or behind (-) the exporter's: the largest of its last
    # heartbeats' own timestamp minus our clock at their arrival (``workers.SKEW_SAMPLES`` of them; a
    # heartbeat delayed in transit or in a backlog only ever looks older, so the largest is the truest).
    clock_skew: float | None = None
    skew_samples: tuple[float, ...] = ()


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
    # The stall signals (exporter.state.stalls): queue -> enqueued timestamp of its oldest waiting task,
    # (task_name, queue) -> start of its oldest running task, (task_name, queue) -> newest timestamp per
    # STAMPED_STATES (0.0: none), and tasks not tracked because a tracker was full.
    oldest_waiting: dict[str, float] = field(default_factory=dict)
    oldest_running: dict[tuple[str, str], float] = field(default_factory=dict)
    last_events: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    stall_untracked: dict[str, int] = field(default_factory=dict)
    # celery_exporter_task_events_missed_total (state/workers.py) and events whose timestamp ran too far
    # ahead of the exporter's clock (events/decode.py FUTURE_SKEW), applied with their arrival time.
    events_missed: int = 0
    clamped: int = 0




@dataclass(frozen=True)
class Sizes:
    """How much the state holds, read-only (``ClusterState.sizes``)."""

    tasks: tuple[str, ...]  # uuids in the task table, least recently touched first
    finished: int  # tasks in the finished-task memory
    task_names: int  # distinct task names admitted as label values
    exception_types: int  # distinct exception classes admitted
    routes: int  # task names whose queue is remembered
    series: int  # per-task series in use, against max_series
