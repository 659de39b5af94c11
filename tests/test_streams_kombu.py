"""The generic kombu fallback (Celery's EventReceiver): kombu's in-process ``memory://`` transport (no
server needed) and, as integration, a real Redis through kombu's own Redis transport."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kombu import Connection, Exchange, Producer

from exporter.brokers.kombu.stream import KombuEventStream
from exporter.events.decode import LOCAL_UTCOFFSET
from tests._broker_helpers import RedisServer
from tests._stream_helpers import (
    EXPECTED_TOTAL,
    EXPECTED_TYPES,
    by_type,
    events_in,
    invalid,
    lines,
    pipeline,
    running,
    settings,
    total,
)
from tests._support import wait_for

MEMORY = "memory://"


@pytest.fixture
def producer() -> Iterator[Any]:
    with Connection(MEMORY) as conn:
        yield Producer(conn.default_channel, exchange=Exchange("celeryev", type="topic"))


def send(producer: Any, body: str | bytes, routing_key: str = "task.multi",
         content_type: str = "application/json", content_encoding: str = "utf-8") -> None:
    producer.publish(body, routing_key=routing_key, content_type=content_type,
                     content_encoding=content_encoding, serializer=None)


def test_captured_bodies_give_exact_counts(producer: Any) -> None:
    state, ingest, status = pipeline()
    with running(KombuEventStream(settings(MEMORY), ingest, status), status):
        for m in lines("amqp_messages.jsonl"):
            send(producer, m["body"], m["routing_key"])
        wait_for(lambda: total(state) == EXPECTED_TOTAL, 15, what="96 events")
        send(producer, b"{marker")  # once this is counted, everything sent before it was consumed
        wait_for(lambda: invalid(state), 15, what="the marker")
    assert by_type(state) == EXPECTED_TYPES
    assert invalid(state) == {"bad_json": 1}


def test_refused_bodies_are_counted_never_unpickled(producer: Any) -> None:
    import pickle

    class Boom:
        def __reduce__(self) -> tuple[Any, ...]:
            return (exec, ("raise SystemExit('unpickled!')",))

    good = lines("amqp_messages.jsonl")[0]
    state, ingest, status = pipeline()
    with running(KombuEventStream(settings(MEMORY), ingest, status), status) as thread:
        send(producer, pickle.dumps(Boom()), "task.sent", "application/x-python-serialize", "binary")
        send(producer, b"{broken", "task.sent")
        send(producer, b'[{"type": "task-sent"}, 7]', "task.multi")
        send(producer, good["body"], good["routing_key"])
        wait_for(lambda: total(state) == 1 and sum(invalid(state).values()) == 4, 15, what="all four")
        assert thread.is_alive()
    assert invalid(state) == {"unsupported_content_type": 1, "bad_json": 1, "bad_timestamp": 1,
                              "not_an_event": 1}
    assert by_type(state) == {"worker-online": 1}


def test_timestamps_are_adjusted_once_by_our_decoder(producer: Any) -> None:
    # Celery's receiver would shift by the sender's utcoffset, and our decoder would shift again.
    sent_at = time.time() - 40_000.0
    offset = LOCAL_UTCOFFSET - 5  # a worker five hours west of us
    event = {"type": "worker-heartbeat", "hostname": "w@west", "timestamp": sent_at, "utcoffset": offset,
             "freq": 2.0, "active": 0, "sw_ver": "5.7.0", "sw_sys": "Linux"}
    state, ingest, status = pipeline()
    with running(KombuEventStream(settings(MEMORY), ingest, status), status):
        send(producer, json.dumps(event), "worker.heartbeat")
        wait_for(lambda: total(state) == 1, 15, what="the heartbeat")
    assert state.last_event_ts == pytest.approx(sent_at + 5 * 3600, abs=1e-3)


@pytest.mark.integration
def test_fallback_reads_real_redis_through_kombus_transport(redis_server: RedisServer) -> None:
    state, ingest, status = pipeline()
    with running(KombuEventStream(settings(redis_server.url(15)), ingest, status), status):
        c = redis_server.client(15)
        n = 0
        for m in lines("redis_payloads.jsonl"):  # the bytes real workers PUBLISH
            c.publish(m["channel"], m["payload"])
            n += events_in(base64.b64decode(json.loads(m["payload"])["body"]))
        assert n == EXPECTED_TOTAL
        wait_for(lambda: total(state) == EXPECTED_TOTAL, 15, what="96 events")
    assert by_type(state) == EXPECTED_TYPES
    assert invalid(state) == {}
