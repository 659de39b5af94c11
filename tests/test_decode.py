"""Pure decoding of literal broker payloads."""

from __future__ import annotations

import base64
import json
import pickle

import pytest

from exporter.events import decode as d
from tests._events import T0, redis_envelope, sent, started, succeeded


def test_task_multi_batch_on_redis() -> None:
    batch = [sent("u", "t", T0), started("u", T0 + 1), succeeded("u", T0 + 2, 1.0)]
    out = d.decode_redis_payload(redis_envelope(batch), now=T0, here_offset=0)
    assert [e["type"] for e in out.events] == ["task-sent", "task-started", "task-succeeded"]
    assert out.invalid == []


def test_single_event_on_amqp() -> None:
    body = json.dumps(started("u", T0)).encode()
    out = d.decode_amqp_body(body, "application/json", "utf-8", now=T0, here_offset=0)
    assert len(out.events) == 1 and out.events[0]["timestamp"] == T0


def test_utcoffset_is_honoured_like_celery_event_receiver() -> None:
    # A worker two hours east of UTC (utcoffset=-2 in Celery's west-positive convention) seen from UTC.
    e = started("u", T0)
    e["utcoffset"] = -2
    out = d.decode_event_objects(e, now=T0 + 2 * 3600, here_offset=0)
    assert out.events[0]["timestamp"] == T0 + 2 * 3600 and out.clamped == 0


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", d.BAD_JSON),
        (b"\xff\xfe\x00", d.BAD_JSON),
        (b"[1, 2]", d.MALFORMED_ENVELOPE),
        (json.dumps({"body": 5}).encode(), d.MALFORMED_ENVELOPE),
        (redis_envelope({"type": "task-started"}, content_type="application/x-python-serialize"),
         d.UNSUPPORTED_CONTENT_TYPE),
        (json.dumps({"body": "!!!", "content-type": "application/json",
                     "properties": {"body_encoding": "base64"}}).encode(), d.BAD_BASE64),
        (json.dumps({"body": base64.b64encode(b"{oops").decode(), "content-type": "application/json",
                     "properties": {"body_encoding": "base64"}}).encode(), d.BAD_JSON),
        (redis_envelope("just a string"), d.NOT_AN_EVENT),
        (redis_envelope({"timestamp": T0}), d.MISSING_TYPE),
        (redis_envelope({"type": "task-started", "timestamp": "yesterday"}), d.BAD_TIMESTAMP),
        (redis_envelope({"type": "task-started", "timestamp": True}), d.BAD_TIMESTAMP),
        (redis_envelope({"type": "task-started", "timestamp": -5}), d.BAD_TIMESTAMP),
        (redis_envelope({"type": "task-started", "timestamp": T0 + 10 * 86400}), d.BAD_TIMESTAMP),
    ],
)
def test_bad_payloads_become_reasons(payload: bytes, reason: str) -> None:
    out = d.decode_redis_payload(payload, now=T0, here_offset=0)
    assert out.events == [] and out.invalid == [reason]


def test_nan_timestamp_is_refused() -> None:
    out = d.decode_amqp_body(b'{"type": "task-started", "timestamp": NaN}', "application/json", None, T0, 0)
    assert out.invalid == [d.BAD_TIMESTAMP]


def test_pickle_is_never_unpickled() -> None:
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    body = pickle.dumps(Boom())
    out = d.decode_amqp_body(body, "application/x-python-serialize", "binary", now=T0, here_offset=0)
    assert out.invalid == [d.UNSUPPORTED_CONTENT_TYPE]


def test_valid_events_around_a_bad_one_in_a_batch_survive() -> None:
    batch = [sent("u", "t", T0), {"type": 7}, "junk", started("u", T0 + 1)]
    out = d.decode_redis_payload(redis_envelope(batch), now=T0, here_offset=0)
    assert len(out.events) == 2
    assert out.invalid == [d.MISSING_TYPE, d.NOT_AN_EVENT]


def test_deeply_nested_json_does_not_raise() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    out = d.decode_amqp_body(deep.encode(), "application/json", "utf-8", now=T0, here_offset=0)
    assert out.invalid == [d.BAD_JSON]
