"""The RabbitMQ event stream against the real RabbitMQ (a private vhost per module): captured worker
messages, the exporter queue's settings, malformed messages, a connection closed by the broker with
events published during the blip, and a real Celery worker."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pika
import pytest
import requests

from exporter.brokers.backoff import Backoff
from exporter.brokers.rabbitmq.connection import connection_parameters
from exporter.brokers.rabbitmq.stream import AmqpEventStream, queue_arguments
from tests._broker_helpers import amqp_url, rabbit_vhost
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

API = os.environ.get("RABBITMQ_API", "http://127.0.0.1:15672/api")
AUTH = ("guest", "guest")


# ---------------------------------------------------------------- pure
def test_queue_arguments_in_whole_milliseconds_and_no_ttl_when_zero() -> None:
    bound = {"x-max-length": 100, "x-max-length-bytes": 4096, "x-overflow": "drop-head"}
    assert queue_arguments(60.0, 300.0, 100, 4096) == {"x-queue-type": "classic", "x-expires": 300_000,
                                                       "x-message-ttl": 60_000, **bound}
    assert queue_arguments(0.0, 1.5, 100, 4096) == {"x-queue-type": "classic", "x-expires": 1_500, **bound}
    assert queue_arguments(0.0001, 0.0001, 100, 4096) == {"x-queue-type": "classic", "x-expires": 1,
                                                          "x-message-ttl": 1, **bound}


def parameters(url: str, name: str) -> list[Any]:
    return connection_parameters(url, client_name=name, heartbeat=30, socket_timeout=5.0, stack_timeout=15.0,
                                 blocked_timeout=None)


@pytest.mark.parametrize(
    ("url", "host", "port", "vhost", "user", "tls"),
    [
        ("amqp://guest:guest@rabbit:5672//", "rabbit", 5672, "/", "guest", False),
        ("amqp://u:p@rabbit/", "rabbit", 5672, "/", "u", False),
        ("pyamqp://u:p@rabbit:5673/%2F", "rabbit", 5673, "/", "u", False),
        ("amqp://rabbit/prod", "rabbit", 5672, "prod", "guest", False),
        ("amqps://u:p@rabbit/prod", "rabbit", 5671, "prod", "u", True),
    ],
)
def test_connection_parameters_read_urls_like_kombu(
    url: str, host: str, port: int, vhost: str, user: str, tls: bool
) -> None:
    (params,) = parameters(url, "name")
    assert (params.host, params.port, params.virtual_host) == (host, port, vhost)
    assert params.credentials.username == user
    assert (params.ssl_options is not None) == tls
    assert params.client_properties["connection_name"] == "name"


def test_failover_list_gives_one_parameter_set_per_broker() -> None:
    params = parameters("amqp://a:1@h1//;amqp://b:2@h2:5680/v", "n")
    assert [(p.host, p.port, p.virtual_host) for p in params] == [("h1", 5672, "/"), ("h2", 5680, "v")]


# ---------------------------------------------------------------- management API helpers
def api(method: str, path: str, **kw: Any) -> requests.Response:
    r = requests.request(method, f"{API}{path}", auth=AUTH, timeout=10, **kw)
    r.raise_for_status()
    return r


@pytest.fixture(scope="module")
def vhost() -> Iterator[str]:
    # Module-scoped (the conftest one is per test): the tests here share one vhost.
    with rabbit_vhost(f"stream-tests-{os.getpid()}") as name:
        yield name


def publish(vhost: str, messages: list[dict[str, Any]]) -> int:
    """Publish captured (or hand-made) messages to the celeryev exchange; returns their event count."""
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url(vhost)))
    try:
        ch = conn.channel()
        n = 0
        for m in messages:
            body = m["body"].encode() if isinstance(m["body"], str) else m["body"]
            ch.basic_publish("celeryev", m["routing_key"], body, pika.BasicProperties(
                content_type=m.get("content_type"), content_encoding=m.get("content_encoding"),
                delivery_mode=1))
            if m.get("content_type") == "application/json" and m.get("content_encoding") == "utf-8":
                with contextlib.suppress(ValueError):
                    n += events_in(body)
    finally:
        conn.close()
    return n


def close_connection(client_name: str) -> None:
    def ours() -> list[str]:
        conns = api("GET", "/connections", params={"columns": "name,client_properties"}).json()
        return [c["name"] for c in conns
                if (c.get("client_properties") or {}).get("connection_name") == client_name]

    wait_for(ours, 20, what="the management API to list the stream's connection")
    for name in ours():
        requests.delete(f"{API}/connections/{quote(name, safe='')}", auth=AUTH, timeout=10,
                        headers={"X-Reason": "stream test: simulated broker blip"})


# ---------------------------------------------------------------- integration
@pytest.mark.integration
def test_captured_messages_give_exact_counts_and_the_queue_is_built_to_last(vhost: str) -> None:
    state, ingest, status = pipeline()
    stream = AmqpEventStream(settings(amqp_url(vhost), event_queue_prefix="ce-test", event_queue_ttl=60,
                                      event_queue_expires=300, event_prefetch=50), ingest, status)
    with running(stream, status):
        assert publish(vhost, lines("amqp_messages.jsonl")) == EXPECTED_TOTAL
        wait_for(lambda: total(state) == EXPECTED_TOTAL, 15, what="96 events")
        q = api("GET", f"/queues/{quote(vhost, safe='')}/{quote(stream.queue, safe='')}").json()
        bindings = api("GET", f"/queues/{quote(vhost, safe='')}/{quote(stream.queue, safe='')}/bindings").json()
        exchange = api("GET", f"/exchanges/{quote(vhost, safe='')}/celeryev").json()
    assert by_type(state) == EXPECTED_TYPES
    assert invalid(state) == {}
    assert stream.queue.startswith("ce-test.")
    assert q["durable"] is True and q["auto_delete"] is False and q["exclusive"] is False
    assert q["arguments"] == {"x-expires": 300_000, "x-message-ttl": 60_000, "x-queue-type": "classic",
                              "x-max-length": 100_000, "x-max-length-bytes": 64 * 1024 * 1024,
                              "x-overflow": "drop-head"}
    assert any(b["source"] == "celeryev" and b["routing_key"] == "#" for b in bindings)
    assert (exchange["type"], exchange["durable"], exchange["auto_delete"]) == ("topic", True, False)


@pytest.mark.integration
def test_malformed_messages_are_counted_and_acked(vhost: str) -> None:
    good = lines("amqp_messages.jsonl")[0]  # worker-online
    bad = [
        {"routing_key": "task.sent", "body": b"\x80\x04K\x01.", "content_type": "application/x-python-serialize",
         "content_encoding": "binary"},
        {"routing_key": "task.sent", "body": b"{nope", "content_type": "application/json",
         "content_encoding": "utf-8"},
        {"routing_key": "task.sent", "body": b'{"type": "x"}', "content_type": "application/json",
         "content_encoding": "latin-1"},
        {"routing_key": "task.sent", "body": b"[1]", "content_type": "application/json",
         "content_encoding": "utf-8"},
    ]
    state, ingest, status = pipeline()
    stream = AmqpEventStream(settings(amqp_url(vhost), event_queue_prefix="ce-test"), ingest, status)
    with running(stream, status):
        publish(vhost, [*bad, good])
        wait_for(lambda: total(state) == 1 and sum(invalid(state).values()) == 4, 15, what="all five")
        wait_for(lambda: api("GET", f"/queues/{quote(vhost, safe='')}/{quote(stream.queue, safe='')}")
                 .json().get("messages_unacknowledged") == 0, 30, what="every message acked")
    assert invalid(state) == {"unsupported_content_type": 1, "bad_json": 1, "unsupported_encoding": 1,
                              "not_an_event": 1}
    assert by_type(state) == {"worker-online": 1}


@pytest.mark.integration
def test_events_published_while_the_connection_is_down_are_not_lost(vhost: str) -> None:
    msgs = lines("amqp_messages.jsonl")
    first, second = msgs[:41], msgs[41:]
    state, ingest, status = pipeline()
    # A fixed 2 s pause before reconnecting leaves a window to publish into while we are away.
    stream = AmqpEventStream(settings(amqp_url(vhost), event_queue_prefix="ce-test"), ingest, status,
                             backoff=Backoff(initial=2.0, cap=2.0, jitter=0.0))
    with running(stream, status):
        n_first = publish(vhost, first)
        wait_for(lambda: total(state) == n_first, 15, what="the first half")
        close_connection(stream.client_name)
        wait_for(lambda: not status.connected, 10, what="the stream to see the closed connection")
        assert "CONNECTION_FORCED" in status.last_error or "closed" in status.last_error.lower()
        publish(vhost, second)
        assert not status.connected, "the second half must be published while the stream is away"
        wait_for(lambda: status.connected, 15, what="the reconnect")
        assert status.reconnects == 1
        wait_for(lambda: total(state) == EXPECTED_TOTAL, 15, what="the events published during the blip")
    assert by_type(state) == EXPECTED_TYPES


@pytest.mark.integration
def test_real_celery_worker_events(vhost: str) -> None:
    state, ingest, status = pipeline()
    broker = amqp_url(vhost)
    check_real_worker_events(AmqpEventStream(settings(broker, event_queue_prefix="ce-test"), ingest, status), state, status, broker, "amqp-stream-test")


@pytest.mark.integration
def test_wrong_password_is_reported_redacted_and_retried() -> None:
    state, ingest, status = pipeline()
    stream = AmqpEventStream(settings("amqp://guest:not-the-pw-77@127.0.0.1:5672//"), ingest, status,
                             backoff=Backoff(initial=0.05, cap=0.1, jitter=0.0))
    with running(stream, status, connect=False):
        wait_for(lambda: status.last_error, 15, what="the authentication failure")
    assert "not-the-pw-77" not in status.last_error
    assert status.connected is False and status.connects == 0
    assert json.dumps(state.invalid_by_reason) == "{}"
