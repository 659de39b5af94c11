"""The exporter never loads the production broker: its RabbitMQ event queue is deleted on a clean stop
(SIGTERM, SIGINT to the real daemon: gone from the management API within seconds), and the queue a
SIGKILLed exporter leaves behind during a flood of events stays under ``--event-queue-max-length`` and
``--event-queue-max-bytes`` (the shipped defaults) until it expires. A queue name already taken with other
arguments (``PRECONDITION_FAILED`` on declare) makes the stream take a fresh name, not fail forever.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pika
import pytest

from exporter.brokers.rabbitmq.stream import AmqpEventStream
from exporter.options import OPTIONS
from tests._broker_helpers import amqp_url, mgmt
from tests._stream_helpers import lines, pipeline, running, settings
from tests._support import Daemon, wait_for

pytestmark = pytest.mark.integration
DEFAULTS = {o.name: o.default for o in OPTIONS}
MAX_LENGTH, MAX_BYTES = DEFAULTS["event_queue_max_length"], DEFAULTS["event_queue_max_bytes"]


def our_queues(vhost: str) -> list[dict[str, Any]]:
    rows = mgmt("GET", f"/queues/{quote(vhost, safe='')}")
    return [q for q in rows if q["name"].startswith("celeryev.celery-exporter.")]


def start(exporter_process: Callable[..., Daemon], vhost: str) -> tuple[Daemon, str]:
    daemon = exporter_process(["--broker-url", amqp_url(vhost), "--log-format", "json"])
    wait_for(lambda: daemon.get("/readyz")[0] == 200, 20, what="the event stream", context=daemon.output)
    (queue,) = our_queues(vhost)
    return daemon, queue["name"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_clean_stop_deletes_the_event_queue(sig: signal.Signals, vhost: str,
                                            exporter_process: Callable[..., Daemon]) -> None:
    daemon, queue = start(exporter_process, vhost)
    assert daemon.proc is not None
    daemon.proc.send_signal(sig)
    assert daemon.proc.wait(10) == 0, daemon.output()
    wait_for(lambda: our_queues(vhost) == [], 5, what=f"{queue} to be deleted")
    assert any(line.get("event") == "event queue deleted" for line in daemon.log_lines())


def flood(vhost: str, messages: int, on_progress: Callable[[int], None]) -> int:
    """Publish ``messages`` captured Celery event messages to ``celeryev``; returns the bytes sent."""
    bodies = [(m["routing_key"], m["body"].encode()) for m in lines("amqp_messages.jsonl")]
    props = pika.BasicProperties(content_type="application/json", content_encoding="utf-8", delivery_mode=1)
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url(vhost)))
    sent = 0
    try:
        ch = conn.channel()
        for i in range(messages):
            key, body = bodies[i % len(bodies)]
            ch.basic_publish("celeryev", key, body, props)
            sent += len(body)
            if i % 1000 == 0:
                on_progress(i)
    finally:
        conn.close()
    return sent


def test_sigkill_during_a_flood_leaves_a_bounded_orphan(vhost: str,
                                                        exporter_process: Callable[..., Daemon]) -> None:
    daemon, queue = start(exporter_process, vhost)
    assert daemon.proc is not None
    proc = daemon.proc

    def kill_midway(i: int) -> None:
        if i >= 20_000 and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)

    n = 160_000  # ~200,000 events (1.28 per message), ~86 MB: past both bounds
    sent = flood(vhost, n, kill_midway)
    assert proc.returncode == -signal.SIGKILL
    assert sent > MAX_BYTES
    path = f"/queues/{quote(vhost, safe='')}/{quote(queue, safe='')}"
    # The management API's figures lag by its stats interval: wait until they settle.
    settled: list[tuple[int, int]] = []

    def stable() -> bool:
        q = mgmt("GET", path)
        settled.append((int(q.get("messages") or 0), int(q.get("message_bytes") or 0)))
        return len(settled) >= 3 and settled[-1] == settled[-2] == settled[-3] and settled[-1][0] > 0

    wait_for(stable, 60, every=2.0, what="the orphan queue's stats to settle")
    depth, size = settled[-1]
    assert q_args(path)["x-overflow"] == "drop-head"
    assert depth <= MAX_LENGTH and size <= MAX_BYTES, (depth, size)
    # ~86 MB of ~540-byte bodies: the message bound is reached (100,000 hold ~54 MB), not the flood.
    assert depth == MAX_LENGTH or size > MAX_BYTES * 0.9, (depth, size)


def q_args(path: str) -> dict[str, Any]:
    return dict(mgmt("GET", path)["arguments"])


def test_a_name_taken_with_other_arguments_gets_a_fresh_one(vhost: str) -> None:
    _state, ingest, status = pipeline()
    stream = AmqpEventStream(settings(amqp_url(vhost)), ingest, status)
    taken = stream.queue
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url(vhost)))
    try:
        conn.channel().queue_declare(taken, durable=True, arguments={"x-max-length": 1})
        with running(stream, status):
            assert stream.queue != taken
            names = {q["name"] for q in our_queues(vhost)}
            assert {taken, stream.queue} <= names
        assert taken in {q["name"] for q in our_queues(vhost)}  # someone else's queue is left alone
    finally:
        conn.close()
