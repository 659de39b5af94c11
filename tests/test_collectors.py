"""Collectors on a private CollectorRegistry, checked against golden exposition files.

Regenerate the golden files after an intended change with: UPDATE_GOLDEN=1 python -m pytest tests/test_collectors.py
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from exporter.collectors import COLLECTORS, MetricSpec, Sources, all_specs, build_collectors
from exporter.collectors.stream import StreamCollector
from exporter.collectors.tasks import TaskCollector
from exporter.collectors.workers import WorkerCollector
from exporter.config import state_settings
from exporter.diagnosis import Diagnoser, DiagnosisSettings
from exporter.events.ingest import Ingest
from exporter.exposition import render
from exporter.state import ClusterState
from exporter.status import StreamStatus
from tests._events import (
    T0,
    failed,
    heartbeat,
    received,
    redis_envelope,
    retried,
    sent,
    started,
    succeeded,
)
from tests._support import FakeClock

GOLDEN = Path(__file__).parent / "testdata"


def scenario() -> tuple[CollectorRegistry, ClusterState, StreamStatus]:
    clock = FakeClock(T0 + 10)
    state = ClusterState(state_settings(duration_buckets=(0.5, 1.0, 5.0), queue_wait_buckets=(1.0, 10.0)), clock)
    status = StreamStatus(clock)
    status.up()
    ingest = Ingest(state, clock)
    ingest.feed_redis([
        redis_envelope([sent("a", "proj.add", T0, queue="default"), received("a", "proj.add", T0 + 0.5),
                        started("a", T0 + 0.5), succeeded("a", T0 + 1, runtime=0.4)]),
        redis_envelope([sent("b", "proj.pay", T0, queue="payments"), started("b", T0 + 2),
                        retried("b", T0 + 3, "TimeoutError()"), sent("b", "proj.pay", T0 + 3, queue="payments",
                                                                     retries=1),
                        received("b", "proj.pay", T0 + 3, retries=1), started("b", T0 + 4),
                        failed("b", T0 + 6, "TimeoutError('again')")]),
        redis_envelope([started("c", T0 + 5)]),
        redis_envelope(heartbeat("celery@w1", T0 + 9, active=1, type_="worker-online"), "worker.online"),
        redis_envelope(heartbeat("celery@w2", T0 - 100, active=2), "worker.heartbeat"),
        b"garbage",
    ])
    clock.advance(-100)  # w2's heartbeat was seen long ago...
    state.workers["celery@w2"].heartbeat_seen = T0 - 90
    clock.advance(100)
    registry = CollectorRegistry(auto_describe=False)
    snap = state.take_snapshot
    registry.register(TaskCollector(snap))
    registry.register(WorkerCollector(snap))
    registry.register(StreamCollector(snap, status))
    return registry, state, status


def _check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    # build_info carries the running Python/Celery versions; keep the golden file independent of them.
    text = "\n".join(line for line in text.splitlines() if not line.startswith("celery_exporter_build_info{"))
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text + "\n")
    assert path.read_text() == text + "\n", f"{name} drifted; UPDATE_GOLDEN=1 regenerates it"


def test_prometheus_text_matches_golden() -> None:
    registry, _, _ = scenario()
    _check_golden("events_scenario.prom", render(registry).decode())


def test_openmetrics_matches_golden() -> None:
    registry, _, _ = scenario()
    _check_golden("events_scenario.om.txt", render(registry, openmetrics=True).decode())


def _samples(families) -> set:
    return {(s.name, tuple(sorted(s.labels.items())), s.value) for f in families for s in f.samples}


def test_fast_renderer_agrees_with_client_python() -> None:
    registry, _, _ = scenario()
    ours = _samples(text_string_to_metric_families(render(registry).decode()))
    theirs = _samples(text_string_to_metric_families(generate_latest(registry).decode()))
    assert ours == theirs and len(ours) > 80
    ours_om = _samples(parse_openmetrics(render(registry, openmetrics=True).decode()))
    theirs_om = _samples(parse_openmetrics(generate_openmetrics(registry).decode()))
    assert ours_om == theirs_om


def test_label_values_are_escaped(fake_clock: FakeClock) -> None:
    clock = fake_clock
    state = ClusterState(state_settings(), clock)
    Ingest(state, clock).feed_redis([redis_envelope([sent("u", 'we"ird\\name\nx', T0)])])
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TaskCollector(state.take_snapshot))
    (fam,) = [f for f in parse_openmetrics(render(registry, openmetrics=True).decode()) if f.name == "celery_task_sent"]
    assert fam.samples[0].labels["task_name"] == 'we"ird\\name\nx'
    assert _samples(text_string_to_metric_families(render(registry).decode())) == _samples(
        text_string_to_metric_families(generate_latest(registry).decode()))


def test_exact_values() -> None:
    registry, _, _ = scenario()
    v = registry.get_sample_value
    assert v("celery_task_succeeded_total", {"task_name": "proj.add", "queue": "default"}) == 1
    assert v("celery_task_failed_total", {"task_name": "proj.pay", "queue": "payments", "exception": "TimeoutError"}) == 1
    assert v("celery_task_failed_total", {"task_name": "proj.add", "queue": "default", "exception": ""}) == 0
    assert v("celery_task_retried_total", {"task_name": "proj.pay", "queue": "payments", "exception": "TimeoutError"}) == 1
    assert v("celery_task_retries_exhausted_total", {"task_name": "proj.pay", "queue": "payments"}) == 1
    assert v("celery_task_duration_seconds_count", {"task_name": "proj.pay", "queue": "payments", "state": "failed"}) == 1
    assert v("celery_task_duration_seconds_sum", {"task_name": "proj.pay", "queue": "payments", "state": "retried"}) == 1
    assert v("celery_task_queue_wait_seconds_count", {"task_name": "proj.pay", "queue": "payments"}) == 2
    # "c" was only ever seen started, without a name: held, counted nowhere yet (exporter/state/held.py)
    assert v("celery_tasks_active", {"task_name": "unknown", "queue": "celery"}) is None
    assert v("celery_exporter_unknown_tasks_total") == 0
    assert v("celery_task_revoked_total", {"task_name": "proj.add", "queue": "default", "reason": "revoked"}) == 0
    assert v("celery_task_lost_total", {"task_name": "proj.add", "queue": "default"}) == 0
    assert v("celery_worker_up", {"worker": "celery@w1"}) == 1
    assert v("celery_worker_up", {"worker": "celery@w2"}) == 0
    assert v("celery_worker_online", {"worker": "celery@w2"}) == 1  # silent, never said goodbye: lost
    assert v("celery_worker_tasks_active", {"worker": "celery@w1"}) == 1
    assert v("celery_workers", {"state": "down"}) == 1
    assert v("celery_exporter_events_invalid_total", {"reason": "bad_json"}) == 1
    assert v("celery_exporter_events_total", {"type": "task-started"}) == 4
    assert v("celery_exporter_broker_connected") == 1


def test_every_served_family_is_declared_and_every_declared_family_served() -> None:
    registry, _, _ = scenario()
    served = {f.name for f in text_string_to_metric_families(render(registry).decode())}
    declared = {s.family_name for s in all_specs() if not s.name.startswith(("celery_queue", "celery_retry",
                                                                              "celery_dead", "celery_broker",
                                                                              "celery_exporter_poll",
                                                                              "celery_exporter_render",
                                                                              # tests/test_stalls.py
                                                                              "celery_queue_oldest",
                                                                              "celery_task_oldest",
                                                                              "celery_task_last_event",
                                                                              # tests/test_diagnosis.py
                                                                              "celery_exporter_check"))}
    assert served == declared


def test_one_list_of_collectors_registers_cleanly_and_feeds_the_docs() -> None:
    _, state, status = scenario()
    registry = CollectorRegistry(auto_describe=False)
    diagnoser = Diagnoser(state.take_snapshot, lambda: [], status, DiagnosisSettings("redis", False))
    collectors = build_collectors(Sources(state.take_snapshot, status, lambda: [], state.clock,
                                          diagnoser.results))
    assert [type(c) for c in collectors] == list(COLLECTORS)
    for collector in collectors:
        registry.register(collector)
        described = sorted((m.name, m.type) for m in collector.describe())
        assert described == sorted((m.name, m.type) for m in collector.collect())
    assert all_specs() == tuple(spec for c in COLLECTORS for spec in c.METRICS)


def test_two_collectors_with_a_clashing_name_fail_registration() -> None:
    _, state, _ = scenario()

    class Rogue(WorkerCollector):
        METRICS = (MetricSpec("celery_task_sent_total", "gauge", "declared a second time"),)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(TaskCollector(state.take_snapshot))
    with pytest.raises(ValueError, match="celery_task_sent_total"):
        registry.register(Rogue(state.take_snapshot))
    with pytest.raises(ValueError, match="celery_task_sent"):
        registry.register(TaskCollector(state.take_snapshot))
