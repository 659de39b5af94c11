"""Label values safe by construction (issue 16 items 1, 3 and 7, state side): any payload from anyone who can
publish on the event channel leaves every metric not about that payload unchanged, and the render still
parses. Byte-level payloads (raw Redis pub/sub messages, raw AMQP bodies, and events whose string fields
are arbitrary bytes, lone surrogates included) go through the real decoders, the state, the collectors and
exporter.exposition's renderer, and back through prometheus_client's parser."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from exporter.collectors.stream import StreamCollector
from exporter.collectors.tasks import TaskCollector
from exporter.collectors.workers import WorkerCollector
from exporter.config import state_settings
from exporter.events.ingest import Ingest
from exporter.exposition import render
from exporter.state import ClusterState, label_value
from exporter.status import StreamStatus
from tests._events import T0, ev, heartbeat, received, redis_envelope, sent, started, succeeded
from tests._support import FakeClock

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BASE_NAMES = {"proj.add", "proj.pay", "default", "payments", "celery@w1", "celery@w2"}


def pipeline() -> tuple[Ingest, CollectorRegistry]:
    clock = FakeClock(T0 + 100)
    state = ClusterState(state_settings(max_series=2_000), clock)
    status = StreamStatus(clock)
    registry = CollectorRegistry(auto_describe=False)
    for c in (TaskCollector(state.take_snapshot), WorkerCollector(state.take_snapshot),
              StreamCollector(state.take_snapshot, status)):
        registry.register(c)
    ingest = Ingest(state, clock)
    ingest.feed_redis([
        redis_envelope([sent("base-a", "proj.add", T0, queue="default"), received("base-a", "proj.add", T0 + 1),
                        started("base-a", T0 + 2), succeeded("base-a", T0 + 3, runtime=1.0),
                        sent("base-b", "proj.pay", T0, queue="payments"), received("base-b", "proj.pay", T0 + 1),
                        started("base-b", T0 + 2)]),
        redis_envelope(heartbeat("celery@w1", T0 + 90, active=1, type_="worker-online"), "worker.online"),
    ])
    return ingest, registry


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = render(registry).decode("utf-8")  # strict: a lone surrogate or bad byte would raise here
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def not_about_the_payload(key: tuple[str, tuple[tuple[str, str], ...]]) -> bool:
    """Series of the baseline's own tasks and workers (the exporter's self-metrics count the payload, and
    celery_workers counts its workers)."""
    name, labels = key
    return not name.startswith(("celery_exporter_", "celery_workers")) and all(
        v in BASE_NAMES or k in ("state", "le", "reason") or (k == "exception" and v == "") for k, v in labels)


def text_of(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")  # invalid bytes become lone surrogates


FIELDS = ("uuid", "name", "queue", "routing_key", "hostname", "exception", "traceback", "sw_ver", "sw_sys")
TYPES = ("task-sent", "task-received", "task-started", "task-succeeded", "task-failed", "task-retried",
         "task-rejected", "task-revoked", "worker-online", "worker-heartbeat", "worker-offline")
hostile_events = st.builds(
    lambda etype, fields, ts, runtime: {"type": etype, "timestamp": ts, "runtime": runtime,
                                        **{k: text_of(v) for k, v in fields.items()}},
    st.one_of(st.sampled_from(TYPES), st.binary(min_size=1, max_size=20).map(text_of)),
    st.dictionaries(st.sampled_from(FIELDS), st.one_of(st.binary(max_size=12), st.binary(min_size=250, max_size=300))),
    st.floats(T0, T0 + 50),
    st.one_of(st.none(), st.floats(), st.integers(), st.just(10**400)),
)


@SETTINGS
@given(raw=st.binary(max_size=2_000), path=st.sampled_from(["redis", "amqp"]))
def test_any_bytes_leave_the_other_metrics_unchanged(raw: bytes, path: str) -> None:
    ingest, registry = pipeline()
    before = samples(registry)
    if path == "redis":
        ingest.feed_redis([raw])
    else:
        ingest.feed_amqp([(raw, "application/json", "utf-8")])
    after = samples(registry)
    assert {k: v for k, v in after.items() if not_about_the_payload(k)} == {
        k: v for k, v in before.items() if not_about_the_payload(k)}


@SETTINGS
@given(events=st.lists(hostile_events, min_size=1, max_size=6), path=st.sampled_from(["redis", "amqp"]))
def test_hostile_strings_in_every_field_leave_the_other_metrics_unchanged(events: list[dict[str, Any]],
                                                                         path: str) -> None:
    ingest, registry = pipeline()
    before = samples(registry)
    body = json.dumps(events).encode()  # ensure_ascii: lone surrogates travel as \udcxx escapes
    if path == "redis":
        ingest.feed_redis([redis_envelope(events)])
    else:
        ingest.feed_amqp([(body, "application/json", "utf-8")])
    after = samples(registry)
    assert {k: v for k, v in after.items() if not_about_the_payload(k)} == {
        k: v for k, v in before.items() if not_about_the_payload(k)}
    assert ingest.state.invalid_by_reason.get("apply_error", 0) == 0  # refused at decode, never half-applied
    for key in after:  # every label value valid UTF-8, no NUL, at most 255 bytes
        for _, value in key[1]:
            assert "\x00" not in value and len(value.encode("utf-8")) <= 255


def test_poison_strings_are_made_safe_where_they_enter() -> None:
    ingest, registry = pipeline()
    poison = "\ud800bad\x00name" + "é" * 300
    ingest.feed_amqp([(json.dumps([
        ev("task-sent", T0 + 5, hostname=poison, uuid="p" * 10_000, name=poison, queue="q" * 512,
           routing_key=None, retries=0, eta=None),
        heartbeat(poison, T0 + 5, type_="worker-online") | {"sw_ver": poison},
        ev(poison[:40], T0 + 5),
    ]).encode(), "application/json", "utf-8")])
    s = samples(registry)
    names = {dict(k[1]).get("task_name") for k in s} - {None}
    safe = label_value(poison)
    assert safe in names and "\x00" not in safe and len(safe.encode()) <= 255
    assert "q" * 255 in {dict(k[1]).get("queue") for k in s}  # queue names capped at 255 bytes
    assert max(len(u.encode()) for u in ingest.state.sizes().tasks) <= 255


def test_an_integer_runtime_past_float_range_drops_the_field_and_keeps_the_success() -> None:
    """json parses such a literal exactly and float() of it overflows: the runtime is dropped (the
    duration then comes from the task's own events) and the success still counts, so the task does not
    stay active for good (issue 21)."""
    ingest, registry = pipeline()
    before = samples(registry)
    runtime = "1" + "0" * 309
    body = f'[{{"type": "task-succeeded", "uuid": "base-b", "timestamp": {T0 + 5!r}, "runtime": {runtime}}}]'.encode()
    ingest.feed_amqp([(body, "application/json", "utf-8")])
    after = samples(registry)
    assert ingest.state.invalid_by_reason == {}
    succeeded = [k for k in after if k[0] == "celery_task_succeeded_total" and ("task_name", "proj.pay") in k[1]]
    assert [after[k] - before.get(k, 0.0) for k in succeeded] == [1.0]
    active = [k for k in after if k[0] == "celery_tasks_active" and ("task_name", "proj.pay") in k[1]]
    assert [after[k] for k in active] == [0.0]
