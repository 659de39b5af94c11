"""What the cluster state is configured with: ``StateSettings`` (the slice of the configuration it
receives; ``exporter.config.state_settings`` builds it from the options; the default histogram buckets
are the options', re-exported here), and the fixed limits that bound what an outsider can make the state
hold."""

from __future__ import annotations

from dataclasses import dataclass

from exporter.options import DEFAULT_DURATION_BUCKETS, DEFAULT_QUEUE_WAIT_BUCKETS

__all__ = ["DEFAULT_DURATION_BUCKETS", "DEFAULT_QUEUE_WAIT_BUCKETS", "SENT_AT", "StateSettings"]

# Attempts published or received but not yet started, kept per task (entries.attempt_index).
MAX_PENDING_ATTEMPTS = 8
# Open attempts kept per task: more are a hostile stream (or lost events); the oldest is dropped.
MAX_STARTS = 4
# Events held for a task not yet seen named (held.Held): past this the task is counted as "unknown" at
# once rather than holding more.
MAX_HELD_EVENTS = 8
# How long nameless events wait for their task's name (a task-revoked of an expired task, published at
# receipt, overtakes the producer's task-sent): then they count under "unknown". Ticks come every 5 s.
HOLD_SECONDS = 10.0
# Raw (name, queue) pairs remembered by Series.key_for; past this, keys are still right, only computed
# each time.
KEY_CACHE_SIZE = 4_096
# Task names whose queue is remembered (learnt from task-sent, or routed once).
ROUTE_CACHE_SIZE = 100_000
# Distinct event types counted by name in celery_exporter_events_total; Celery's own always are.
MAX_EVENT_TYPES = 64
# Durations and waits outside [0, a year] are clock trouble or hostile input; they are observed as 0 like
# NaN, since a single 1e300 (or Inf) would otherwise stick in the histogram's _sum for good.
MAX_OBSERVED_SECONDS = 365 * 86_400.0


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
# The key under which decode keeps a clamped event's own timestamp (one stamped too far ahead is applied
# with its arrival time): the workers room reads it for the clock-skew check.
SENT_AT = "exporter_sent_at"
