"""The cluster state: everything the event stream teaches the exporter, fed one decoded event at a time
by the event loop (the only writer) and copied into a ``Snapshot`` by scrapes. One concern per room:

======================  ========================================================================
``cluster``             ``ClusterState``: the lock, housekeeping (``tick``), snapshots, sizes
``core``                hot path: ``apply_many``, dispatch, task-sent/received, nameless routing
``attempts``            hot path: what task-started, -succeeded, -failed, -retried, -rejected and
                        -revoked do to a task's attempts
``rules``               what each event type does (counter, timestamp slot, done bit, attempt)
``table``               the task table: an LRU of entries, eviction, a task's way out
``entries``             the entry layout, attempts, the finished-task memory
``series``              label guards and caps, route learning, the series budget, accumulators
``held``                nameless events held until their task's name comes (or ``unknown``)
``workers``             worker liveness, the running map, reconcile, lost tasks, purge, missed
                        events (heartbeats' ``processed`` against the task-started received)
``inflight``            tasks the workers said they hold (the inventory), reconnect suspects
``stalls``              the waiting and running trackers and their orphans
``snapshot``            ``Snapshot``, ``WorkerRecord``, ``Histogram``, ``Sizes``
``settings``            ``StateSettings``, default buckets, fixed limits
======================  ========================================================================

The path of one event, a task-started for a task the table holds (docs/architecture.md draws it):
``Ingest`` reads the clock once per batch and calls ``Core.apply_many(events, now)`` under the lock;
``apply_many`` counts the type, finds the task's entry in the table (``table``, layout in ``entries``)
and calls the task-started handler (``attempts``), which reads its row of ``rules.RULES``, adds to the
counter and timestamp slot and observes the queue wait (``series``), moves the task from the waiting to
the running tracker (``stalls``) and into its worker's running map (``workers``), and writes the task's
new entry. Scrapes copy it all with ``ClusterState.snapshot`` (``snapshot``).

Memory is bounded everywhere an outsider controls a key or a size: the task table is an LRU capped by
``max_tracked_tasks`` plus an age limit, the finished-task memory by ``max_finished_tasks``, distinct
task names, queues, exception classes and workers are capped (overflow folds into ``OVERFLOW_LABEL`` and
is counted), so is the total of per-task series (``max_series``), and every string that can become a
label value or a key is made valid UTF-8 and cut to a byte limit where it enters (``label_value``).
Time comes from the injected ``clock``, so time-outs are tested without sleeping. The package imports
nothing from ``exporter`` but the leaves ``exporter.labels``, ``exporter.options`` and ``exporter.inflight``.
"""

from __future__ import annotations

from exporter.labels import OVERFLOW_LABEL, UNKNOWN_TASK, exception_class, label_value, parse_eta, parse_iso
from exporter.state.cluster import ClusterState
from exporter.state.rules import (
    D_FAILED,
    D_RETRIED,
    D_SUCCEEDED,
    DURATION_STATES,
    EXHAUSTED,
    N_COUNTERS,
    RECEIVED,
    REJECTED,
    REVOKED,
    RULES,
    SENT,
    STAMPED_STATES,
    STARTED,
    SUCCEEDED,
)
from exporter.state.settings import (
    DEFAULT_DURATION_BUCKETS,
    DEFAULT_QUEUE_WAIT_BUCKETS,
    HOLD_SECONDS,
    StateSettings,
)
from exporter.state.snapshot import Histogram, Sizes, Snapshot, WorkerRecord

__all__ = [
    "DEFAULT_DURATION_BUCKETS",
    "DEFAULT_QUEUE_WAIT_BUCKETS",
    "DURATION_STATES",
    "D_FAILED",
    "D_RETRIED",
    "D_SUCCEEDED",
    "EXHAUSTED",
    "HOLD_SECONDS",
    "N_COUNTERS",
    "OVERFLOW_LABEL",
    "RECEIVED",
    "REJECTED",
    "REVOKED",
    "RULES",
    "SENT",
    "STAMPED_STATES",
    "STARTED",
    "SUCCEEDED",
    "UNKNOWN_TASK",
    "ClusterState",
    "Histogram",
    "Sizes",
    "Snapshot",
    "StateSettings",
    "WorkerRecord",
    "exception_class",
    "label_value",
    "parse_eta",
    "parse_iso",
]
