"""Hostile and broken input, property-based: whatever arrives on the event channel, nothing raises out of
``Ingest.feed_*``, nothing is unpickled, every refusal is counted under the reason it deserves, valid
events around the garbage are counted exactly, and what is served stays well-formed and finite.

The generators build each piece of garbage together with the reason it must be refused for, so the
assertions are exact counts, not "did not crash".
"""

from __future__ import annotations

import base64
import json
import math
import os
import pickle
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from exporter.collectors.stream import StreamCollector
from exporter.collectors.tasks import TaskCollector
from exporter.collectors.workers import WorkerCollector
from exporter.config import state_settings
from exporter.events import decode as d
from exporter.events.ingest import Ingest
from exporter.state import SENT, ClusterState, label_value
from exporter.status import StreamStatus
from tests._events import T0, ev, failed, heartbeat, redis_envelope, sent, started, succeeded
from tests._reliability_helpers import amqp_messages, redis_payloads
from tests._support import FakeClock, parse_samples, wait_for

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NOW = T0
JSON_TYPES = ("application/json", "application/x-json")
PICKLE_TYPE = "application/x-python-serialize"
CAPTURED_NOW = 1_795_300_000.0  # shortly after tests/testdata/events was captured

# ---------------------------------------------------------------- strategies
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
hostile_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(['a"b', "new\nline", "back\\slash", "}{", "\x00nul", "\u202eRTL", "💥", "=", ",", " "]),
    st.integers(1_000, 200_000).map(lambda n: "x" * n),  # huge strings
)
EVENT_TYPES = ("task-sent", "task-received", "task-started", "task-succeeded", "task-failed",
               "task-retried", "task-rejected", "task-revoked", "worker-online", "worker-heartbeat",
               "worker-offline")
event_types = st.one_of(st.sampled_from(EVENT_TYPES), st.text(min_size=1, max_size=d.MAX_TYPE_LEN))
good_ts = st.floats(0, NOW + d.MAX_FUTURE_SKEW, allow_nan=False)
FIELDS = ("uuid", "name", "queue", "routing_key", "hostname", "retries", "eta", "runtime", "exception",
          "active", "sw_ver", "sw_sys", "utcoffset", "result", "freq", "clock", "pid")


@st.composite
def wrong_field_events(draw: st.DrawFn) -> dict[str, Any]:
    """Passes decoding (a valid type and timestamp) with every other field any JSON value at all."""
    event: dict[str, Any] = {"type": draw(event_types), "timestamp": draw(good_ts)}
    for key in draw(st.lists(st.sampled_from(FIELDS), max_size=len(FIELDS), unique=True)):
        event[key] = draw(st.one_of(json_values, hostile_text))
    if "utcoffset" in event:
        event["utcoffset"] = 0  # keep the timestamp inside the accepted window after adjustment
    return event


bad_timestamps = st.one_of(
    st.none(), st.booleans(), st.text(max_size=10), st.lists(st.integers(), max_size=2),
    st.just(float("nan")), st.just(float("inf")), st.just(float("-inf")),
    st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False),
    st.floats(min_value=NOW + d.MAX_FUTURE_SKEW + 1, allow_nan=False, allow_infinity=False),
    st.integers(min_value=10**309, max_value=10**400),  # ints too large for a float
    st.integers(max_value=-1),
)


@st.composite
def refused_events(draw: st.DrawFn) -> tuple[Any, str]:
    """One event-level item of a body that must be refused, and why."""
    kind = draw(st.sampled_from(("not_an_event", "missing_type", "bad_timestamp")))
    if kind == "not_an_event":
        return draw(st.one_of(scalars, st.lists(scalars, max_size=3))), d.NOT_AN_EVENT
    if kind == "missing_type":
        etype = draw(st.one_of(st.none(), st.just(""), st.integers(), st.lists(st.text(), max_size=2),
                               st.text(min_size=d.MAX_TYPE_LEN + 1, max_size=200)))
        body = {"timestamp": NOW} if etype is None else {"type": etype, "timestamp": NOW}
        return body, d.MISSING_TYPE
    body = {"type": draw(event_types)}
    ts = draw(st.one_of(st.just("<missing>"), bad_timestamps))
    if ts != "<missing>":
        body["timestamp"] = ts
    return body, d.BAD_TIMESTAMP


