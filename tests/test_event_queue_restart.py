"""``--event-queue-name``: a RabbitMQ event queue that outlives a restart, on a throw-away vhost with the
real daemon and a real publisher of captured Celery event messages.

* SIGTERM during a steady flood, a new process with the same name 5 s later: the old process's last count
  (its "celery-exporter stopped" line) plus the new one's equal the events published, exactly.
* A second process with the same name while the first runs is alive but not ready (``/readyz`` 503 with
  the reason, a log line), receives nothing, and takes over once the first stops.
* Our stable queue found with other arguments (an option changed) and nobody on it is replaced.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import pika
import pytest

from exporter.brokers.rabbitmq.stream import AmqpEventStream
from tests._broker_helpers import amqp_url, mgmt
from tests._stream_helpers import events_in, lines, pipeline, running, settings, total
from tests._support import Daemon, wait_for

pytestmark = pytest.mark.integration
PREFIX = "celeryev.celery-exporter"


def events_total(daemon: Daemon) -> int:
    return int(sum(v for k, v in daemon.metrics().items() if k.startswith("celery_exporter_events_total")))


def stopped_count(daemon: Daemon) -> int:
    (line,) = [x for x in daemon.log_lines() if x.get("event") == "celery-exporter stopped"]
    return int(line["events"])


class Publisher:
    """Publishes captured Celery event messages to ``celeryev``; counts the events it has sent."""

    def __init__(self, vhost: str) -> None:
        self.bodies = [(m["routing_key"], m["body"].encode()) for m in lines("amqp_messages.jsonl")]
        self.conn = pika.BlockingConnection(pika.URLParameters(amqp_url(vhost)))
        self.channel = self.conn.channel()
        self.channel.confirm_delivery()  # publisher confirms: "sent" means RabbitMQ has routed it
        self.props = pika.BasicProperties(content_type="application/json", content_encoding="utf-8",
                                          delivery_mode=1)
        self.events = 0
        self._i = 0

    def publish(self, messages: int) -> None:
        for _ in range(messages):
            key, body = self.bodies[self._i % len(self.bodies)]
            self._i += 1
            self.channel.basic_publish("celeryev", key, body, self.props)
            self.events += events_in(body)

    @contextlib.contextmanager
    def flooding(self, per_second: float = 1_000.0) -> Iterator[Publisher]:
        """A steady flood in a thread (``per_second`` messages, in bursts of 50) until the block ends."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                started = time.monotonic()
                self.publish(50)
                stop.wait(max(0.0, 50 / per_second - (time.monotonic() - started)))

        thread = threading.Thread(target=loop, name="flood", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join(10)
            assert not thread.is_alive()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


def exporter(exporter_process: Callable[..., Daemon], vhost: str, name: str, ready: bool = True) -> Daemon:
    daemon = exporter_process(["--broker-url", amqp_url(vhost), "--log-format", "json",
                               "--event-queue-name", name])
    if ready:
        wait_for(lambda: daemon.get("/readyz")[0] == 200, 20, what="the event stream", context=daemon.output)
    return daemon


def queue_row(vhost: str, name: str) -> dict[str, Any]:
    row: dict[str, Any] = mgmt("GET", f"/queues/{quote(vhost, safe='')}/{quote(name, safe='')}")
    return row


def test_sigterm_and_a_restart_5s_later_lose_nothing_and_count_nothing_twice(
        vhost: str, exporter_process: Callable[..., Daemon]) -> None:
    old = exporter(exporter_process, vhost, "replica-0")
    publisher = Publisher(vhost)
    try:
        with publisher.flooding():
            wait_for(lambda: events_total(old) > 3_000, 30, what="the old exporter to count the flood")
            assert old.proc is not None
            old.proc.send_signal(signal.SIGTERM)
            assert old.proc.wait(10) == 0, old.output()
            time.sleep(5)
            new = exporter(exporter_process, vhost, "replica-0")
            wait_for(lambda: events_total(new) > 3_000, 30, what="the new exporter to count the flood")
        published = publisher.events
    finally:
        publisher.close()
    before = stopped_count(old)
    assert 3_000 < before < published
    assert any(x.get("event") == "event queue left for the next start" for x in old.log_lines())
    # Everything published is in the new one's count once its queue is empty; then nothing more comes.
    wait_for(lambda: before + events_total(new) == published, 30, what="the new exporter to drain the queue",
             context=lambda: f"old {before} + new {events_total(new)} != published {published}")
    time.sleep(2)
    assert before + events_total(new) == published


def test_a_second_process_with_the_same_name_waits_not_ready_until_the_first_stops(
        vhost: str, exporter_process: Callable[..., Daemon]) -> None:
    first = exporter(exporter_process, vhost, "replica-1")
    second = exporter(exporter_process, vhost, "replica-1", ready=False)
    wait_for(lambda: any(x.get("event") == "event queue in use by another consumer; waiting for it to be free"
                         for x in second.log_lines()), 15, what="the second process to say it waits",
             context=second.output)
    status, body = second.get("/readyz")
    assert status == 503 and b"has another consumer" in body, body
    publisher = Publisher(vhost)
    try:
        publisher.publish(2_000)
        sent_while_first = publisher.events
        wait_for(lambda: events_total(first) == sent_while_first, 30, what="the first to count everything")
        time.sleep(1)
        assert events_total(second) == 0
        assert second.get("/readyz")[0] == 503
        assert first.terminate() == 0
        assert stopped_count(first) == sent_while_first
        wait_for(lambda: second.get("/readyz")[0] == 200, 15, what="the second to take over",
                 context=second.output)
        assert any(x.get("event") == "event queue is free; consuming it" for x in second.log_lines())
        publisher.publish(1_000)
        after = publisher.events - sent_while_first
        wait_for(lambda: events_total(second) == after, 30, what="the second to count what came after",
                 context=lambda: f"{events_total(second)} != {after}")
    finally:
        publisher.close()


def test_our_stable_queue_with_other_arguments_and_no_consumer_is_replaced(vhost: str) -> None:
    _state, ingest, status = pipeline()
    stream = AmqpEventStream(settings(amqp_url(vhost), event_queue_name="changed"), ingest, status)
    assert stream.queue == f"{PREFIX}.changed"
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url(vhost)))
    try:
        conn.channel().queue_declare(stream.queue, durable=True, arguments={"x-max-length": 1})
        with running(stream, status):
            assert stream.queue == f"{PREFIX}.changed"
            assert queue_row(vhost, stream.queue)["arguments"]["x-max-length"] == stream.arguments["x-max-length"]
            publisher = Publisher(vhost)
            try:
                publisher.publish(10)
            finally:
                publisher.close()
            wait_for(lambda: total(_state) == publisher.events, 10, what="events through the replaced queue")
    finally:
        conn.close()
    # Left, not deleted, on a clean stop (the management API's consumer count lags a little).
    wait_for(lambda: queue_row(vhost, stream.queue).get("consumers") == 0, 15, what="the queue to be left")
