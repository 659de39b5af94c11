"""Per-worker metrics from worker-online/heartbeat/offline events, labelled by Celery node name.

A worker is up while it is online and its last heartbeat is younger than ``--worker-timeout``; once it
has been silent for ``--worker-purge-after`` it is left out of the snapshot and all its series vanish.
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

METRICS = (UP_SPEC, ONLINE_SPEC, ACTIVE_SPEC, HEARTBEAT_SPEC, INFO_SPEC, WORKERS_SPEC)


def worker_up(worker: WorkerRecord, now: float, timeout: float) -> bool:
    """Online, and its last heartbeat arrived within ``timeout`` seconds of ``now`` (our clock)."""
    return worker.online and now - worker.heartbeat_seen <= timeout


def worker_families(snap: Snapshot) -> Iterator[Metric]:
    """Pure: metric families for the workers of one snapshot."""
    up, online, active, heartbeat, info = (
        s.family() for s in (UP_SPEC, ONLINE_SPEC, ACTIVE_SPEC, HEARTBEAT_SPEC, INFO_SPEC)
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
    total = WORKERS_SPEC.family()
    total.add(("up",), n_up)
    total.add(("down",), len(snap.workers) - n_up)
    yield from (up, online, active, heartbeat, info, total)


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