def envelope(body_bytes: bytes, content_type: str = "application/json", encoding: str = "utf-8",
             b64: bool = True) -> bytes:
    return json.dumps({
        "body": base64.b64encode(body_bytes).decode() if b64 else body_bytes.decode("latin-1"),
        "content-encoding": encoding, "content-type": content_type,
        "properties": {"body_encoding": "base64"} if b64 else {},
    }).encode()


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, allow_nan=True).encode()


@st.composite
def garbage_payloads(draw: st.DrawFn) -> tuple[bytes, list[str]]:
    """A Redis pub/sub payload that carries no valid event, and the reasons it must be counted under."""
    kind = draw(st.sampled_from(("bad_json", "not_envelope", "bad_envelope", "content_type", "encoding",
                                 "base64", "body_json", "events", "pickle")))
    if kind == "bad_json":
        raw = draw(st.one_of(st.binary(max_size=200), st.text(max_size=100).map(str.encode),
                             st.integers(1, 50_000).map(lambda n: b"[" * n)))  # deep nesting
        try:
            json.loads(raw)
            assume(False)
        except (ValueError, RecursionError):
            pass
        return raw, [d.BAD_JSON]
    if kind == "not_envelope":
        return dumps(draw(st.one_of(scalars, st.lists(json_values, max_size=3)))), [d.MALFORMED_ENVELOPE]
    if kind == "bad_envelope":
        env = {"body": draw(st.one_of(st.none(), st.integers(), st.lists(scalars, max_size=2))),
               "content-type": "application/json"}
        if draw(st.booleans()):
            env = {"body": "e30=", "content-type": "application/json",
                   "properties": draw(st.one_of(st.integers(), st.text(min_size=1), st.lists(scalars, min_size=1)))}
        return dumps(env), [d.MALFORMED_ENVELOPE]
    if kind == "content_type":
        ctype = draw(st.one_of(st.sampled_from((PICKLE_TYPE, "application/x-yaml", "application/x-msgpack",
                                                "text/plain", "")), st.text(max_size=20), st.none()))
        assume(ctype not in JSON_TYPES)
        return envelope(b'{"type": "task-sent", "timestamp": 1}', ctype), [d.UNSUPPORTED_CONTENT_TYPE]
    if kind == "encoding":
        enc = draw(st.one_of(st.sampled_from(("binary", "latin-1", "utf-16", "gzip")), st.text(max_size=10)))
        assume(enc not in d.UTF8)
        return envelope(b"{}", encoding=enc), [d.UNSUPPORTED_ENCODING]
    if kind == "base64":
        body = draw(st.text(min_size=1, max_size=50))
        try:
            base64.b64decode(body, validate=True)
            assume(False)
        except ValueError:
            pass
        return json.dumps({"body": body, "content-type": "application/json",
                           "properties": {"body_encoding": "base64"}}).encode(), [d.BAD_BASE64]
    if kind == "body_json":
        raw = draw(st.one_of(st.binary(max_size=100), st.just(b"\xff\xfe{}"), st.just(b"[" * 100_000)))
        try:
            json.loads(raw)
            assume(False)
        except (ValueError, RecursionError):
            pass
        return envelope(raw), [d.BAD_JSON]
    if kind == "events":
        items = draw(st.lists(refused_events(), min_size=1, max_size=5))
        if len(items) == 1 and draw(st.booleans()) and not isinstance(items[0][0], list):
            return envelope(dumps(items[0][0])), [items[0][1]]
        return envelope(dumps([body for body, _ in items])), [reason for _, reason in items]
    return envelope(pickle.dumps({"type": "task-sent", "timestamp": NOW}), PICKLE_TYPE, "binary"), [
        d.UNSUPPORTED_CONTENT_TYPE]


def new_state(now: float = NOW, **caps: int) -> tuple[ClusterState, Ingest]:
    clock = FakeClock(now)
    state = ClusterState(state_settings(**caps), clock)
    return state, Ingest(state, clock)


def render(state: ClusterState) -> dict[str, float]:
    registry = CollectorRegistry(auto_describe=False)
    for collector in (TaskCollector(state.take_snapshot), WorkerCollector(state.take_snapshot),
                      StreamCollector(state.take_snapshot, StreamStatus())):
        registry.register(collector)
    return parse_samples(generate_latest(registry).decode())  # must stay parseable by Prometheus


def assert_served_sanely(state: ClusterState) -> None:
    samples = render(state)
    for name, value in samples.items():
        assert math.isfinite(value), (name, value)  # no Inf/NaN served, whatever was sent
        if name.startswith(("celery_task_duration_seconds", "celery_task_queue_wait_seconds")):
            assert value >= 0, (name, value)
    assert state.invalid_by_reason.get("apply_error", 0) == 0, "ClusterState.apply raised"


