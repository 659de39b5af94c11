"""Per-worker metrics from worker-online/heartbeat/offline events, labelled by Celery node name, and
what the heartbeats say the event stream missed.

A worker is up while it is online and its last heartbeat is younger than ``--worker-timeout``; once it
has been silent for ``--worker-purge-after`` it is left out of the snapshot and all its series vanish.
Every heartbeat carries ``processed``, the tasks the worker accepted (started) since it started: served
as ``celery_worker_tasks_accepted_total`` and compared with the task-started events that arrived
(``state/workers.py``), which gives ``celery_exporter_task_events_missed_total``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import Metric

from exporter.collectors.base import MetricSpec, Sources, SpecCollector
from exporter.state import Snapshot, WorkerRecord

UP_SPEC = MetricSpec(
    "celery_worker_up", "gauge",
    "1 while the worker is online and has sent a heartbeat within --worker-timeout, else 0.", ("worker",),
)
ONLINE_SPEC = MetricSpec(
    "celery_worker_online", "gauge",
    "1 until the worker announces its shutdown (worker-offline). A worker with celery_worker_up 0 and "
    "celery_worker_online 1 was lost (crashed, killed or cut off) rather than stopped.", ("worker",),
)
ACTIVE_SPEC = MetricSpec(
    "celery_worker_tasks_active", "gauge", "Tasks the worker is executing, from its last heartbeat.",
    ("worker",),
)
HEARTBEAT_SPEC = MetricSpec(
    "celery_worker_last_heartbeat_timestamp_seconds", "gauge",
    "Unix time of the worker's last heartbeat, as the worker stamped it.", ("worker",),
)
INFO_SPEC = MetricSpec(
    "celery_worker_info", "gauge", "Celery version and system of each worker (always 1).",
    ("worker", "version", "system"),
)
WORKERS_SPEC = MetricSpec(
    "celery_workers", "gauge", "Workers tracked by the exporter, by whether they are up.", ("state",),
)
ACCEPTED_SPEC = MetricSpec(
    "celery_worker_tasks_accepted_total", "counter",
    "Tasks the worker accepted (started) since it started, from its heartbeats' processed field; starts "
    "again from 0 when the worker restarts.", ("worker",),
)
WORKER_MISSED_SPEC = MetricSpec(
    "celery_worker_task_events_missed_total", "counter",
    "Task starts this worker's heartbeats report that never arrived as task-started events, since the "
    "exporter first heard the worker. Growing as fast as celery_worker_tasks_accepted_total: the worker "
    "sends no task events (started without -E).", ("worker",),
)
MISSED_SPEC = MetricSpec(
    "celery_exporter_task_events_missed_total", "counter",
    "Task starts the workers' heartbeats report (processed) that never arrived as task-started events: "
    "events lost in a stream outage, a Redis pub/sub cut or an exporter restart, or workers without "
    "task events. Blind to tasks of a worker that died before its next heartbeat.",
)

METRICS = (UP_SPEC, ONLINE_SPEC, ACTIVE_SPEC, HEARTBEAT_SPEC, INFO_SPEC, WORKERS_SPEC, ACCEPTED_SPEC,
           WORKER_MISSED_SPEC, MISSED_SPEC)


def worker_up(worker: WorkerRecord, now: float, timeout: float) -> bool:
    """Online, and its last heartbeat arrived within ``timeout`` seconds of ``now`` (our clock)."""
    return worker.online and now - worker.heartbeat_seen <= timeout


def worker_families(snap: Snapshot) -> Iterator[Metric]:
    """Pure: metric families for the workers of one snapshot."""
    up, online, active, heartbeat, info, accepted, missed = (
        s.family() for s in (UP_SPEC, ONLINE_SPEC, ACTIVE_SPEC, HEARTBEAT_SPEC, INFO_SPEC, ACCEPTED_SPEC,
                             WORKER_MISSED_SPEC)
    )
    n_up = 0
    for hostname, w in sorted(snap.workers.items()):
        is_up = worker_up(w, snap.now, snap.worker_timeout)
        n_up += is_up
        up.add((hostname,), 1.0 if is_up else 0.0)
        online.add((hostname,), 1.0 if w.online else 0.0)
        active.add((hostname,), w.active if is_up else 0.0)
        heartbeat.add((hostname,), w.heartbeat_ts)
        info.add((hostname, w.version, w.system), 1.0)
        accepted.add((hostname,), w.processed)
        missed.add((hostname,), w.missed)
    total = WORKERS_SPEC.family()
    total.add(("up",), n_up)
    total.add(("down",), len(snap.workers) - n_up)
    all_missed = MISSED_SPEC.family()
    all_missed.add((), snap.events_missed)
    yield from (up, online, active, heartbeat, info, total, accepted, missed, all_missed)


class WorkerCollector(SpecCollector):
    """Serves per-worker metrics from a fresh ClusterState snapshot on every scrape."""

    METRICS = METRICS

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    @classmethod
    def from_sources(cls, sources: Sources) -> WorkerCollector:
        return cls(sources.snapshot)

    def collect(self) -> Iterator[Metric]:
        yield from worker_families(self._snapshot())
