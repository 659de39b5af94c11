"""The Redis event stream against real redis-servers: captured worker payloads, a real Celery worker,
malformed messages, global_keyprefix, a killed and restarted server, a hung server, and Sentinel."""

from __future__ import annotations

import base64
import fnmatch
import json
from collections.abc import Iterator

import pytest
import redis
from kombu import Connection

from exporter.brokers.backoff import Backoff
from exporter.brokers.redis.stream import RedisEventStream, event_channel_pattern
from exporter.brokers.settings import BrokerSettingsError
from exporter.state import SUCCEEDED
from tests._broker_helpers import RedisSentinel, RedisServer
from tests._stream_helpers import (
    EXPECTED_TOTAL,
    EXPECTED_TYPES,
    by_type,
    check_real_worker_events,
    events_in,
    invalid,
    lines,
    pipeline,
    running,
    settings,
    total,
)
from tests._support import wait_for


def fast_backoff() -> Backoff:
    return Backoff(initial=0.05, cap=0.2, jitter=0.0)


# ---------------------------------------------------------------- pure: the channel pattern
@pytest.mark.parametrize(
    ("db", "options", "pattern"),
    [
        (0, {}, "/0.celeryev/*"),
        (15, {}, "/15.celeryev/*"),
        (3, {"global_keyprefix": "pfx:"}, "pfx:/3.celeryev/*"),
        (2, {"fanout_prefix": "custom{db}-"}, "custom2-celeryev/*"),
        (2, {"fanout_prefix": False}, "celeryev/*"),
        (0, {"fanout_patterns": False}, "/0.celeryev"),
        (1, {"fanout_prefix": False, "fanout_patterns": False, "global_keyprefix": "a:"}, "a:celeryev"),
    ],
)
def test_event_channel_pattern(db: int, options: dict, pattern: str) -> None:
    assert event_channel_pattern(db, options) == pattern


def test_sentinel_url_needs_master_name() -> None:
    _state, ingest, status = pipeline()
    with pytest.raises(BrokerSettingsError, match="master_name"):
        RedisEventStream(settings("sentinel://127.0.0.1:26379/0"), ingest, status)


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    srv = RedisServer().start()
    yield srv
    srv.stop()


def publish_captured(client: redis.Redis, name: str = "redis_payloads.jsonl", db: int = 15) -> int:
    """Publish a capture file's payloads on their channels (re-targeted to ``db``); returns events."""
    n = 0
    for line in lines(name):
        client.publish(line["channel"].replace("/15.", f"/{db}.", 1), line["payload"])
        n += events_in(base64.b64decode(json.loads(line["payload"])["body"]))
    return n


# ---------------------------------------------------------------- integration
@pytest.mark.integration
@pytest.mark.parametrize(
    "options",
    [{}, {"global_keyprefix": "pfx:"}, {"fanout_patterns": False}, {"fanout_prefix": "x{db}."},
     {"fanout_prefix": False, "global_keyprefix": "g:"}],
)
def test_pattern_matches_what_kombu_publishes(server: RedisServer, options: dict) -> None:
    # kombu's own Redis channel computes the topic it PUBLISHes a celeryev message on; ours must match.
    with Connection(server.url(7), transport_options=options) as conn:
        ch = conn.default_channel
        topic = ch.global_keyprefix + ch._get_publish_topic("celeryev", "task.multi")
    assert fnmatch.fnmatchcase(topic, event_channel_pattern(7, options))


@pytest.mark.integration
def test_captured_payloads_give_exact_counts(server: RedisServer) -> None:
    state, ingest, status = pipeline()
    stream = RedisEventStream(settings(server.url(15)), ingest, status)
    with running(stream, status):
        # A message for another db's exchange must not be seen.
        server.client(15).publish("/14.celeryev/task.sent", lines("redis_payloads.jsonl")[0]["payload"])
        assert publish_captured(server.client(15)) == EXPECTED_TOTAL
        wait_for(lambda: total(state) >= EXPECTED_TOTAL, 10, what="96 events")
        # The stream is caught up; anything extra would show in the exact comparison below.
        server.client(15).publish("/15.celeryev/worker.heartbeat", b"")
        wait_for(lambda: invalid(state), 10, what="the empty payload to be refused")
    assert by_type(state) == EXPECTED_TYPES
    assert invalid(state) == {"bad_json": 1}
    with state.lock:
        succeeded = {k[0]: v[SUCCEEDED] for k, v in state.counters.items()}
    assert succeeded == {"capture.add": 8, "capture.fail": 0, "capture.flaky": 2, "capture.exhaust": 0}
    assert status.connects == 1 and status.reconnects == 0


@pytest.mark.integration
def test_global_keyprefix_channels(server: RedisServer) -> None:
    state, ingest, status = pipeline()
    stream = RedisEventStream(settings(server.url(15), broker_transport_options={"global_keyprefix": "pfx:"}),
                              ingest, status)
    assert stream.pattern == "pfx:/15.celeryev/*"
    with running(stream, status):
        publish_captured(server.client(15), "redis_payloads.jsonl")  # unprefixed: not ours
        assert publish_captured(server.client(15), "redis_prefixed_payloads.jsonl") == EXPECTED_TOTAL
        wait_for(lambda: total(state) >= EXPECTED_TOTAL, 10, what="96 events")
        server.client(15).publish("pfx:/15.celeryev/task.multi", b"[]")
        wait_for(lambda: invalid(state), 10, what="the marker payload")
    assert by_type(state) == EXPECTED_TYPES