# ---------------------------------------------------------------- properties
@SETTINGS
@given(raw=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode), json_values.map(dumps)))
def test_any_bytes_never_raise_from_the_decoders(raw: bytes) -> None:
    for out in (d.decode_redis_payload(raw, NOW), d.decode_amqp_body(raw, "application/json", "utf-8", NOW),
                d.decode_amqp_body(raw, PICKLE_TYPE, "binary", NOW)):
        assert set(out.invalid) <= set(d.REASONS)
        for event in out.events:
            assert isinstance(event["type"], str) and 0 < len(event["type"]) <= d.MAX_TYPE_LEN
            assert isinstance(event["timestamp"], float) and 0 <= event["timestamp"] <= NOW + d.MAX_FUTURE_SKEW


@SETTINGS
@given(items=st.lists(st.one_of(
    st.tuples(st.just("garbage"), garbage_payloads()),
    st.tuples(st.just("valid"), st.integers(0, 5)),
    st.tuples(st.just("odd"), wrong_field_events()),
), max_size=25))
def test_garbage_interleaved_with_valid_events(items: list[tuple[str, Any]]) -> None:
    state, ingest = new_state()
    payloads: list[bytes] = []
    expected_invalid: Counter[str] = Counter()
    expected_types: Counter[str] = Counter()
    expected_sent: Counter[str] = Counter()
    for i, (kind, item) in enumerate(items):
        if kind == "garbage":
            payload, reasons = item
            payloads.append(payload)
            expected_invalid.update(reasons)
        elif kind == "valid":  # a whole, well-formed task lifecycle
            uuid, name = f"valid-{i}", f"proj.task{item}"
            batch = [sent(uuid, name, NOW, queue="q"), started(uuid, NOW + 1), succeeded(uuid, NOW + 2, 1.0)]
            payloads.append(redis_envelope(batch))
            expected_types.update(e["type"] for e in batch)
            expected_sent[name] += 1
        else:  # decodes, but every other field may be of any type
            payloads.append(redis_envelope(item))
            expected_types[label_value(item["type"])] += 1  # made a safe label value where it enters
    # One batch and one message at a time must count the same.
    ingest.feed_redis(payloads[: len(payloads) // 2])
    for p in payloads[len(payloads) // 2 :]:
        ingest.feed_redis([p])

    assert state.invalid_by_reason == dict(expected_invalid)
    assert state.events_by_type == dict(expected_types)
    for name, n in expected_sent.items():
        assert state.counters[(name, "q")][SENT] == n
    assert_served_sanely(state)


@SETTINGS
@given(events=st.lists(wrong_field_events(), min_size=1, max_size=30))
def test_wrong_types_in_every_field_never_break_the_state(events: list[dict[str, Any]]) -> None:
    state, ingest = new_state(max_task_names=5, max_workers=5, max_queues=5, max_exception_types=5)
    # Integers no float can hold, in the numbers the state uses, are refused whole (bad_number); a runtime
    # is only dropped (test_a_runtime_past_64_bits_drops_the_field_and_keeps_the_event).
    huge = sum(1 for e in events if any(type(e.get(f)) is int and not -2**63 < e[f] < 2**63
                                        for f in ("retries", "active", "utcoffset")))
    assert ingest.feed_objects(events) == len(events) - huge
    assert state.invalid_by_reason.get("bad_number", 0) == huge
    ingest.clock.advance(10_000)  # type: ignore[attr-defined]
    ingest.idle()  # housekeeping over whatever the garbage left behind
    assert_served_sanely(state)
    assert len(state.workers) <= 5


@SETTINGS
@given(messages=st.lists(st.tuples(st.binary(max_size=200),
                                   st.one_of(st.none(), st.sampled_from((*JSON_TYPES, PICKLE_TYPE)),
                                             st.text(max_size=20)),
                                   st.one_of(st.none(), st.sampled_from(("utf-8", "binary")),
                                             st.text(max_size=10))),
                         max_size=10))
def test_amqp_garbage_is_counted_not_raised(messages: list[tuple[bytes, str | None, str | None]]) -> None:
    state, ingest = new_state()
    expected: Counter[str] = Counter()
    for body, ctype, cenc in messages:
        expected.update(d.decode_amqp_body(body, ctype, cenc, NOW).invalid)
    ingest.feed_amqp(messages)
    assert state.invalid_by_reason == dict(expected)
    assert_served_sanely(state)


# ---------------------------------------------------------------- pickle, explicitly
class _Boom:
    """Unpickling this creates a directory: proof that something was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


def test_a_pickle_is_never_unpickled(tmp_path: Path) -> None:
    # First prove the payload is live: unpickling it does create the marker.
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Boom(probe)))
    assert probe.is_dir()

    marker = tmp_path / "unpickled"
    evil = pickle.dumps(_Boom(marker))
    state, ingest = new_state()
    ingest.feed_redis([
        envelope(evil, PICKLE_TYPE, "binary"),  # what kombu publishes with serializer="pickle"
        envelope(evil),  # lying about its content type
        envelope(evil, PICKLE_TYPE, "utf-8", b64=False),
        evil,  # not even an envelope
    ])
    ingest.feed_amqp([(evil, PICKLE_TYPE, "binary"), (evil, "application/json", "utf-8"), (evil, None, None)])
    assert not marker.exists()
    assert state.invalid_by_reason == {
        d.UNSUPPORTED_CONTENT_TYPE: 4,  # two Redis envelopes declare pickle; on AMQP one does, one declares none
        d.BAD_JSON: 3,  # pickled bytes claiming JSON (Redis and AMQP), and the bare pickle on Redis
    }
    assert state.events_by_type == {}


# ---------------------------------------------------------------- explicit edge cases
def test_timestamps_that_must_be_refused() -> None:
    state, ingest = new_state()
    bodies = [{"type": "task-sent", "timestamp": ts} for ts in
              (float("nan"), float("inf"), -1.0, NOW + d.MAX_FUTURE_SKEW + 60, 10**400, -(10**400), "1", True, None)]
    ingest.feed_objects(bodies)
    ingest.feed_redis([redis_envelope(body) for body in bodies])
    ingest.feed_redis([envelope(b'{"type": "task-sent", "timestamp": NaN}'),
                       envelope(b'{"type": "task-sent", "timestamp": 1e999}')])
    assert state.invalid_by_reason == {d.BAD_TIMESTAMP: 2 * len(bodies) + 2}
    assert state.last_event_ts is None


def test_poisoned_durations_do_not_stick_in_the_histogram_sums() -> None:
    # One event with runtime 1e999 (JSON for +Inf) or 1e300 would otherwise pin _sum at Inf, or swallow
    # every later observation in float rounding, for the life of the process.
    state, ingest = new_state()
    for i, runtime in enumerate(("1e999", "1e300", "-1e999", "NaN")):
        uuid = f"p{i}"
        body = (f'[{json.dumps(sent(uuid, "proj.t", NOW))}, {json.dumps(started(uuid, NOW))}, '
                f'{{"type": "task-succeeded", "uuid": "{uuid}", "timestamp": {NOW + 1}, "runtime": {runtime}}}]')
        ingest.feed_redis([envelope(body.encode())])
    ingest.feed_redis([redis_envelope([sent("ok", "proj.t", NOW), started("ok", NOW),
                                       succeeded("ok", NOW + 1, 0.25)])])
    assert_served_sanely(state)
    samples = render(state)
    total = samples['celery_task_duration_seconds_sum{queue="celery",state="succeeded",task_name="proj.t"}']
    assert total == 0.25


# 2**63 and 2**64 - 1 are integers to orjson and json alike (orjson makes larger ones floats, which the
# state already bounds); 10**400 only the json module parses, as an integer.
@pytest.mark.parametrize("runtime", [str(2**63), str(2**64 - 1), "1" + "0" * 400])
def test_a_runtime_past_64_bits_drops_the_field_and_keeps_the_event(runtime: str) -> None:
    # Refused whole, this task-succeeded would leave its task active until --task-max-age, uncounted.
    state, ingest = new_state()
    body = (f'[{json.dumps(sent("big", "proj.t", NOW))}, {json.dumps(started("big", NOW))}, '
            f'{{"type": "task-succeeded", "uuid": "big", "timestamp": {NOW + 2.0}, "runtime": {runtime}}}]')
    assert ingest.feed_redis([envelope(body.encode())]) == 3
    ingest.feed_amqp([(body.encode(), "application/json", "utf-8")])  # the same on the AMQP path
    assert state.invalid_by_reason == {}
    samples = render(state)
    assert samples['celery_task_succeeded_total{queue="celery",task_name="proj.t"}'] == 1
    assert samples.get('celery_tasks_active{queue="celery",task_name="proj.t"}', 0) == 0
    # Timed from its own events instead: started at NOW, succeeded 2 s later.
    key = '{queue="celery",state="succeeded",task_name="proj.t"}'
    assert samples["celery_task_duration_seconds_sum" + key] == 2.0
    assert_served_sanely(state)


def test_huge_label_values_are_bounded() -> None:
    state, ingest = new_state()
    huge = "n" * 1_000_000
    ingest.feed_redis([redis_envelope([sent("u1", huge, NOW, queue=huge), heartbeat(huge, NOW),
                                       failed("u1", NOW, exception=huge + "('x')")])])
    assert_served_sanely(state)
    registry_text = "\n".join(render(state))
    assert len(registry_text) < 100_000, "a 1 MB name must not be served (or kept) as a 1 MB label"


def test_deeply_nested_and_huge_batches() -> None:
    state, ingest = new_state()
    deep = b"[" * 200_000 + b"]" * 200_000
    ingest.feed_redis([deep, envelope(deep), envelope(dumps([[[[[]]]]]))])
    ingest.feed_redis([envelope(dumps([{}] * 50_000))])
    assert state.invalid_by_reason == {d.BAD_JSON: 2, d.NOT_AN_EVENT: 1, d.MISSING_TYPE: 50_000}


def test_unknown_event_types_are_counted_but_harmless() -> None:
    state, ingest = new_state()
    ingest.feed_objects([ev("task-exploded", NOW), ev("worker-x", NOW), ev("\u202e", NOW)])
    assert state.events_by_type == {"task-exploded": 1, "worker-x": 1, "\u202e": 1}
    assert state.counters == {} and state.workers == {}
    assert_served_sanely(state)


def test_captured_events_survive_being_interleaved_with_garbage() -> None:
    # The real Celery run of tests/testdata/events (96 events) with a piece of junk after every message.
    state, ingest = new_state(now=CAPTURED_NOW)
    junk = [b"", b"null", b"\xff", envelope(b"{}", PICKLE_TYPE)]
    mixed = [p for i, payload in enumerate(redis_payloads()) for p in (payload.encode(), junk[i % 4])]
    ingest.feed_redis(mixed)
    assert sum(state.events_by_type.values()) == 96
    assert sum(state.invalid_by_reason.values()) == len(redis_payloads())
    state2, ingest2 = new_state(now=CAPTURED_NOW)
    ingest2.feed_amqp([m for msg in amqp_messages() for m in (msg, (b"\x80\x04", PICKLE_TYPE, "binary"))])
    assert sum(state2.events_by_type.values()) == 96
    assert state2.invalid_by_reason == {d.UNSUPPORTED_CONTENT_TYPE: len(amqp_messages())}


def test_non_finite_worker_fields_are_not_served() -> None:
    state, ingest = new_state()
    for i, active in enumerate(("1e999", "NaN", "-1e999", "1e300")):
        ingest.feed_redis([envelope(
            f'{{"type": "worker-heartbeat", "hostname": "w{i}", "timestamp": {NOW}, "active": {active}}}'.encode())])
    assert_served_sanely(state)
    assert state.workers["w0"].active == 0 and state.workers["w3"].active == 0


def test_the_kombu_fallback_path_never_unpickles(tmp_path: Path) -> None:
    # The generic reader hands bodies to kombu, which would deserialise them itself; it must refuse pickle
    # (accept=["json"]) and pass the raw bytes on to be counted. kombu's memory:// transport is shared
    # within the process, so a Producer here talks to the reader's queue.
    import threading
    import time

    from kombu import Connection, Exchange, Producer

    from exporter.brokers.kombu.stream import KombuEventStream
    from exporter.config import Config, stream_settings

    marker = tmp_path / "unpickled"
    state, ingest = new_state(now=time.time())
    status = StreamStatus()
    stream = KombuEventStream(stream_settings(Config("memory://")), ingest, status)
    stop = threading.Event()
    thread = threading.Thread(target=stream.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: status.connected, 10, what="the stream to connect")
        with Connection("memory://") as conn:
            producer = Producer(conn.channel(), exchange=Exchange("celeryev", type="topic"))
            producer.publish(_Boom(marker), routing_key="task.sent", serializer="pickle")
            producer.publish(sent("u1", "proj.t", time.time()), routing_key="task.sent", serializer="json")
        wait_for(lambda: state.events_by_type and state.invalid_by_reason, 10, what="both messages")
    finally:
        stop.set()
        thread.join(10)
    assert not marker.exists()
    assert state.invalid_by_reason == {d.UNSUPPORTED_CONTENT_TYPE: 1}
    assert state.events_by_type == {"task-sent": 1}
