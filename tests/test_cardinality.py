"""Cardinality attacks through Ingest: 100,000 task names, 100,000 exception messages and classes, 10,000
worker names, 100,000 event types. What a scrape serves stays within the configured caps, the overflow is
visible in celery_exporter_label_overflow_total, the state's internal tables stay within their bounds,
and tracemalloc shows the memory flat once the caps are reached.

Assertions are on series counts, table sizes and bytes allocated, never on time.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry

from exporter.collectors.stream import StreamCollector
from exporter.collectors.tasks import TaskCollector
from exporter.collectors.workers import WorkerCollector
from exporter.config import state_settings
from exporter.events.ingest import Ingest
from exporter.state import OVERFLOW_LABEL, ClusterState
from exporter.status import StreamStatus
from tests._events import T0, ev, failed, heartbeat, redis_envelope, retried, sent
from tests._reliability_helpers import series_count
from tests._support import FakeClock, parse_samples

CAPS = {"max_task_names": 100, "max_exception_types": 20, "max_workers": 50, "max_queues": 10,
        "max_tracked_tasks": 500, "max_finished_tasks": 500}
BATCH = 200  # events per task.multi message, as a busy prefork worker would batch them


def setup() -> tuple[ClusterState, Ingest, CollectorRegistry]:
    clock = FakeClock(T0)
    state = ClusterState(state_settings(**CAPS), clock)
    registry = CollectorRegistry(auto_describe=False)
    for collector in (TaskCollector(state.take_snapshot), WorkerCollector(state.take_snapshot),
                      StreamCollector(state.take_snapshot, StreamStatus(clock))):
        registry.register(collector)
    return state, Ingest(state, clock), registry


def payloads(events: Iterator[dict[str, Any]], n: int) -> list[bytes]:
    """``n`` events as Redis pub/sub payloads of BATCH events each."""
    out: list[bytes] = []
    batch: list[dict[str, Any]] = []
    for _ in range(n):
        batch.append(next(events))
        if len(batch) == BATCH:
            out.append(redis_envelope(batch))
            batch = []
    if batch:
        out.append(redis_envelope(batch))
    return out


def feed(ingest: Ingest, events: Iterator[dict[str, Any]], n: int) -> None:
    for payload in payloads(events, n):
        ingest.feed_redis([payload])


def served(registry: CollectorRegistry) -> dict[str, float]:
    from prometheus_client.exposition import generate_latest

    return parse_samples(generate_latest(registry).decode())


def series_of(samples: dict[str, float], metric: str) -> list[str]:
    return [k for k in samples if k == metric or k.startswith(metric + "{")]


def memory_growth(ingest: Ingest, events: Iterator[dict[str, Any]], warm: int, total: int) -> int:
    """Bytes still allocated after ingesting events ``warm..total``, relative to after ``0..warm``: once
    every cap is reached, the state must not keep anything more per new name."""
    feed(ingest, events, warm)
    rest = payloads(events, total - warm)  # built before tracing: only what Ingest keeps is measured
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for payload in rest:
            ingest.feed_redis([payload])
        del payload
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return after - before


def test_100k_task_names() -> None:
    state, ingest, registry = setup()
    names = (sent(f"u{i}", f"attack.task_{i}", T0, queue="celery") for i in range(100_000))
    growth = memory_growth(ingest, names, 5_000, 100_000)

    cap = CAPS["max_task_names"]
    assert state.sizes().task_names == cap
    assert len(state.counters) == cap + 1  # + the __overflow__ series
    assert state.sizes().routes <= cap + 1
    assert len(state.sizes().tasks) == CAPS["max_tracked_tasks"]
    samples = served(registry)
    sent_series = series_of(samples, "celery_task_sent_total")
    assert len(sent_series) == cap + 1
    assert samples[f'celery_task_sent_total{{queue="celery",task_name="{OVERFLOW_LABEL}"}}'] == 100_000 - cap
    assert samples['celery_exporter_label_overflow_total{label="task_name"}'] == 100_000 - cap
    # Every per-task family is bounded by the same cap: the whole scrape is a few series per name.
    assert series_count(registry) < 20 * (cap + 1)
    assert growth < 1_000_000, f"{growth} bytes kept for 95,000 names past the cap"


def test_100k_exception_messages_and_classes() -> None:
    state, ingest, registry = setup()

    def events() -> Iterator[dict[str, Any]]:
        for i in range(50_000):
            # Distinct messages of a few classes: the message never becomes a label.
            yield failed(f"m{i}", T0, exception=f"ValueError('order {i} is broken')")
            # Distinct classes: capped. (A late task-retried of the task just finished: it keeps the
            # task's name from the finished-task memory.)
            yield retried(f"m{i}", T0, exception=f"attack.Error{i}('x')")

    stream = events()
    growth = memory_growth(ingest, stream, 5_000, 100_000)
    # The last tasks' events still wait for a name (HOLD_SECONDS) before they count as unknown.
    state.clock.advance(10)  # type: ignore[attr-defined]
    state.tick()
    cap = CAPS["max_exception_types"]
    assert state.sizes().exception_types == cap
    samples = served(registry)
    failed_series = series_of(samples, "celery_task_failed_total")
    retried_series = series_of(samples, "celery_task_retried_total")
    assert len(failed_series) <= 2 + 1  # the zero series, ValueError, and __overflow__ at most
    assert len(retried_series) <= cap + 2
    assert samples['celery_task_failed_total{exception="ValueError",queue="celery",task_name="unknown"}'] == 50_000
    assert samples['celery_exporter_label_overflow_total{label="exception"}'] == 50_000 - (cap - 1)
    assert not any("order" in k for k in samples), "an exception message leaked into a label"
    assert growth < 1_000_000, growth


def test_10k_worker_names() -> None:
    state, ingest, registry = setup()
    clock = state.clock
    workers = (heartbeat(f"celery@pod-{i}", T0) for i in range(10_000))
    growth = memory_growth(ingest, workers, 1_000, 10_000)
    cap = CAPS["max_workers"]
    assert len(state.workers) == cap
    samples = served(registry)
    assert len(series_of(samples, "celery_worker_up")) == cap
    assert len(series_of(samples, "celery_worker_info")) == cap
    assert samples['celery_exporter_label_overflow_total{label="worker"}'] == 10_000 - cap
    assert growth < 500_000, growth
    # Once the tracked ones are purged, new workers get their place (rollouts keep working).
    clock.advance(state.settings.worker_purge_after + 1)  # type: ignore[attr-defined]
    ingest._last_tick = -1e18  # run housekeeping now
    ingest.idle()
    assert state.workers == {} and state.workers_purged == cap
    feed(ingest, iter([heartbeat("celery@new-pod", clock())]), 1)
    assert list(state.workers) == ["celery@new-pod"]


def test_100k_event_types() -> None:
    # Celery names its events itself, but anyone who can publish on the channel can invent types, and
    # celery_exporter_events_total is labelled by type.
    state, ingest, registry = setup()
    events = (ev(f"x-{i}", T0) for i in range(100_000))
    growth = memory_growth(ingest, events, 5_000, 100_000)
    samples = served(registry)
    type_series = series_of(samples, "celery_exporter_events_total")
    assert len(type_series) <= 100
    assert sum(samples[k] for k in type_series) == 100_000  # folded, never lost
    assert len(state.events_by_type) <= 100
    assert growth < 500_000, growth
