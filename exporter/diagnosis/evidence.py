"""The evidence the checks judge: one immutable ``Evidence`` built from what the exporter already holds,
a state ``Snapshot``, the pollers' last ``SourceView`` per source and the event stream's ``StreamStatus``.

Building it copies a few fields per worker and per queue (both capped), so it is cheap enough for a
scrape; it never talks to a broker or a worker. The checks (``checks.py``) are pure functions of it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from exporter.labels import OVERFLOW_LABEL
from exporter.secrets import redact_text
from exporter.state.snapshot import Snapshot, WorkerRecord

# A worker's clock is read from its heartbeats (WorkerRecord.clock_skew, kept by the workers room): the
# event's own timestamp against the exporter's clock when it arrived. Transit takes milliseconds, so the
# difference is the skew to well under a second.


@dataclass(frozen=True)
class DiagnosisSettings:
    """The slice of the configuration the checks need (``exporter.app.diagnosis_settings`` builds it)."""

    broker_scheme: str  # "redis", "rediss", "amqp", "sqs", ... (the first URL's scheme)
    management_api: bool  # RabbitMQ: --rabbitmq-management-url is set
    caps: Mapping[str, int] = field(default_factory=dict)  # cap name -> configured limit
    started: float = 0.0  # exporter clock when watching began
    grace: float = 5.0  # seconds of watching before silence counts (two heartbeats and a margin)
    poll_interval: float = 5.0  # a queue's absence counts once a poll after the grace has seen the broker
    # Every configured password: masked in the error texts the checks quote (exporter.secrets).
    secrets: tuple[str, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class WorkerFacts:
    name: str
    version: str
    online: bool
    last_heartbeat: float  # exporter clock of its last worker-online/heartbeat
    active: float
    clock_skew: float | None  # seconds its clock runs ahead (+) or behind (-) the exporter's
    processed: int | None  # tasks it accepted while watched, from its heartbeats (None: not known yet)
    task_events: int | None  # task-started events from it while watched (None: not known yet)
    missed: int  # task starts its heartbeats reported that never arrived


@dataclass(frozen=True)
class QueueFacts:
    name: str
    kind: str  # task, retry or dlq
    source: str  # which poller reported it
    depth: float
    reason: str  # why it is reported with this kind


@dataclass(frozen=True)
class Evidence:
    now: float
    watched: float  # seconds since watching began
    settings: DiagnosisSettings
    connected: bool
    connects: int
    reconnects: int
    last_error: str
    events_by_type: Mapping[str, int]
    workers: tuple[WorkerFacts, ...]
    queues_seen: tuple[str, ...]  # queue names the task events taught the state
    polled: bool  # a poll of the broker has succeeded
    poll_sources: int  # pollers configured (0: this broker is not polled)
    queues: tuple[QueueFacts, ...]
    mismatched_options: tuple[str, ...]
    unrouted_dead_letters: Mapping[str, str]
    overflow: Mapping[str, int]  # label -> values folded into __overflow__
    evicted_for_capacity: int  # tracked tasks dropped because --max-tracked-tasks was full
    events_missed: int  # task starts the heartbeats report but the stream never delivered

    @property
    def warmed_up(self) -> bool:
        return self.watched >= self.settings.grace

    @property
    def polled_enough(self) -> bool:
        """Long enough for a poll to have run after workers started with the exporter declared queues."""
        return self.watched >= max(self.settings.grace, self.settings.poll_interval + 1.0)

    def count(self, *types: str) -> int:
        return sum(self.events_by_type.get(t, 0) for t in types)

    @property
    def worker_events(self) -> int:
        return sum(n for t, n in self.events_by_type.items() if t.startswith("worker-"))

    @property
    def task_events(self) -> int:
        return sum(n for t, n in self.events_by_type.items() if t.startswith("task-"))


def worker_facts(name: str, record: WorkerRecord) -> WorkerFacts:
    """``processed`` and ``task_events`` count from the state's baseline (the worker's first heartbeat
    the exporter saw, or its restart): tasks accepted and task events sent *while watched*."""
    known = record.base_processed >= 0  # -1 until a heartbeat carried processed
    return WorkerFacts(
        name=name, version=record.version, online=record.online, last_heartbeat=record.heartbeat_seen,
        active=record.active, clock_skew=record.clock_skew,
        processed=record.processed - record.base_processed if known else None,
        task_events=record.task_events - record.base_events if known else None, missed=record.missed)


def queue_facts(views: Sequence[Any]) -> tuple[list[QueueFacts], tuple[str, ...], dict[str, str], bool]:
    """Queues, mismatched options, unrouted dead letters and whether any poll succeeded, from views."""
    queues: list[QueueFacts] = []
    mismatched: list[str] = []
    unrouted: dict[str, str] = {}
    polled = False
    for view in views:
        result = view.result
        if result is None:
            continue
        polled = True
        why = result.reasons
        for kind, table in (("task", {n: d.ready for n, d in result.queues.items()}),
                            ("retry", result.retry), ("dlq", result.dead_letter)):
            for name, depth in table.items():
                # A DLQ another source also holds is served as <name>@<source> (scheduler._rename).
                reason = why.get(name) or why.get(name.rsplit("@", 1)[0], "")
                if name == OVERFLOW_LABEL:
                    reason = "the queues past --max-queues, summed"
                queues.append(QueueFacts(name, kind, view.source, float(depth), reason))
        mismatched += [o for o in result.mismatched_options if o not in mismatched]
        unrouted.update(result.unrouted_dead_letters)
    return queues, tuple(mismatched), unrouted, polled


def build_evidence(snapshot: Snapshot, views: Sequence[Any], status: Any,
                   settings: DiagnosisSettings) -> Evidence:
    """``snapshot``: a state Snapshot; ``views``: the pollers' SourceViews; ``status``: the StreamStatus."""
    queues, mismatched, unrouted, polled = queue_facts(views)
    workers = tuple(worker_facts(n, r) for n, r in sorted(snapshot.workers.items()))
    return Evidence(
        now=snapshot.now,
        watched=max(0.0, snapshot.now - settings.started),
        settings=settings,
        connected=bool(status.connected),
        connects=int(status.connects),
        reconnects=int(status.reconnects),
        last_error=redact_text(str(status.last_error or ""), settings.secrets),
        events_by_type=dict(snapshot.events_by_type),
        workers=workers,
        queues_seen=tuple(snapshot.queues_seen),
        polled=polled,
        poll_sources=len(views),
        queues=tuple(queues),
        mismatched_options=mismatched,
        unrouted_dead_letters=unrouted,
        overflow={k: v for k, v in snapshot.overflow.items() if v},
        evicted_for_capacity=int(snapshot.evicted.get("capacity", 0)),
        events_missed=snapshot.events_missed,
    )