@pytest.mark.integration
def test_malformed_messages_are_counted_and_the_loop_goes_on(server: RedisServer) -> None:
    good = lines("redis_payloads.jsonl")[0]  # worker-online
    envelope = json.loads(good["payload"])
    bad_b64 = dict(envelope, body="***not base64***")
    pickled = dict(envelope, **{"content-type": "application/x-python-serialize"})
    not_event = dict(envelope, body=base64.b64encode(b"[1, 2]").decode())
    no_type = dict(envelope, body=base64.b64encode(b'{"timestamp": 1.0}').decode())
    state, ingest, status = pipeline()
    with running(RedisEventStream(settings(server.url(15)), ingest, status), status):
        c = server.client(15)
        for payload in (b"\xff\xfe", b"[]", json.dumps(bad_b64), json.dumps(pickled), json.dumps(not_event),
                        json.dumps(no_type), good["payload"]):
            c.publish("/15.celeryev/worker.online", payload)
        wait_for(lambda: total(state) == 1, 10, what="the good event after the bad ones")
        wait_for(lambda: sum(invalid(state).values()) == 7, 10, what="every refusal counted")
    assert invalid(state) == {"bad_json": 1, "malformed_envelope": 1, "bad_base64": 1,
                              "unsupported_content_type": 1, "not_an_event": 2, "missing_type": 1}
    assert by_type(state) == {"worker-online": 1}
    assert status.connected is False  # stopped


@pytest.mark.integration
def test_killed_and_restarted_server_reconnects_and_keeps_counting(redis_server: RedisServer) -> None:
    payloads = lines("redis_payloads.jsonl")
    first, second = payloads[:40], payloads[40:]
    n_first = sum(events_in(base64.b64decode(json.loads(p["payload"])["body"])) for p in first)
    state, ingest, status = pipeline()
    stream = RedisEventStream(settings(redis_server.url(15)), ingest, status, backoff=fast_backoff())
    with running(stream, status):
        for p in first:
            redis_server.client(15).publish(p["channel"], p["payload"])
        wait_for(lambda: total(state) == n_first, 10, what="the first half")
        redis_server.kill()
        wait_for(lambda: not status.connected, 5, what="the stream to notice the dead server")
        assert status.last_error
        redis_server.start()  # same port
        wait_for(lambda: status.connected, 10, what="the reconnect")
        assert status.reconnects == 1
        assert total(state) == n_first  # kept
        for p in second:
            redis_server.client(15).publish(p["channel"], p["payload"])
        wait_for(lambda: total(state) == EXPECTED_TOTAL, 10, what="the second half")
    assert by_type(state) == EXPECTED_TYPES


@pytest.mark.integration
def test_hung_server_is_detected_by_the_health_ping(redis_server: RedisServer) -> None:
    state, ingest, status = pipeline()
    stream = RedisEventStream(settings(redis_server.url(15)), ingest, status, backoff=fast_backoff(),
                              health_interval=0.3, ping_timeout=0.5)
    with running(stream, status):
        beat = status.heartbeat
        redis_server.pause()  # the TCP connection stays open, nothing answers
        wait_for(lambda: not status.connected, 5, what="the PING time-out")
        assert "PING" in status.last_error
        assert status.heartbeat > beat  # the loop kept beating while the broker hung
        redis_server.resume()
        wait_for(lambda: status.connected, 10, what="the reconnect")
        assert status.reconnects == 1
        publish_captured(redis_server.client(15))
        wait_for(lambda: total(state) == EXPECTED_TOTAL, 10, what="96 events")


@pytest.mark.integration
def test_password_never_reaches_status_or_logs() -> None:
    from structlog.testing import capture_logs

    srv = RedisServer(extra=("--requirepass", "s3cr3t-pw")).start()
    try:
        state, ingest, status = pipeline()
        bad = f"redis://:wrong-pw-42@127.0.0.1:{srv.port}/15"
        with capture_logs() as logs, running(RedisEventStream(settings(bad), ingest, status,
                                                              backoff=fast_backoff()), status, False):
            wait_for(lambda: status.last_error, 10, what="an authentication error")
        assert "wrong-pw-42" not in status.last_error
        assert "wrong-pw-42" not in repr(logs)
        assert any(e.get("broker") == f"redis://:***@127.0.0.1:{srv.port}/15" for e in logs)
        good = f"redis://:s3cr3t-pw@127.0.0.1:{srv.port}/15"
        with running(RedisEventStream(settings(good), ingest, status), status):
            publish_captured(redis.Redis(port=srv.port, db=15, password="s3cr3t-pw"))
            wait_for(lambda: total(state) == EXPECTED_TOTAL, 10, what="96 events")
    finally:
        srv.stop()


@pytest.mark.integration
def test_sentinel_discovers_the_master() -> None:
    master = RedisServer().start()
    sentinel = RedisSentinel(master.port, "mymaster").start()
    try:
        state, ingest, status = pipeline()
        url = f"sentinel://127.0.0.1:{sentinel.port}/15"
        stream = RedisEventStream(settings(url, broker_transport_options={"master_name": "mymaster"}), ingest,
                                  status)
        with running(stream, status):
            publish_captured(master.client(15))
            wait_for(lambda: total(state) == EXPECTED_TOTAL, 10, what="96 events via the sentinel's master")
        assert by_type(state) == EXPECTED_TYPES
    finally:
        sentinel.stop()
        master.stop()


@pytest.mark.integration
def test_real_celery_worker_events(server: RedisServer) -> None:
    state, ingest, status = pipeline()
    broker = server.url(15)
    check_real_worker_events(RedisEventStream(settings(broker), ingest, status), state, status, broker, "redis-stream-test")
